"""Rendering explanations: overlays, videos, tube stacks, the pyramid overview, importance curves and the
self-contained HTML report. ``render_explanation`` is the one entry point the Explainer calls; it takes
plain numpy tubes (anything with the ``SaliencyTube`` fields: label, level, volume, tensors, node)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.pyramid.tubes import frame_importance
from onnxcfp.render.colormap import COLORMAPS, apply_colormap, colormap_lut
from onnxcfp.render.importance import importance_chart, importance_csv_text
from onnxcfp.render.overlay import blend, overlay_tube, tube_to_clip
from onnxcfp.render.pyramid_figure import pyramid_figure
from onnxcfp.render.report import report_html, trim_pyramid
from onnxcfp.render.tube_stack import tube_stack
from onnxcfp.render.writers import (
    AtomicBatch,
    GifPalette,
    PendingMp4s,
    data_uri,
    encode_gif,
    encode_png,
    json_text,
)

__all__ = [
    "COLORMAPS",
    "FORMATS",
    "LayerTube",
    "Prediction",
    "RenderOptions",
    "RenderedExplanation",
    "TopClass",
    "apply_colormap",
    "blend",
    "colormap_lut",
    "display_size",
    "kernel_file_stems",
    "level_file_stems",
    "overlay_tube",
    "pyramid_figure",
    "render_explanation",
    "tube_stack",
    "tube_to_clip",
]

FORMATS = frozenset({"mp4", "gif", "png", "stack", "pyramid", "importance", "json", "report"})
DEFAULT_FORMATS = FORMATS - {"png"}


class TubeLike(Protocol):
    """What the renderer needs of a tube; ``onnxcfp.pyramid.SaliencyTube`` has these fields."""

    label: str
    level: int
    volume: np.ndarray
    tensors: tuple[str, ...]
    node: tuple[str, int] | None


@dataclass(frozen=True, eq=False)
class LayerTube:
    """A plain tube: ``volume`` ``[T', H', W']`` at feature resolution; ``node`` (layer, channel) for a
    kernel tube, None for a level's tube."""

    label: str
    level: int
    volume: np.ndarray
    tensors: tuple[str, ...] = ()
    node: tuple[str, int] | None = None


@dataclass(frozen=True)
class TopClass:
    index: int
    name: str | None
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The explained class (``score`` of kind ``score_kind``) and the clip's top-5 by probability."""

    index: int
    name: str | None
    score: float
    score_kind: str
    top5: tuple[TopClass, ...]

    @classmethod
    def from_logits(
        cls,
        logits: np.ndarray,
        target: int | None = None,
        class_names: Sequence[str] | None = None,
        score_kind: str = "logit",
    ) -> Prediction:
        """From one clip's ``[K]`` logits; ``target`` None explains the top-1 class."""
        z = np.asarray(logits, np.float64).reshape(-1)
        p = np.exp(z - z.max())
        p /= p.sum()
        target = int(z.argmax()) if target is None else int(target)

        def name(i: int) -> str | None:
            return str(class_names[i]) if class_names is not None and i < len(class_names) else None

        score = float(p[target]) if score_kind == "probability" else float(z[target])
        top = np.argsort(-p, kind="stable")[:5]
        return cls(
            target,
            name(target),
            score,
            score_kind,
            tuple(TopClass(int(i), name(int(i)), float(p[i])) for i in top),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "score": self.score,
            "score_kind": self.score_kind,
            "top5": [{"index": t.index, "name": t.name, "probability": t.probability} for t in self.top5],
        }


@dataclass(frozen=True)
class RenderOptions:
    """``formats`` ⊆ FORMATS; ``kernel_videos`` also writes an MP4/GIF per kernel tube given;
    ``report_max_side`` bounds the report's inline GIFs of the clip and the level tubes (pixels),
    ``kernel_max_side`` the report's small GIFs of the kernel tubes (an explanation may have a hundred
    kernels: drawing them small keeps the report light and its rendering fast); ``max_nodes`` bounds
    kernels drawn per level in the overview and the report graph. ``report_display_side``: the report
    shows every clip and tube image with its longer side at least this many CSS pixels, scaling small
    ones up by a whole factor with pixelated rendering (``display_size``): readable, and no bytes more."""

    formats: frozenset[str] = DEFAULT_FORMATS
    colormap: str = "viridis"
    alpha: float = 0.5
    fps: float = 8.0
    kernel_videos: bool = False
    report_max_side: int = 160
    kernel_max_side: int = 80
    max_nodes: int = 48
    report_display_side: int = 240

    def __post_init__(self) -> None:
        unknown = set(self.formats) - FORMATS
        if unknown:
            raise ConfigError(
                f"unknown output formats {sorted(unknown)}: choose from {', '.join(sorted(FORMATS))}"
            )
        if self.colormap not in COLORMAPS:
            raise ConfigError(f"colour map {self.colormap!r} is unknown: use one of {', '.join(COLORMAPS)}")
        sides = min(self.report_max_side, self.kernel_max_side, self.report_display_side)
        if self.fps <= 0 or not 0 <= self.alpha <= 1 or self.max_nodes < 1 or sides < 8:
            raise ConfigError(
                "fps must be > 0, alpha in [0, 1], max_nodes >= 1, and report_max_side, kernel_max_side "
                "and report_display_side >= 8"
            )


@dataclass(frozen=True, eq=False)
class RenderedExplanation:
    """What was written (``files``, all under ``out_dir``) and each level tube's per-frame importance."""

    out_dir: Path
    files: tuple[Path, ...]
    importance: dict[str, np.ndarray] = field(default_factory=dict)


def slug(text: str) -> str:
    """A file-name-safe version of a label or node id."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return s[:80] or "tube"


def node_id(node: tuple[str, int]) -> str:
    """The pyramid.json id of a (layer, channel) node."""
    return f"{node[0]}:{node[1]}"


def level_file_stems(levels: Sequence[int]) -> list[str]:
    """Short stable file stems of level tubes: ``level{L}``; a level met again gets ``_2``, ``_3``..."""
    seen: dict[int, int] = {}
    stems = []
    for level in levels:
        seen[level] = seen.get(level, 0) + 1
        stems.append(f"level{level}" + (f"_{seen[level]}" if seen[level] > 1 else ""))
    return stems


def kernel_file_stems(nodes: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """``<layer-slug>_c<channel>`` per (layer, channel) node. Layers whose names slug alike (say "a/b"
    and "a:b", or two long names cut at the same 80 characters) get a short hash of the real name
    appended, so different nodes never share a file, whatever order they come in."""
    layers = sorted({str(layer) for layer, _ in nodes})
    by_slug: dict[str, list[str]] = {}
    for layer in layers:
        by_slug.setdefault(slug(layer), []).append(layer)
    layer_stem = {}
    for stem, names in by_slug.items():
        for layer in names:
            digest = hashlib.sha1(layer.encode("utf-8")).hexdigest()[:8]
            layer_stem[layer] = stem if len(names) == 1 else f"{stem}-{digest}"
    return {(layer, ch): f"{layer_stem[str(layer)]}_c{slug(str(ch))}" for layer, ch in nodes}


def display_size(height: int, width: int, min_side: int) -> tuple[int, int]:
    """(height, width) in CSS pixels at which the report shows an image of ``height`` x ``width``: scaled
    up by the smallest whole factor that makes its longer side at least ``min_side`` (whole factors keep
    pixelated upscaling even: every source pixel becomes the same k x k block); as it is when already
    that large."""
    factor = max(1, -(-min_side // max(height, width)))
    return height * factor, width * factor


def _fit(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Frames scaled down (bilinear) so that the longer side is at most ``max_side``; as they are when
    they already fit."""
    from PIL import Image

    h, w = frames.shape[1:3]
    s = max_side / max(h, w)
    if s >= 1:
        return frames
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


MP4S_PER_PROCESS = 16  # bounds the frames one ffmpeg process buffers while splitting its input


def _start_videos(
    batch: AtomicBatch, videos: Sequence[tuple[Path, np.ndarray]], fps: float
) -> list[PendingMp4s]:
    """Encode ``videos`` (final path, frames) in the background, at most ``MP4S_PER_PROCESS`` per
    ffmpeg process, into temporary names that ``batch`` renames when it commits."""
    return [
        PendingMp4s([(batch.temp_path(path), f) for path, f in videos[i : i + MP4S_PER_PROCESS]], fps)
        for i in range(0, len(videos), MP4S_PER_PROCESS)
    ]


def render_explanation(
    out_dir: str | Path,
    frames: np.ndarray,
    tubes: Sequence[TubeLike],
    pyramid_json: Mapping[str, Any] | None,
    prediction: Prediction,
    *,
    options: RenderOptions | None = None,
    clip_source: str = "",
    model_source: str = "",
    source_frames: Sequence[int] | None = None,
) -> RenderedExplanation:
    """Write one clip's explanation under ``out_dir``.

    ``frames``: uint8 RGB ``[T, H, W, 3]`` the model saw (``Clip.overlay_frames``). ``tubes``: level tubes
    (``node`` None) and kernel tubes (``node`` set), volumes at feature resolution. Files, depending on
    ``options.formats``: ``level{L}.mp4|.gif``, ``frames/level{L}/frame_0000.png``...,
    ``stack_level{L}.png``, ``kernels/<layer>_c<channel>.mp4|.gif`` (with ``kernel_videos``),
    ``pyramid.png``, ``importance.png|.csv``, ``pyramid.json``, ``report.html``. The descriptive tube
    labels appear in the report, the importance chart and CSV, not in file names.

    All files are committed together (``AtomicBatch``): nothing appears under a final name unless
    everything was written. Speed: the level overlays are computed once and reused by every output;
    all GIFs share one palette; all MP4s come from one ffmpeg process that encodes in the background
    while the rest is drawn; a report GIF reuses the file GIF's bytes when the sizes match; kernel tubes
    are drawn straight at the report's size (``kernel_max_side``), never at full size unless their
    videos are asked for.
    """
    opts = options or RenderOptions()
    out = Path(out_dir)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ConfigError(f"frames must be uint8 RGB [T, H, W, 3]; got {frames.dtype} {frames.shape}")
    fmt = opts.formats
    level_tubes = [t for t in tubes if t.node is None]
    kernel_tubes = [t for t in tubes if t.node is not None]
    level_stems = level_file_stems([int(t.level) for t in level_tubes])
    kernel_stems = kernel_file_stems([t.node for t in kernel_tubes if t.node is not None])
    trimmed = trim_pyramid(pyramid_json, opts.max_nodes) if pyramid_json else {"levels": []}
    shown_ids = {n["id"] for lv in trimmed["levels"] for n in lv["nodes"]}
    report_kernels = [
        t for t in kernel_tubes if "report" in fmt and t.node is not None and node_id(t.node) in shown_ids
    ]

    # Every level output (videos, GIFs, frames, stack, report) starts from the same overlaid frames.
    overlays = [overlay_tube(frames, t.volume, opts.alpha, opts.colormap) for t in level_tubes]
    importance = {t.label: frame_importance(heat) for t, (_, heat) in zip(level_tubes, overlays, strict=True)}
    kernel_overlays: dict[tuple[str, int], np.ndarray] = {}
    if opts.kernel_videos and ("mp4" in fmt or "gif" in fmt):
        for t in kernel_tubes:
            assert t.node is not None
            kernel_overlays[t.node] = overlay_tube(frames, t.volume, opts.alpha, opts.colormap)[0]

    batch = AtomicBatch()
    encoders: list[PendingMp4s] = []
    written: list[Path] = []
    try:
        if "mp4" in fmt:  # first, so that ffmpeg encodes while everything else is drawn
            videos = [(out / f"{stem}.mp4", o) for stem, (o, _) in zip(level_stems, overlays, strict=True)]
            videos += [(out / "kernels" / f"{kernel_stems[n]}.mp4", o) for n, o in kernel_overlays.items()]
            encoders = _start_videos(batch, videos, opts.fps)
            written += [path for path, _ in videos]
        # One palette for the clip and its overlays: colours agree across GIFs and the lookup table is
        # filled once. The level overlays sample the colours every tube blends (frame + colour map).
        palette = None
        if "gif" in fmt or "report" in fmt:
            palette = GifPalette.from_images([frames, *(o for o, _ in overlays)])
        file_gifs: dict[str, bytes] = {}
        if "gif" in fmt:
            for stem, (overlaid, _) in zip(level_stems, overlays, strict=True):
                file_gifs[stem] = encode_gif(overlaid, opts.fps, palette)
                written.append(batch.write_bytes(out / f"{stem}.gif", file_gifs[stem]))
            for node, overlaid in kernel_overlays.items():
                file_gifs[node_id(node)] = encode_gif(overlaid, opts.fps, palette)
                path = out / "kernels" / f"{kernel_stems[node]}.gif"
                written.append(batch.write_bytes(path, file_gifs[node_id(node)]))
        if "png" in fmt:
            for stem, (overlaid, _) in zip(level_stems, overlays, strict=True):
                for i, frame in enumerate(overlaid):
                    path = out / "frames" / stem / f"frame_{i:04d}.png"
                    written.append(batch.write_bytes(path, encode_png(frame)))
        stacks: dict[str, bytes] = {}
        if "stack" in fmt:
            for tube, stem, (overlaid, _) in zip(level_tubes, level_stems, overlays, strict=True):
                current = int(np.argmax(importance[tube.label]))
                stacks[stem] = encode_png(tube_stack(overlaid, current))
                written.append(batch.write_bytes(out / f"stack_{stem}.png", stacks[stem]))
        if "pyramid" in fmt and pyramid_json:
            kernel_volumes = {
                node_id(t.node): np.asarray(t.volume) for t in kernel_tubes if t.node is not None
            }
            figure, _ = pyramid_figure(pyramid_json, kernel_volumes, opts.colormap, opts.max_nodes)
            written.append(batch.write_bytes(out / "pyramid.png", encode_png(figure)))
        importance_png = None
        if "importance" in fmt and importance:
            importance_png = encode_png(importance_chart(importance))
            written.append(batch.write_bytes(out / "importance.png", importance_png))
            csv = importance_csv_text(importance, source_frames)
            written.append(batch.write_text(out / "importance.csv", csv))
        if "json" in fmt and pyramid_json:
            written.append(batch.write_text(out / "pyramid.json", json_text(dict(pyramid_json))))
        if "report" in fmt:
            assert palette is not None
            page = _report_page(
                frames, level_tubes, level_stems, overlays, report_kernels, file_gifs, stacks, palette,
                importance_png, trimmed, prediction, opts, clip_source, model_source, source_frames,
            )  # fmt: skip
            written.append(batch.write_text(out / "report.html", page))
        for encoder in encoders:
            encoder.wait()
        batch.commit()
    except BaseException:
        for encoder in encoders:
            encoder.cancel()
        batch.abort()
        raise
    return RenderedExplanation(out, tuple(written), importance)


def _report_page(
    frames: np.ndarray,
    level_tubes: Sequence[TubeLike],
    level_stems: Sequence[str],
    overlays: Sequence[tuple[np.ndarray, np.ndarray]],
    report_kernels: Sequence[TubeLike],
    file_gifs: Mapping[str, bytes],
    stacks: Mapping[str, bytes],
    palette: GifPalette,
    importance_png: bytes | None,
    trimmed: Mapping[str, Any],
    prediction: Prediction,
    opts: RenderOptions,
    clip_source: str,
    model_source: str,
    source_frames: Sequence[int] | None,
) -> str:
    """report.html's text: the clip, each level's tube (GIF at ``report_max_side``, reusing the file GIF
    when it already fits) and each shown kernel's tube (a small GIF at ``kernel_max_side``)."""
    layer_entries: list[dict[str, Any]] = []
    level_index: dict[str, int] = {}
    for tube, stem, (overlaid, _) in zip(level_tubes, level_stems, overlays, strict=True):
        small = _fit(overlaid, opts.report_max_side)
        gif = file_gifs.get(stem) if small is overlaid else None
        shown = display_size(*small.shape[1:3], opts.report_display_side)
        level_index.setdefault(str(tube.level), len(layer_entries))
        layer_entries.append(
            {
                "label": tube.label,
                "level": int(tube.level),
                "tensors": [str(t) for t in tube.tensors],
                "shape": [int(s) for s in np.shape(tube.volume)],
                "gif": data_uri(gif or encode_gif(small, opts.fps, palette), "image/gif"),
                "display": list(shown),
                "stack": data_uri(stacks[stem], "image/png") if stem in stacks else None,
            }
        )
    # Kernel tubes go straight from feature resolution to the small size (no full-size overlay).
    kernel_frames = _fit(frames, min(opts.kernel_max_side, opts.report_max_side))
    kernel_gifs: dict[str, str] = {}
    for tube in report_kernels:
        assert tube.node is not None
        nid = node_id(tube.node)
        gif = file_gifs.get(nid) if kernel_frames is frames else None
        if gif is None:
            overlaid, _ = overlay_tube(kernel_frames, tube.volume, opts.alpha, opts.colormap)
            gif = encode_gif(overlaid, opts.fps, palette)
        kernel_gifs[nid] = data_uri(gif, "image/gif")
    title = f"onnxcfp explanation: {prediction.name or f'class {prediction.index}'}"
    indices = source_frames if source_frames is not None else range(frames.shape[0])
    clip_frames = _fit(frames, opts.report_max_side)
    data = {
        "title": title,
        "model": model_source,
        "clip": {
            "source": clip_source,
            "frames": int(frames.shape[0]),
            "size": list(frames.shape[1:3]),
            "indices": [int(i) for i in indices],
            "gif": data_uri(encode_gif(clip_frames, opts.fps, palette), "image/gif"),
            "display": list(display_size(*clip_frames.shape[1:3], opts.report_display_side)),
        },
        "prediction": prediction.to_json(),
        "layers": layer_entries,
        "level_tube": level_index,
        "importance": data_uri(importance_png, "image/png") if importance_png else None,
        "pyramid": trimmed,
        "kernels": kernel_gifs,
        "kernel_display": list(display_size(*kernel_frames.shape[1:3], opts.report_display_side)),
    }
    return report_html(title, data)
