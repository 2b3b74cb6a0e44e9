"""Clips with ground-truth masks for the evaluation: the synthetic dataset, or the user's own data.

User data is two folders with matching names::

    data/                         masks/
      jump_01.mp4                   jump_01/0000.png 0001.png ...   (one mask per frame of the clip)
      wave_02/ (frames folder)      wave_02/...
      run_03.npy                    run_03/...

A clip is any source ``onnxcfp.video.read_clip`` accepts (video file, frames folder, ``.npy``); its
masks are the PNGs of the folder with the clip's stem, in natural order, one per source frame, each the
size of the source frames; non-zero pixels are the actor. The model sees the clip's first T frames
(T from the model card or input shape), as ``onnxcfp explain`` does. An optional ``labels.csv`` in the
data folder (``clip,label`` rows, a class index or a card class name) gives each clip's true class;
without it the evaluation explains each clip's top-1 class.

Masks are brought to the model's input exactly as the frames are: the same frame indices, the same crop
box, then resized to the model's H×W (bilinear on 0/255, kept where ≥ 128, i.e. a pixel is actor when at
least half of it was).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxcfp.datasets import SyntheticClips
from onnxcfp.errors import ConfigError, VideoReadError
from onnxcfp.video import VIDEO_SUFFIXES, Clip, natural_key


@dataclass(frozen=True, eq=False)
class MaskedClip:
    """One clip to evaluate. ``source`` is what ``read_clip`` accepts (uint8 ``[T, H, W, 3]`` frames or
    a path); ``masks`` the actor masks of EVERY source frame, bool ``[T_src, H_src, W_src]``, or the
    folder holding them as PNGs (read on demand, only the frames the model sees); ``label`` the true
    class index (None: unknown); ``action`` the action's frames ``[start, stop)`` in source frames when
    known (else the frames whose mask is non-empty are the action)."""

    name: str
    source: np.ndarray | Path
    masks: np.ndarray | Path
    label: int | None = None
    action: tuple[int, int] | None = None


@dataclass(frozen=True, eq=False)
class MaskedClips:
    """The clips of one evaluation, with the class names their labels index (None: not known)."""

    clips: tuple[MaskedClip, ...]
    class_names: tuple[str, ...] | None = None
    origin: str = "user data"

    def __len__(self) -> int:
        return len(self.clips)


def from_synthetic(data: SyntheticClips, name_prefix: str = "synthetic") -> MaskedClips:
    """Wrap ``onnxcfp.datasets.make_clips`` output (labels, exact masks and action intervals known)."""
    clips = tuple(
        MaskedClip(
            name=f"{name_prefix}_{i:04d}",
            source=data.frames[i],
            masks=data.masks[i],
            label=int(data.labels[i]),
            action=(int(data.intervals[i, 0]), int(data.intervals[i, 1])),
        )
        for i in range(len(data))
    )
    return MaskedClips(clips=clips, class_names=tuple(data.class_names), origin="synthetic")


def _clip_stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _is_clip(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return True
    return path.suffix.lower() in VIDEO_SUFFIXES | {".npy"}


def mask_files(folder: Path) -> list[Path]:
    """The mask PNGs of one clip, in natural order (frame2 before frame10)."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise VideoReadError(f"mask folder {folder} holds no .png files: write one mask PNG per clip frame")
    return files


def _read_labels(path: Path, class_names: Sequence[str] | None) -> dict[str, int]:
    """``labels.csv``: rows ``clip,label`` (a header row ``clip,label`` is allowed)."""
    labels: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].strip().startswith("#"):
                continue
            if len(row) < 2:
                raise ConfigError(f"{path} line {lineno}: expected 'clip,label', got {','.join(row)!r}")
            stem, value = row[0].strip(), row[1].strip()
            if lineno == 1 and (stem.lower(), value.lower()) == ("clip", "label"):
                continue
            if value.lstrip("-").isdigit():
                labels[stem] = int(value)
            elif class_names is not None and value in class_names:
                labels[stem] = list(class_names).index(value)
            else:
                known = ", ".join(class_names) if class_names else "none (give class indices)"
                raise ConfigError(f"{path} line {lineno}: unknown class {value!r}; known classes: {known}")
    return labels


