"""Reading clips: video files, frame folders and ``.npy`` arrays; clip selection; preprocessing.

A source is decoded to RGB uint8 frames ``[N, H, W, 3]``; ``select_frames`` picks the frame indices of
one or several clips (start, length, temporal stride, fill for short videos); ``Preprocessing`` turns
the picked frames into the model's input tensor. The original frames are kept on the ``Clip`` for the
overlays, together with the crop box the model actually saw.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from onnxcfp.errors import ConfigError, VideoReadError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
LAYOUTS = ("NCTHW", "NTHWC")
RESIZE_MODES = ("shorter_side_center_crop", "stretch", "none")
FILL_MODES = ("none", "loop", "pad")


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception's text: library errors can span many lines (ffmpeg logs)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


@dataclass(frozen=True)
class Preprocessing:
    """How frames become the model's input: ``((frame / scale) - mean) / std`` per channel after
    resizing, in ``channel_order``, laid out as ``layout`` with a leading batch axis of 1.

    ``size`` is the model's (H, W); None keeps the frames' size. ``frames`` is the clip length the
    model needs (T); None means "whatever the caller asks for".
    """

    size: tuple[int, int] | None = None
    resize: str = "shorter_side_center_crop"
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    layout: str = "NCTHW"
    dtype: str = "float32"
    frames: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout {self.layout!r} is not supported: use one of {', '.join(LAYOUTS)}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(
                f"resize {self.resize!r} is not supported: use one of {', '.join(RESIZE_MODES)}"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel order {self.channel_order!r} is not supported: use RGB or BGR")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need 3 values each (one per colour channel)")
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise ConfigError("std values and scale must be non-zero")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"size {self.size!r} must be two positive ints (H, W)")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"frames {self.frames} must be at least 1")
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError as exc:
            raise ConfigError(f"dtype {self.dtype!r} is not a numpy dtype: use e.g. float32") from exc
        if kind != "f":
            raise ConfigError(f"dtype {self.dtype!r} is not a float type: use float32 or float16")

    @classmethod
    def from_card(cls, card: Mapping[str, Any], **overrides: Any) -> Preprocessing:
        """Build from a model card's "input" and "preprocessing" blocks; ``overrides`` (CLI options,
        None values ignored) win over the card."""
        inp = dict(card.get("input") or {})
        pre = dict(card.get("preprocessing") or {})
        layout = str(inp.get("layout", "NCTHW"))
        shape = inp.get("shape")
        frames: int | None = None
        size: tuple[int, int] | None = None
        if shape is not None and len(shape) == 5 and layout in LAYOUTS:
            dims = dict(zip(layout, shape, strict=True))
            frames = dims["T"] if isinstance(dims["T"], int) and dims["T"] > 0 else None
            if all(isinstance(dims[a], int) and dims[a] > 0 for a in "HW"):
                size = (int(dims["H"]), int(dims["W"]))
        if pre.get("size") is not None:
            size = (int(pre["size"][0]), int(pre["size"][1]))
        values: dict[str, Any] = {
            "size": size,
            "resize": str(pre.get("resize", "shorter_side_center_crop")),
            "scale": float(pre.get("scale", 255.0)),
            "mean": tuple(float(v) for v in pre.get("mean", (0.0, 0.0, 0.0))),
            "std": tuple(float(v) for v in pre.get("std", (1.0, 1.0, 1.0))),
            "channel_order": str(pre.get("channel_order", "RGB")).upper(),
            "layout": layout,
            "dtype": str(inp.get("dtype", "float32")),
            "frames": frames,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_options(self, **overrides: Any) -> Preprocessing:
        """A copy with the given fields changed (None values ignored), validated again."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the region of an original ``height`` x ``width`` frame that the
        model sees. For shorter-side resize + centre crop it is the centred box of the crop's aspect."""
        if self.size is None or self.resize != "shorter_side_center_crop":
            return (0, 0, height, width)
        th, tw = self.size
        s = max(th / height, tw / width)
        ch, cw = min(height, round(th / s)), min(width, round(tw / s))
        top, left = (height - ch) // 2, (width - cw) // 2
        return (top, left, top + ch, left + cw)

    def resize_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` frames at the model's spatial size (bilinear, antialiased by PIL)."""
        if self.size is None or self.resize == "none":
            return frames
        from PIL import Image

        th, tw = self.size
        h, w = frames.shape[1:3]
        if (h, w) == (th, tw):
            return frames
        if self.resize == "stretch":
            new_h, new_w = th, tw
        else:
            s = max(th / h, tw / w)
            # Covering size: the shorter side (relative to the crop's aspect) becomes the crop's side.
            new_h, new_w = max(th, round(h * s)), max(tw, round(w * s))
        top, left = (new_h - th) // 2, (new_w - tw) // 2
        out = np.empty((frames.shape[0], th, tw, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            img = Image.fromarray(frame)
            if (new_h, new_w) != (h, w):
                img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img)[top : top + th, left : left + tw]
        return out

    def to_tensor(self, frames: np.ndarray) -> np.ndarray:
        """Model input ``[1, C, T, H, W]`` or ``[1, T, H, W, C]`` from uint8 RGB ``[T, H, W, 3]``."""
        x = self.resize_frames(frames).astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]  # mean/std are listed in the model's channel order, so flip first
        x = (x / np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(
            self.std, np.float32
        )
        if self.layout == "NCTHW":
            x = np.transpose(x, (3, 0, 1, 2))
        return np.ascontiguousarray(x[None]).astype(self.dtype, copy=False)


@dataclass(frozen=True, eq=False)
class Clip:
    """One clip: ``frames`` the original RGB uint8 ``[T, H, W, 3]`` frames, ``tensor`` the model input
    ``[1, ...]``, ``frame_indices`` where each frame came from in the source, ``filled`` how many of the
    T frames were added by --loop/--pad, ``crop_box`` (top, left, bottom, right) the region the model
    saw."""

    frames: np.ndarray
    tensor: np.ndarray
    frame_indices: np.ndarray
    source: str
    fps: float | None
    preprocessing: Preprocessing
    crop_box: tuple[int, int, int, int]
    filled: int = 0

    @property
    def overlay_frames(self) -> np.ndarray:
        """The original frames cropped to what the model saw: draw saliency tubes on these."""
        top, left, bottom, right = self.crop_box
        return self.frames[:, top:bottom, left:right]


@dataclass(frozen=True, eq=False)
class _Source:
    """A decoded-on-demand frame source: ``count`` frames, ``read(indices)`` returns them."""

    name: str
    count: int
    fps: float | None
    frame_size: tuple[int, int]
    _reader: Any = field(repr=False)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self._reader(indices)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders "frame2" before "frame10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _to_rgb(frame: np.ndarray, what: str) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise VideoReadError(f"{what} has shape {frame.shape}; expected an RGB image [H, W, 3]")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


def _open_folder(path: Path) -> _Source:
    from PIL import Image

    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise VideoReadError(f"{path} holds no .jpg/.jpeg/.png frames: point at a folder of frames")
    sizes: dict[tuple[int, int], str] = {}
    for f in files:
        try:
            with Image.open(f) as img:  # reads the header only
                w, h = img.size
        except Exception as exc:
            raise VideoReadError(f"cannot read frame {f}: {_one_line(exc)}") from exc
        sizes.setdefault((h, w), f.name)
        if len(sizes) > 1:
            (s0, n0), (s1, n1) = list(sizes.items())[:2]
            raise VideoReadError(
                f"frames in {path} have mixed sizes: {n0} is {s0[1]}x{s0[0]} but {n1} is {s1[1]}x{s1[0]}; "
                "resize them to one size first"
            )

    def read(indices: Sequence[int]) -> np.ndarray:
        import imageio.v3 as iio

        out = []
        for i in indices:
            try:
                out.append(_to_rgb(np.asarray(iio.imread(files[i])), str(files[i])))
            except VideoReadError:
                raise
            except Exception as exc:
                raise VideoReadError(f"cannot read frame {files[i]}: {_one_line(exc)}") from exc
        return np.stack(out).astype(np.uint8, copy=False)

    ((h, w),) = sizes.keys()
    return _Source(str(path), len(files), None, (h, w), read)


def _open_npy(path: Path) -> _Source:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise VideoReadError(f"cannot read {path} as a .npy array: {_one_line(exc)}") from exc
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise VideoReadError(
            f"{path} holds an array of shape {tuple(arr.shape)}; expected frames [T, H, W, 3] (or [T, H, W])"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise VideoReadError(f"{path} holds no frames (shape {tuple(arr.shape)}): give a non-empty clip")
    if arr.dtype != np.uint8 and arr.dtype.kind not in "fiu":
        raise VideoReadError(f"{path} has dtype {arr.dtype}; expected uint8 (or float 0..1 / 0..255)")
    # Float frames in [0, 1] are scaled to 0..255; anything else is taken as 0..255 already.
    unit_range = arr.dtype.kind == "f" and float(np.nanmax(arr)) <= 1.0

    def read(indices: Sequence[int]) -> np.ndarray:
        sel = np.asarray(arr[np.asarray(indices)], dtype=np.float64 if arr.dtype != np.uint8 else np.uint8)
        if sel.dtype != np.uint8:
            sel = np.clip(np.rint(sel * 255.0 if unit_range else sel), 0, 255).astype(np.uint8)
        if sel.shape[-1] == 1:
            sel = np.repeat(sel, 3, axis=-1)
        return np.ascontiguousarray(sel[..., :3])

    return _Source(str(path), int(arr.shape[0]), None, (int(arr.shape[1]), int(arr.shape[2])), read)


def _open_gif(path: Path) -> _Source:
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(path, index=None, plugin="pillow", mode="RGB"))
    except Exception as exc:
        raise VideoReadError(f"cannot read {path} as a GIF: {_one_line(exc)}") from exc
    if frames.ndim == 3:  # a single-frame GIF
        frames = frames[None]
    if frames.shape[0] == 0:
        raise VideoReadError(f"{path} holds no frames: give a non-empty clip")
    try:
        meta = iio.immeta(path, index=0, plugin="pillow")
        fps = 1000.0 / float(meta["duration"]) if meta.get("duration") else None
    except Exception:
        fps = None  # the frame rate is optional metadata; frames were read fine
    return _Source(str(path), frames.shape[0], fps, frames.shape[1:3], lambda idx: frames[np.asarray(idx)])


def _ffmpeg_frames(path: Path) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = gen.__next__()
    w, h = meta["size"]
    try:
        for raw in gen:
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def _open_video(path: Path) -> _Source:
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = gen.__next__()
        gen.close()
    except Exception as exc:
        raise VideoReadError(f"cannot read {path} as a video: {_one_line(exc)}") from exc
    fps = float(meta.get("fps") or 0) or None
    w, h = meta["size"]
    # The container's frame count is often an estimate; decode (cheaply, no pixel copy) to count.
    try:
        count, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as exc:
        raise VideoReadError(f"cannot read {path} as a video: {_one_line(exc)}") from exc
    if count <= 0:
        raise VideoReadError(f"{path} holds no frames: give a non-empty video")

    def read(indices: Sequence[int]) -> np.ndarray:
        wanted = np.asarray(indices, dtype=np.int64)
        needed = set(wanted.tolist())
        last = int(wanted.max())
        found: dict[int, np.ndarray] = {}
        try:
            for i, frame in enumerate(_ffmpeg_frames(path)):
                if i in needed:
                    found[i] = frame.copy()
                if i >= last:
                    break
        except Exception as exc:
            raise VideoReadError(f"cannot decode {path}: {_one_line(exc)}") from exc
        missing = sorted(needed - found.keys())
        if missing:
            raise VideoReadError(
                f"{path} ended after {len(found)} decodable frames but frame {missing[0]} was needed; "
                "the file may be truncated"
            )
        return np.stack([found[i] for i in wanted.tolist()])

    return _Source(str(path), int(count), fps, (int(h), int(w)), read)


def open_source(source: str | Path | np.ndarray) -> _Source:
    """Open a video file, a frames folder, a .npy file or an in-memory ``[T, H, W, 3]`` array."""
    if isinstance(source, np.ndarray):
        frames = source
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise VideoReadError(f"frames array has shape {frames.shape}; expected a non-empty [T, H, W, 3]")
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        return _Source(
            "<array>", frames.shape[0], None, frames.shape[1:3], lambda idx: frames[np.asarray(idx)]
        )
    path = Path(source)
    if not path.exists():
        raise VideoReadError(f"{path} does not exist: give a video file, a folder of frames or a .npy file")
    if path.is_dir():
        return _open_folder(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes): give a non-empty video")
    if suffix == ".npy":
        return _open_npy(path)
    if suffix == ".gif":
        return _open_gif(path)
    if suffix in VIDEO_SUFFIXES:
        return _open_video(path)
    raise VideoReadError(
        f"{path} has an unsupported extension {suffix!r}: "
        "use .mp4/.avi/.webm/.mkv/.gif, .npy or a frames folder"
    )


def select_frames(
    count: int,
    length: int,
    *,
    start: int = 0,
    stride: int = 1,
    clips: int = 1,
    fill: str = "none",
    source: str = "the video",
) -> list[np.ndarray]:
    """Frame indices of ``clips`` clips of ``length`` frames taken every ``stride`` frames.

    The first clip starts at ``start``; with several clips, starts are spread evenly from ``start`` to the
    last start that still fits (a short video gives overlapping clips). When the frames run out, ``fill``
    "loop" wraps around to the start of the video and "pad" repeats the last frame; "none" is an error.
    """
    if length < 1 or stride < 1 or clips < 1 or start < 0:
        raise ConfigError(
            f"length ({length}), stride ({stride}) and clips ({clips}) must be >= 1 and start ({start}) >= 0"
        )
    if fill not in FILL_MODES:
        raise ConfigError(f"fill {fill!r} is not supported: use one of {', '.join(FILL_MODES)}")
    if start >= count:
        raise VideoReadError(f"{source} has {count} frames; the start frame {start} is past its end")
    span = (length - 1) * stride + 1
    last_start = max(start, count - span)
    starts = np.linspace(start, last_start, clips).round().astype(np.int64) if clips > 1 else [start]
    out = []
    for s in starts:
        idx = int(s) + stride * np.arange(length, dtype=np.int64)
        if idx[-1] >= count:
            have = int(np.count_nonzero(idx < count))
            if fill == "none":
                raise VideoReadError(
                    f"{source} has {count} frames; from frame {int(s)} with stride {stride} that gives "
                    f"only {have} but the model needs {length}: pass --loop or --pad to fill the clip, "
                    "or a smaller --stride"
                )
            # loop: wrap around to frame 0; pad: hold the last frame.
            idx = idx % count if fill == "loop" else np.minimum(idx, count - 1)
        out.append(idx)
    return out


def read_clips(
    source: str | Path | np.ndarray,
    preprocessing: Preprocessing | None = None,
    *,
    length: int | None = None,
    start: int = 0,
    start_seconds: float | None = None,
    stride: int = 1,
    clips: int = 1,
    fill: str = "none",
    fps: float | None = None,
) -> list[Clip]:
    """Read ``clips`` clips from ``source`` (see ``select_frames``), each preprocessed for the model.

    ``length`` defaults to the preprocessing's ``frames`` (the model's T); ``start_seconds`` overrides
    ``start`` using the source's frame rate (or ``fps`` for folders and arrays).
    """
    pre = preprocessing or Preprocessing()
    src = open_source(source)
    length = length or pre.frames
    if length is None:
        raise ConfigError("the clip length is unknown: pass --frames or a model card whose input has T")
    rate = src.fps or fps
    if start_seconds is not None:
        if start_seconds < 0:
            raise ConfigError(f"start second {start_seconds} must be >= 0")
        if not rate:
            raise ConfigError(f"{src.name} has no frame rate, so a start in seconds is ambiguous: pass --fps")
        start = round(start_seconds * rate)
    out = []
    for idx in select_frames(
        src.count, length, start=start, stride=stride, clips=clips, fill=fill, source=src.name
    ):
        frames = src.read(idx)
        h, w = frames.shape[1:3]
        # Frames past the source's end were supplied by --loop/--pad (the start itself is always real).
        filled = int(np.count_nonzero(idx[0] + stride * np.arange(length) >= src.count))
        out.append(
            Clip(
                frames=frames,
                tensor=pre.to_tensor(frames),
                frame_indices=idx,
                source=src.name,
                fps=rate,
                preprocessing=pre,
                crop_box=pre.crop_box(h, w),
                filled=filled,
            )
        )
    return out


def read_clip(
    source: str | Path | np.ndarray, preprocessing: Preprocessing | None = None, **options: Any
) -> Clip:
    """One clip from ``source``; options as in ``read_clips`` (``clips`` excepted)."""
    if options.get("clips", 1) != 1:
        raise ConfigError("read_clip reads one clip; use read_clips for several")
    return read_clips(source, preprocessing, **options)[0]
