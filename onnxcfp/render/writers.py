"""Atomic file writers: every output goes to a hidden temporary name in the target folder, is flushed to
disk, then renamed over the final name (``os.replace`` is atomic on POSIX and Windows). An interrupted
run leaves at most a ``.name.tmp-*`` file, never a half-written file under the real name."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so encoders guess the format); on success
    rename it to ``path``, on any error delete it and re-raise."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{secrets.token_hex(4)}{final.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before the name points at them
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim < 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB [..., H, W, 3], got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 RGB ``[H, W, 3]`` image."""
    import imageio.v3 as iio

    return bytes(iio.imwrite("<bytes>", _as_rgb_uint8(image), extension=".png"))


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """Looping animated GIF bytes of uint8 RGB ``[T, H, W, 3]`` frames.

    One 256-colour palette (fast octree) is built from a sample of the frames and every frame is mapped
    to it without dithering: ~6x faster than pillow's default per-frame median cut, and the colours
    stay stable from frame to frame (no palette flicker)."""
    from PIL import Image

    frames = _as_rgb_uint8(frames)
    sample = frames[:: max(1, len(frames) // 8)]
    palette = Image.fromarray(np.concatenate(list(sample), axis=0)).quantize(
        256, method=Image.Quantize.FASTOCTREE
    )
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    # GIF delays are in hundredths of a second; browsers clamp delays under 20 ms.
    duration = max(20, round(1000.0 / fps / 10.0) * 10)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buf.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> Path:
    return write_bytes(path, encode_png(image))


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    return write_bytes(path, encode_gif(frames, fps))


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, quality: int = 20) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere) of uint8 RGB ``[T, H, W, 3]``. Odd sizes are padded by one
    edge pixel because yuv420p needs even dimensions; ``quality`` is the x264 CRF (lower = better)."""
    import imageio_ffmpeg

    frames = _as_rgb_uint8(frames)
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w + pad_w, h + pad_h),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            quality=None,
            ffmpeg_log_level="error",
            output_params=["-crf", str(quality), "-movflags", "+faststart"],
        )
        writer.send(None)  # start the generator
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return Path(path)


def write_png_frames(folder: str | Path, frames: np.ndarray, prefix: str = "frame") -> list[Path]:
    """One PNG per frame, ``{prefix}_0000.png`` ..."""
    return [write_png(Path(folder) / f"{prefix}_{i:04d}.png", f) for i, f in enumerate(frames)]


def data_uri(data: bytes, mime: str) -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def json_for_script(obj: Mapping[str, Any] | Sequence[Any]) -> str:
    """JSON safe to inline in ``<script type="application/json">``: "<", ">" and "&" escaped so no string
    can close the script element or open a comment."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