def read_masked_clips(
    data_dir: str | Path, masks_dir: str | Path, class_names: Sequence[str] | None = None
) -> MaskedClips:
    """The user's clips (``data_dir``) paired by stem with their mask folders (``masks_dir``)."""
    data, masks = Path(data_dir), Path(masks_dir)
    for folder, what in ((data, "--data"), (masks, "--masks")):
        if not folder.is_dir():
            raise ConfigError(f"{what} {folder} is not a folder")
    sources = sorted((p for p in data.iterdir() if _is_clip(p)), key=lambda p: natural_key(p.name))
    if not sources:
        raise ConfigError(
            f"{data} holds no clips: put video files (.mp4 ...), .npy arrays or frame folders in it"
        )
    stems = [_clip_stem(p) for p in sources]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ConfigError(f"{data} has several clips named {duplicates[0]!r}; give each clip a unique stem")
    missing = [s for s in stems if not (masks / s).is_dir()]
    if missing:
        raise ConfigError(
            f"no mask folder {masks / missing[0]} for clip {missing[0]!r} ({len(missing)} clip(s) lack "
            "masks): write one PNG per frame in a folder named like the clip"
        )
    labels_csv = data / "labels.csv"
    labels = _read_labels(labels_csv, class_names) if labels_csv.is_file() else {}
    clips = tuple(
        MaskedClip(name=stem, source=src, masks=masks / stem, label=labels.get(stem))
        for stem, src in zip(stems, sources, strict=True)
    )
    names = tuple(class_names) if class_names is not None else None
    return MaskedClips(clips=clips, class_names=names, origin=f"{data} with masks {masks}")


def _read_mask_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except Exception as exc:
        raise VideoReadError(f"cannot read mask {path}: {exc}") from exc
    return arr > 0


def source_masks(clip: MaskedClip, frame_indices: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """bool ``[T, H_src, W_src]``: the masks of the source frames ``frame_indices``."""
    idx = np.asarray(frame_indices, dtype=np.int64)
    if isinstance(clip.masks, np.ndarray):
        m = np.asarray(clip.masks, dtype=bool)
        if m.ndim != 3 or int(idx.max()) >= m.shape[0]:
            raise ConfigError(
                f"clip {clip.name}: masks of shape {m.shape} do not cover source frame {int(idx.max())}; "
                "give one mask per frame"
            )
        out = m[idx]
    else:
        files = mask_files(Path(clip.masks))
        if int(idx.max()) >= len(files):
            raise ConfigError(
                f"clip {clip.name}: {clip.masks} holds {len(files)} masks but frame {int(idx.max())} is "
                "used; write one mask PNG per clip frame"
            )
        out = np.stack([_read_mask_png(files[i]) for i in idx.tolist()])
    if out.shape[1:] != tuple(frame_size):
        raise ConfigError(
            f"clip {clip.name}: masks are {out.shape[2]}x{out.shape[1]} but frames are "
            f"{frame_size[1]}x{frame_size[0]}; masks must be the size of the clip's frames"
        )
    return out


def masks_for_model(masks: np.ndarray, clip: Clip, size: tuple[int, int]) -> np.ndarray:
    """Source-resolution masks ``[T, H_src, W_src]`` → the model input's ``[T, H, W]``: cropped to the
    box the model saw and resized to ``size`` as the frames were (a pixel is actor when ≥ half of it is)."""
    from PIL import Image

    top, left, bottom, right = clip.crop_box
    cropped = np.asarray(masks, dtype=bool)[:, top:bottom, left:right]
    h, w = size
    if cropped.shape[1:] == (h, w):
        return cropped.copy()
    out = np.empty((cropped.shape[0], h, w), dtype=bool)
    for i, frame in enumerate(cropped):
        img = Image.fromarray(frame.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img) >= 128
    return out


def action_frames_of(clip: MaskedClip, frame_indices: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """bool ``[T]``: which of the model's frames show the action (the interval when known, else the
    frames with a non-empty mask)."""
    if clip.action is not None:
        start, stop = clip.action
        idx = np.asarray(frame_indices)
        return (idx >= start) & (idx < stop)
    return np.asarray(masks, dtype=bool).any(axis=(1, 2))
