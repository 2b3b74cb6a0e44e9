"""What a batch is made of: discovering clips under the user's inputs, naming their output folders, and the
small per-clip summary that crosses process (and Dask) boundaries."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from onnxcfp.errors import ConfigError, OnnxcfpError
from onnxcfp.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

ARRAY_SUFFIXES = frozenset({".npy"})

# Output folders starting with these are ours and never a clip: a clip folder name never starts with ".".
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class ClipJob:
    """One clip of the batch. ``clip`` is the id shown in the summary (relative path, posix); ``name`` is its
    output folder under the batch's output directory; ``label`` overrides the explained class when given."""

    index: int
    clip: str
    source: str
    kind: str  # "video" | "array" | "frames"
    name: str
    label: str | None = None


@dataclass(frozen=True)
class ClipSummary:
    """The small, JSON-able result of one clip: what the client gathers and ``summary.csv`` holds.

    ``status`` is "ok" (explained now), "skipped" (complete outputs from an earlier run, verified by their
    manifest) or "failed" (``error`` is the one-line reason)."""

    clip: str
    source: str
    output: str
    status: str
    predicted: int | None = None
    predicted_name: str | None = None
    target: int | None = None
    score: float | None = None
    kept: tuple[tuple[str, int], ...] = ()  # kept kernels per layer, in layer order
    seconds: float | None = None
    error: str | None = None
    attempts: int = 1
    extra: tuple[tuple[str, Any], ...] = field(default=())  # anything else the explainer's summary carried

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kept"] = dict(self.kept)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClipSummary:
        fields = dict(d)
        fields["kept"] = tuple((str(k), int(v)) for k, v in dict(fields.get("kept") or {}).items())
        fields["extra"] = tuple(dict(fields.get("extra") or {}).items())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in fields.items() if k in known})


def one_line(err: BaseException) -> str:
    """An error as one line: its type (unless it is one of ours, whose message already says what to do)."""
    text = " ".join(str(err).split()) or "no message"
    return text if isinstance(err, OnnxcfpError) else f"{type(err).__name__}: {text}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def folder_name(clip_id: str) -> str:
    """A safe folder name for a clip id: path separators become ``__``, other odd characters ``_``; never
    starts with "." (those names are the batch's temp/trash folders)."""
    parts = [(_UNSAFE.sub("_", p) or "_") for p in clip_id.split("/")]
    name = "__".join(parts)
    if name.startswith("."):
        name = "_" + name[1:]
    return name[:200]


def _is_frames_dir(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _clip_kind(path: Path) -> str | None:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return "video"
        if suffix in ARRAY_SUFFIXES:
            return "array"
        return None
    if _is_frames_dir(path):
        return "frames"
    return None


def _walk(root: Path) -> Iterable[tuple[Path, str]]:
    """Clips under a folder, depth first in sorted order. A folder holding image files is ONE clip (its
    frames) and is not searched further; other folders are searched recursively."""
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        kind = _clip_kind(child)
        if kind is not None:
            yield child, kind
        elif child.is_dir():
            yield from _walk(child)


def discover_clips(
    inputs: Sequence[str | Path], labels: Mapping[str, str] | None = None, exclude: Path | None = None
) -> list[ClipJob]:
    """Every clip under ``inputs`` (video files, .npy arrays, folders of frames, or folders searched
    recursively). Clip ids are paths relative to the input folder they were found in (a file given directly
    is its own name); ids repeated across inputs get the input's folder name as a prefix. Output folder names
    that would collide get a short hash of the clip id. ``exclude`` (the output folder) is never searched."""
    found: list[tuple[str, Path, str, int]] = []
    for root_index, raw in enumerate(inputs):
        root = Path(raw)
        if not root.exists():
            raise ConfigError(f"input {root} does not exist: pass video files, .npy files or folders of them")
        kind = _clip_kind(root)
        if kind is not None:
            found.append((root.name, root, kind, root_index))
            continue
        if not root.is_dir():
            raise ConfigError(
                f"input {root} is not a clip: use a video ({', '.join(sorted(VIDEO_SUFFIXES))}), "
                ".npy, a folder of frames or a folder of clips"
            )
        excluded = exclude.resolve() if exclude is not None else None
        for path, k in _walk(root):
            if excluded is not None and (path.resolve() == excluded or excluded in path.resolve().parents):
                continue
            found.append((path.relative_to(root).as_posix(), path, k, root_index))
    if not found:
        raise ConfigError("no clips found in the inputs: expected videos, .npy files or folders of frames")

    # The same relative id from two inputs: prefix with the input folder's name (and index if needed).
    id_counts = Counter(cid for cid, *_ in found)
    ids: list[str] = []
    for cid, _path, _kind, root_index in found:
        if id_counts[cid] > 1:
            root = Path(inputs[root_index])
            cid = f"{root.name or 'input'}{root_index}/{cid}"
        ids.append(cid)
    if len(set(ids)) != len(ids):  # the same file given twice
        dup = next(c for c, n in Counter(ids).items() if n > 1)
        raise ConfigError(f"clip {dup} is given twice in the inputs: pass each clip once")

    names = [folder_name(cid) for cid in ids]
    name_counts = Counter(n.lower() for n in names)  # case-insensitive file systems too
    jobs = []
    for index, ((_, path, kind, _), cid, name) in enumerate(zip(found, ids, names, strict=True)):
        if name_counts[name.lower()] > 1:
            name = f"{name[:180]}-{hashlib.sha1(cid.encode()).hexdigest()[:8]}"
        label = _lookup_label(labels, cid, path) if labels else None
        jobs.append(ClipJob(index=index, clip=cid, source=str(path), kind=kind, name=name, label=label))
    return jobs


def _lookup_label(labels: Mapping[str, str], clip_id: str, path: Path) -> str | None:
    stem_id = PurePosixPath(clip_id).with_suffix("").as_posix()
    for key in (clip_id, stem_id, path.name, path.stem):
        if key in labels:
            return labels[key]
    return None


def read_labels(path: str | Path) -> dict[str, str]:
    """A labels CSV: header with a ``clip`` column and a ``label`` column (class index or name). ``clip`` is
    matched against the clip id, the id without extension, the file name, then its stem."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ConfigError(f"cannot read labels file {p}: {err.strerror}") from err
    if not rows or not {"clip", "label"} <= set(rows[0]):
        raise ConfigError(f"labels file {p} needs a header with columns 'clip' and 'label'")
    return {r["clip"].strip(): r["label"].strip() for r in rows if r.get("clip") and r.get("label")}
