"""Atomic file writers: every output goes to a hidden temporary name in the target folder, is flushed to
disk, then renamed over the final name (``os.replace`` is atomic on POSIX and Windows). An interrupted
run leaves at most a ``.name.tmp-*`` file, never a half-written file under the real name.

``AtomicBatch`` does the same for many files at once (an explanation's outputs): it flushes and renames
them from a few threads, which lets the file system merge the flushes (one file at a time, each
``fsync`` waits for its own journal commit: 15 files took ~90 ms in a row, ~15 ms in parallel).

Also here: the GIF encoder with a palette shared by a clip's GIFs, and an MP4 encoder that writes
several videos with one ffmpeg process."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from onnxcfp.errors import ConfigError


def _temporary_name(final: Path) -> Path:
    """A hidden name beside ``final`` with the same suffix (so encoders guess the format)."""
    return final.with_name(f".{final.stem}.tmp-{secrets.token_hex(4)}{final.suffix}")


def _prepare_target(final: Path) -> None:
    """Create ``final``'s folder. A file where a folder must go (or a folder where the file must go) is a
    mistake in the user's output path: say so in one line rather than let an OSError escape."""
    if final.is_dir():
        raise ConfigError(f"cannot write {final}: it is a folder; give a file path for this output")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in (final.parent, *final.parent.parents) if p.is_file()), final.parent)
        raise ConfigError(
            f"cannot write {final}: {blocker} is a file, not a folder; choose another output"
        ) from err


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:  # make the bytes durable before the final name points at them
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on any error delete it
    and re-raise."""
    final = Path(path)
    _prepare_target(final)
    tmp = _temporary_name(final)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class AtomicBatch:
    """Many files written atomically: each goes to a temporary name; ``commit()`` flushes each to disk
    and renames it to its final name (in parallel), ``abort()`` deletes them. As a context manager it
    commits on success and aborts on any error, so no final name is created unless every file of the
    batch was written completely."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)

    def temp_path(self, path: str | Path) -> Path:
        """A temporary path to write ``path``'s content to; renamed to ``path`` by ``commit()``."""
        final = Path(path)
        _prepare_target(final)
        tmp = _temporary_name(final)
        self._pending.append((tmp, final))
        return tmp

    def write_bytes(self, path: str | Path, data: bytes) -> Path:
        self.temp_path(path).write_bytes(data)
        return Path(path)

    def write_text(self, path: str | Path, text: str) -> Path:
        return self.write_bytes(path, text.encode("utf-8"))

    def commit(self) -> list[Path]:
        """Flush each pending file and rename it (a few files at a time, from threads: both calls wait
        on the disk, not the CPU); returns the final paths in the order added. Every file is complete
        before the first rename."""
        pending, self._pending = self._pending, []

        def finish(item: tuple[Path, Path]) -> None:
            _fsync(item[0])
            os.replace(*item)

        try:
            with ThreadPoolExecutor(max_workers=max(1, min(8, len(pending)))) as pool:
                list(pool.map(finish, pending))
        except BaseException:
            self._pending = pending
            self.abort()
            raise
        return [final for _, final in pending]

    def abort(self) -> None:
        """Delete every pending temporary file (those already renamed are left alone)."""
        pending, self._pending = self._pending, []
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def __enter__(self) -> AtomicBatch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """Indented JSON (UTF-8 kept, NaN refused) with a final newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    return write_text(path, csv_text(header, rows))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim < 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB [..., H, W, 3], got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_png(image: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes of one uint8 RGB ``[H, W, 3]`` image. zlib level 3 writes files ~12% larger than
    level 6 in about half the time (pillow directly: imageio's plugin lookup costs more than encoding)."""
    from PIL import Image

    rgb = _as_rgb_uint8(image)
    if rgb.ndim != 3:
        raise ValueError(f"expected one uint8 RGB [H, W, 3] image, got {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class GifPalette:
    """At most 256 colours shared by every GIF of one clip, with a nearest-colour table over RGB cells
    of 6 bits per channel (``2**18`` cells, each mapped to the palette colour nearest its centre).

    The table is filled lazily, only for the cells a clip's frames actually use, and kept: the first GIF
    of a clip pays for its cells (one vectorised distance computation), later GIFs of the same clip
    (other layers, kernels, the report copies) mostly cost one gather per pixel. One palette per clip
    also means no colour flicker between frames and identical colours across a clip's GIFs. Quantising
    the lookup key to 6 bits adds at most 2 levels per channel to the palette's own error."""

    CELL_BITS = 6

    def __init__(self, colours: np.ndarray) -> None:
        cols = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        if not 1 <= len(cols) <= 256:
            raise ValueError(f"a GIF palette has 1..256 colours, got {len(cols)}")
        self.colours = cols.copy()
        self.colours.setflags(write=False)
        self._table = np.full(1 << (3 * self.CELL_BITS), -1, dtype=np.int16)  # -1: not computed yet

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], max_samples: int = 1 << 16) -> GifPalette:
        """A palette for uint8 RGB ``images`` (any shapes ``[..., 3]``): their exact colours when a sample
        of at most ``max_samples`` pixels has no more than 256, else pillow's fast octree of the sample."""
        from PIL import Image

        pixels = np.concatenate([_as_rgb_uint8(im).reshape(-1, 3) for im in images])
        if len(pixels) == 0:
            raise ValueError("no pixels to build a GIF palette from")
        if len(pixels) > max_samples:  # a fixed-seed random sample: no aliasing with the image width
            pixels = pixels[np.random.default_rng(0).integers(0, len(pixels), max_samples)]
        keys = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
        distinct = np.unique(keys)
        if len(distinct) <= 256:
            return cls(np.stack([distinct >> 16, (distinct >> 8) & 255, distinct & 255], axis=1))
        quantised = Image.fromarray(pixels.reshape(1, -1, 3)).quantize(256, method=Image.Quantize.FASTOCTREE)
        table = np.asarray(quantised.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        return cls(table[np.unique(np.asarray(quantised))])

    def indices(self, images: np.ndarray) -> np.ndarray:
        """uint8 palette indices ``[...]`` of uint8 RGB ``images`` ``[..., 3]``."""
        rgb = _as_rgb_uint8(images)
        shift, bits = 8 - self.CELL_BITS, self.CELL_BITS
        cells = rgb >> shift
        keys = (cells[..., 0].astype(np.int32) << 2 * bits) | (cells[..., 1].astype(np.int32) << bits)
        keys |= cells[..., 2]
        missing = np.zeros(self._table.shape, dtype=bool)
        missing[keys] = True
        missing &= self._table < 0
        new = np.flatnonzero(missing)
        if new.size:
            mask = (1 << bits) - 1
            cell_rgb = np.stack([new >> 2 * bits, (new >> bits) & mask, new & mask], axis=1)
            centres = cell_rgb.astype(np.float32) * (1 << shift) + ((1 << shift) - 1) / 2
            self._table[new] = self._nearest(centres)
        return self._table[keys].astype(np.uint8)

    def _nearest(self, points: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Index of the nearest palette colour (Euclidean RGB) of each ``[N, 3]`` point. Plain
        broadcasting over the 3 channels, not a matrix product: that would go through BLAS, whose
        threads can stall for tens of milliseconds on a busy machine."""
        pal = self.colours.astype(np.float32)
        out = np.empty(len(points), dtype=np.int16)
        for start in range(0, len(points), chunk):
            p = points[start : start + chunk]
            dist = (p[:, None, 0] - pal[None, :, 0]) ** 2
            dist += (p[:, None, 1] - pal[None, :, 1]) ** 2
            dist += (p[:, None, 2] - pal[None, :, 2]) ** 2
            out[start : start + chunk] = np.argmin(dist, axis=1)
        return out


def encode_gif(frames: np.ndarray, fps: float, palette: GifPalette | None = None) -> bytes:
    """Looping animated GIF bytes of uint8 RGB ``[T, H, W, 3]`` frames.

    Every frame is mapped to one palette (``palette``, shared by all GIFs of a clip, or one built from
    these frames) by a table lookup, without dithering; pillow only writes the indexed frames (LZW, and
    a crop of each frame to what changed). Consecutive identical frames are merged into one frame with
    their summed delay, so the animation's timing is kept."""
    from PIL import Image

    frames = _as_rgb_uint8(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected uint8 RGB [T, H, W, 3] frames, got {frames.shape}")
    palette = palette or GifPalette.from_images([frames])
    indexed = palette.indices(frames)
    colours = palette.colours.tobytes()
    h, w = indexed.shape[1:]
    images = []
    for plane in indexed:
        image = Image.frombytes("P", (w, h), plane.tobytes())
        image.putpalette(colours)
        images.append(image)
    # GIF delays are in hundredths of a second; browsers clamp delays under 20 ms.
    duration = max(20, round(1000.0 / fps / 10.0) * 10)
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=True
    )
    return buf.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> Path:
    return write_bytes(path, encode_png(image))


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    return write_bytes(path, encode_gif(frames, fps))


def _even_sized(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even dimensions: odd sizes get one edge pixel repeated."""
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


class PendingMp4s:
    """MP4s (H.264, yuv420p, plays everywhere) of several equally sized clips being encoded by ONE ffmpeg
    process, fed from a background thread so that encoding overlaps whatever the caller does next.

    ffmpeg's start-up (tens of milliseconds) dominates the cost of a short small clip, so one process for
    all of an explanation's videos (its input split into one trimmed stream per output) is several
    times faster than a process per file. ``wait()`` returns the paths once all are complete;
    ``cancel()`` stops the encoder. The paths are written as given: pass temporary names and rename them
    afterwards (``AtomicBatch``) to keep the writes atomic."""

    def __init__(
        self, outputs: Sequence[tuple[str | Path, np.ndarray]], fps: float, quality: int = 20
    ) -> None:
        import imageio_ffmpeg

        if not outputs:
            raise ValueError("no videos to encode")
        clips = [np.ascontiguousarray(_even_sized(_as_rgb_uint8(f))) for _, f in outputs]
        sizes = {c.shape[1:] for c in clips}
        if len(sizes) != 1 or clips[0].ndim != 4:
            raise ValueError(f"the clips of one ffmpeg run must share one size, got {sorted(sizes)}")
        h, w = clips[0].shape[1:3]
        self.paths = [Path(p) for p, _ in outputs]
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
        ]  # fmt: skip
        if len(clips) > 1:  # one input stream = the clips back to back; cut it into one stream per output
            cuts = np.cumsum([0] + [len(c) for c in clips])
            graph = [f"[0:v]split={len(clips)}" + "".join(f"[s{i}]" for i in range(len(clips)))]
            graph += [
                f"[s{i}]trim=start_frame={cuts[i]}:end_frame={cuts[i + 1]},setpts=PTS-STARTPTS[o{i}]"
                for i in range(len(clips))
            ]
            cmd += ["-filter_complex", ";".join(graph)]
        # Small clips encode fastest on one thread each (x264's thread start-up costs more than it saves).
        threads = "1" if h * w * max(len(c) for c in clips) <= 16 * 256 * 256 else "0"
        encoder = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(quality), "-threads", threads]
        for i, path in enumerate(self.paths):
            stream = f"[o{i}]" if len(clips) > 1 else "0:v"
            cmd += ["-map", stream, *encoder, "-movflags", "+faststart", "-f", "mp4", str(path)]
        # ffmpeg's log goes to a file, not a pipe: a pipe nobody reads could fill up and stall it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait() / cancel()
        self._process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, args=(clips,), daemon=True)
        self._feeder.start()

    def _feed(self, clips: list[np.ndarray]) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            for clip in clips:
                stdin.write(memoryview(clip).cast("B"))
        except BrokenPipeError:  # ffmpeg exited early: its log says why
            pass
        except BaseException as err:  # re-raised by wait() in the caller's thread
            self._feed_error = err
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def wait(self) -> list[Path]:
        self._feeder.join()
        code = self._process.wait()
        self._log.seek(0)
        log = self._log.read().decode("utf-8", "replace").strip()
        self._log.close()
        if self._feed_error is not None:
            raise self._feed_error
        if code != 0:
            last = log.splitlines()[-1] if log else f"exit status {code}"
            names = ", ".join(p.name for p in self.paths)
            raise OSError(f"ffmpeg could not write {names}: {last}")
        return self.paths

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._feeder.join()
        self._process.wait()
        self._log.close()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, quality: int = 20) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere) of uint8 RGB ``[T, H, W, 3]``. Odd sizes are padded by one
    edge pixel because yuv420p needs even dimensions; ``quality`` is the x264 CRF (lower = better)."""
    with atomic_path(path) as tmp:
        encoder = PendingMp4s([(tmp, frames)], fps, quality)
        try:
            encoder.wait()
        except BaseException:
            encoder.cancel()
            raise
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
