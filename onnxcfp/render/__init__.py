"""Rendering explanations: overlays, videos, tube stacks, the pyramid overview, importance curves and the
self-contained HTML report. ``render_explanation`` is the one entry point the Explainer calls; it takes
plain numpy tubes (anything with the ``SaliencyTube`` fields: label, level, volume, tensors, node)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.pyramid.tubes import frame_importance
from onnxcfp.render.colormap import COLORMAPS, apply_colormap, colormap_lut
from onnxcfp.render.importance import importance_chart, write_importance_csv
from onnxcfp.render.overlay import blend, overlay_tube, tube_to_clip
from onnxcfp.render.pyramid_figure import pyramid_figure
from onnxcfp.render.report import report_html, trim_pyramid
from onnxcfp.render.tube_stack import tube_stack
from onnxcfp.render.writers import (
    data_uri,
    encode_gif,
    encode_png,
    write_bytes,
    write_json,
    write_mp4,
    write_png,
    write_png_frames,
    write_text,
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
    ``report_max_side`` bounds the report's inline GIFs (pixels); ``max_nodes`` bounds kernels drawn per
    level in the overview and the report graph."""

    formats: frozenset[str] = DEFAULT_FORMATS
    colormap: str = "viridis"
    alpha: float = 0.5
    fps: float = 8.0
    kernel_videos: bool = False
    report_max_side: int = 160
    max_nodes: int = 48

    def __post_init__(self) -> None:
        unknown = set(self.formats) - FORMATS
        if unknown:
            raise ConfigError(
                f"unknown output formats {sorted(unknown)}: choose from {', '.join(sorted(FORMATS))}"
            )
        if self.colormap not in COLORMAPS:
            raise ConfigError(f"colour map {self.colormap!r} is unknown: use one of {', '.join(COLORMAPS)}")
        if self.fps <= 0 or not 0 <= self.alpha <= 1 or self.max_nodes < 1 or self.report_max_side < 8:
            raise ConfigError("fps must be > 0, alpha in [0, 1], max_nodes >= 1, report_max_side >= 8")


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


def _fit(frames: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    s = max_side / max(h, w)
    if s >= 1:
        return frames
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


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
    (``node`` None) and kernel tubes (``node`` set), volumes at feature resolution. Files: ``level{L}_*.mp4|
    .gif``, ``frames/level{L}_*/frame_*.png``, ``stack_level{L}_*.png``, ``kernels/*``, ``pyramid.png``,
    ``importance.png|.csv``, ``pyramid.json``, ``report.html`` depending on ``options.formats``.
    """
    opts = options or RenderOptions()
    out = Path(out_dir)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ConfigError(f"frames must be uint8 RGB [T, H, W, 3]; got {frames.dtype} {frames.shape}")
    fmt = opts.formats
    written: list[Path] = []
    level_tubes = [t for t in tubes if t.node is None]
    kernel_tubes = [t for t in tubes if t.node is not None]
    importance: dict[str, np.ndarray] = {}
    layer_entries: list[dict[str, Any]] = []
    level_index: dict[str, int] = {}
    for tube in level_tubes:
        overlaid, heat = overlay_tube(frames, tube.volume, opts.alpha, opts.colormap)
        name = f"level{tube.level}_{slug(tube.label)}"
        importance[tube.label] = frame_importance(heat)  # each frame's share of the displayed tube
        gif_bytes = encode_gif(overlaid, opts.fps) if "gif" in fmt else None
        if "mp4" in fmt:
            written.append(write_mp4(out / f"{name}.mp4", overlaid, opts.fps))
        if gif_bytes is not None:
            written.append(write_bytes(out / f"{name}.gif", gif_bytes))
        if "png" in fmt:
            written += write_png_frames(out / "frames" / name, overlaid)
        stack_png = None
        if "stack" in fmt:
            stack_png = encode_png(tube_stack(overlaid, int(np.argmax(importance[tube.label]))))
            written.append(write_bytes(out / f"stack_{name}.png", stack_png))
        if "report" in fmt:
            small = _fit(overlaid, opts.report_max_side)
            report_gif = gif_bytes if small is overlaid and gif_bytes else encode_gif(small, opts.fps)
            level_index.setdefault(str(tube.level), len(layer_entries))
            layer_entries.append(
                {
                    "label": tube.label,
                    "level": int(tube.level),
                    "tensors": [str(t) for t in tube.tensors],
                    "shape": [int(s) for s in np.shape(tube.volume)],
                    "gif": data_uri(report_gif, "image/gif"),
                    "stack": data_uri(stack_png, "image/png") if stack_png else None,
                }
            )
    kernel_volumes = {node_id(t.node): np.asarray(t.volume) for t in kernel_tubes if t.node is not None}
    trimmed = trim_pyramid(pyramid_json, opts.max_nodes) if pyramid_json else {"levels": []}
    shown_ids = {n["id"] for lv in trimmed["levels"] for n in lv["nodes"]}
    kernel_gifs: dict[str, str] = {}
    for tube in kernel_tubes:
        nid = node_id(tube.node)  # type: ignore[arg-type]
        want_report = "report" in fmt and nid in shown_ids
        if not (opts.kernel_videos or want_report):
            continue
        overlaid, _ = overlay_tube(frames, tube.volume, opts.alpha, opts.colormap)
        if opts.kernel_videos:
            if "mp4" in fmt:
                written.append(write_mp4(out / "kernels" / f"{slug(nid)}.mp4", overlaid, opts.fps))
            if "gif" in fmt:
                written.append(
                    write_bytes(out / "kernels" / f"{slug(nid)}.gif", encode_gif(overlaid, opts.fps))
                )
        if want_report:
            kernel_gifs[nid] = data_uri(
                encode_gif(_fit(overlaid, opts.report_max_side), opts.fps), "image/gif"
            )
    if "pyramid" in fmt and pyramid_json:
        figure, _ = pyramid_figure(pyramid_json, kernel_volumes, opts.colormap, opts.max_nodes)
        written.append(write_png(out / "pyramid.png", figure))
    importance_png = None
    if "importance" in fmt and importance:
        importance_png = encode_png(importance_chart(importance))
        written.append(write_bytes(out / "importance.png", importance_png))
        written.append(write_importance_csv(out / "importance.csv", importance, source_frames))
    if "json" in fmt and pyramid_json:
        written.append(write_json(out / "pyramid.json", dict(pyramid_json)))
    if "report" in fmt:
        clip_small = _fit(frames, opts.report_max_side)
        data = {
            "title": f"onnxcfp explanation: {prediction.name or f'class {prediction.index}'}",
            "model": model_source,
            "clip": {
                "source": clip_source,
                "frames": int(frames.shape[0]),
                "size": list(frames.shape[1:3]),
                "indices": [
                    int(i) for i in (source_frames if source_frames is not None else range(frames.shape[0]))
                ],
                "gif": data_uri(encode_gif(clip_small, opts.fps), "image/gif"),
            },
            "prediction": prediction.to_json(),
            "layers": layer_entries,
            "level_tube": level_index,
            "importance": data_uri(importance_png, "image/png") if importance_png else None,
            "pyramid": trimmed,
            "kernels": kernel_gifs,
        }
        written.append(write_text(out / "report.html", report_html(data["title"], data)))
    return RenderedExplanation(out, tuple(written), importance)
