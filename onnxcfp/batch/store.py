"""Clip output folders that are either complete or absent.

A clip is written into ``OUT/.tmp-<name>-<random>/``; its ``manifest.json`` (every file with size and
sha256, the clip, the run's fingerprint and the clip's summary) is written last; then the folder is renamed
to ``OUT/<name>`` (one atomic rename on the same file system). A run killed at any moment therefore leaves
only complete clip folders plus temp folders, which the next run removes. ``--resume`` re-hashes the files a
manifest lists, so a folder is skipped only when its outputs are really there and unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxcfp.batch.jobs import TEMP_PREFIX, TRASH_PREFIX, ClipJob, ClipSummary

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "onnxcfp.batch.manifest/1"


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a torn file. No fsync: after
    a power loss a manifest may list bytes that never hit the disk, but resume re-hashes every file, so such
    a folder is redone rather than trusted."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary result files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_temp_dir(out_root: Path, name: str) -> Path:
    path = out_root / f"{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


def write_manifest(
    folder: Path, job: ClipJob, fingerprint: Mapping[str, Any], summary: ClipSummary
) -> dict[str, Any]:
    """List every file under ``folder`` (recursively) with size and sha256, then write the manifest."""
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files.append(
                {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
            )
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "clip": job.clip,
        "source": job.source,
        "fingerprint": dict(fingerprint),
        "summary": summary.to_json(),
        "files": files,
    }
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def publish(temp: Path, final: Path) -> None:
    """Move a finished temp folder into place. An older folder at ``final`` (a previous run's, or a
    duplicate attempt's) is first moved aside, so ``final`` is never a mix of two runs."""
    try:
        os.rename(temp, final)
        return
    except OSError:
        if not final.exists():
            raise
    trash = final.parent / f"{TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:12]}"
    os.rename(final, trash)
    os.rename(temp, final)
    shutil.rmtree(trash, ignore_errors=True)


def verify_clip_folder(folder: Path, job: ClipJob, fingerprint: Mapping[str, Any]) -> ClipSummary | None:
    """The summary stored in a complete, unchanged clip folder made with the same fingerprint; None when
    anything is missing, altered, or from other options/model."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("schema") != MANIFEST_SCHEMA
        or manifest.get("clip") != job.clip
        or manifest.get("fingerprint") != json.loads(json.dumps(dict(fingerprint)))
    ):
        return None
    try:
        for entry in manifest["files"]:
            p = folder / entry["path"]
            if not p.is_file() or p.stat().st_size != entry["size"] or sha256_file(p) != entry["sha256"]:
                return None
        return ClipSummary.from_json(manifest["summary"])
    except (KeyError, TypeError, ValueError, OSError):
        return None


def remove_leftovers(out_root: Path) -> list[str]:
    """Remove temp and trash folders/files that a killed run left behind. Call only when no worker of this
    batch is writing (before dispatching, after all workers are done or dead)."""
    removed = []
    if not out_root.is_dir():
        return removed
    for p in out_root.iterdir():
        if p.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p.name)
    return removed
