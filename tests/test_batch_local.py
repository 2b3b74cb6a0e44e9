"""Local batch mode: discovery, atomic clip folders with verified manifests, failures recorded, resume,
dead workers, fail-fast, and Ctrl-C (as a real subprocess) followed by a resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch_support import (
    FakePipeline,
    expected_mean,
    write_corrupt_video,
    write_frames_folder,
    write_npy_clip,
)

from onnxcfp.batch import MANIFEST, batch_explain, discover_clips, folder_name, verify_clip_folder
from onnxcfp.batch.store import write_manifest
from onnxcfp.errors import ConfigError

TESTS_DIR = Path(__file__).parent


def _dataset(root: Path) -> dict[str, np.ndarray]:
    """Clips by id: .npy files (nested), one frames folder, and one corrupt .mp4."""
    clips = {
        "a.npy": write_npy_clip(root / "a.npy", 1),
        "sub/b.npy": write_npy_clip(root / "sub" / "b.npy", 2),
        "sub/deeper/c.npy": write_npy_clip(root / "sub" / "deeper" / "c.npy", 3),
        "frames_d": write_frames_folder(root / "frames_d", 4),
    }
    write_corrupt_video(root / "sub" / "broken.mp4")
    (root / "notes.txt").write_text("not a clip")
    return clips


def _no_leftovers(out: Path) -> None:
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def _check_outputs(out: Path, clips: dict[str, np.ndarray]) -> None:
    """Each clip folder holds the mean the fake explainer must produce, re-derived from the clip itself."""
    for cid, frames in clips.items():
        folder = out / folder_name(cid)
        np.testing.assert_array_equal(np.load(folder / "mean.npy"), expected_mean(frames))
        manifest = json.loads((folder / MANIFEST).read_text())
        assert sorted(f["path"] for f in manifest["files"]) == ["mean.npy", "nested/info.json"]


def test_discovery_recurses_names_safely_and_rejects_nothing_found(tmp_path: Path) -> None:
    write_npy_clip(tmp_path / "in" / "a b.npy", 1)
    write_npy_clip(tmp_path / "in" / "a_b.npy", 2)  # same safe name as "a b.npy"
    write_frames_folder(tmp_path / "in" / "x" / "frames", 3, frames=2)
    write_npy_clip(tmp_path / "in" / "x" / "frames" / "ignored_inside_frames_folder.npy", 4)
    write_npy_clip(tmp_path / "in" / "q.npy", 5)
    write_npy_clip(tmp_path / "other" / "q.npy", 6)  # same id from a second input
    jobs = discover_clips([tmp_path / "in", tmp_path / "other"])
    ids = [j.clip for j in jobs]
    assert ids == ["a b.npy", "a_b.npy", "in0/q.npy", "x/frames", "other1/q.npy"]
    assert [j.kind for j in jobs] == ["array", "array", "array", "frames", "array"]
    names = [j.name for j in jobs]
    assert len(set(names)) == len(names) and not any(n.startswith(".") or "/" in n for n in names)
    assert names[0].startswith("a_b.npy-") and names[1].startswith("a_b.npy-")
    assert names[2:] == ["in0__q.npy", "x__frames", "other1__q.npy"]
    # deterministic: the same inputs give the same names (resume depends on it)
    assert [j.name for j in discover_clips([tmp_path / "in", tmp_path / "other"])] == names
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no clips"):
        discover_clips([tmp_path / "empty"])


def test_manifest_verification_detects_any_change(tmp_path: Path) -> None:
    write_npy_clip(tmp_path / "a.npy", 1)
    (job,) = discover_clips([tmp_path / "a.npy"])
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.bin").write_bytes(b"0123456789")
    (folder / "sub" / "y.txt").write_text("hello")
    from onnxcfp.batch.pipeline import failed_summary

    summary = failed_summary(job, "placeholder summary for the manifest")
    write_manifest(folder, job, {"k": 1}, summary)
    assert verify_clip_folder(folder, job, {"k": 1}) == summary
    assert verify_clip_folder(folder, job, {"k": 2}) is None  # other options/model
    (folder / "x.bin").write_bytes(b"0123456780")  # same size, one byte changed: sha256 catches it
    assert verify_clip_folder(folder, job, {"k": 1}) is None
    (folder / "x.bin").write_bytes(b"0123456789")
    assert verify_clip_folder(folder, job, {"k": 1}) == summary
    (folder / "sub" / "y.txt").unlink()
    assert verify_clip_folder(folder, job, {"k": 1}) is None


def test_local_batch_records_corrupt_clip_and_finishes_the_rest_then_resumes(tmp_path: Path) -> None:
    clips = _dataset(tmp_path / "in")
    out = tmp_path / "out"
    log = tmp_path / "builds.log"
    pipe = FakePipeline(build_log=str(log))
    report = batch_explain(pipe, tmp_path / "in", out, workers=2, progress=False)

    by_id = {c.clip: c for c in report.clips}
    assert set(by_id) == {*clips, "sub/broken.mp4"}
    broken = by_id.pop("sub/broken.mp4")
    assert broken.status == "failed" and "\n" not in broken.error and "broken.mp4" in broken.error
    assert all(c.status == "ok" for c in by_id.values())
    assert report.exit_code == 1
    _check_outputs(out, clips)
    assert not (out / folder_name("sub/broken.mp4")).exists()
    _no_leftovers(out)
    # one state per worker process, not one per clip
    assert len(log.read_text().split()) == 2

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["clip"] for r in rows] == [c.clip for c in report.clips]
    row = {r["clip"]: r for r in rows}["sub/b.npy"]
    assert row["status"] == "ok" and row["kept:conv1"] == "4" and row["kept_total"] == "6"
    assert row["predicted"] == str(int(np.argmax(expected_mean(clips["sub/b.npy"]))))
    doc = json.loads((out / "summary.json").read_text())
    assert doc["finished"] is True and doc["counts"] == {"ok": 4, "failed": 1}

    # Resume: verified folders are skipped, the failed clip is tried again; a tampered folder is redone.
    tampered = out / folder_name("sub/b.npy") / "mean.npy"
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"\x01")
    again = batch_explain(pipe, tmp_path / "in", out, workers=1, resume=True, progress=False)
    status = {c.clip: c.status for c in again.clips}
    assert status == {"a.npy": "skipped", "sub/deeper/c.npy": "skipped", "frames_d": "skipped",
                      "sub/b.npy": "ok", "sub/broken.mp4": "failed"}
    _check_outputs(out, clips)
    # other options (fingerprint) invalidate every folder
    third = batch_explain(FakePipeline(tag="other"), tmp_path / "in", out, resume=True, progress=False)
    assert {c.status for c in third.clips if c.clip != "sub/broken.mp4"} == {"ok"}


def test_raising_clip_is_one_line_and_fail_fast_stops(tmp_path: Path) -> None:
    for i in range(4):
        write_npy_clip(tmp_path / "in" / f"c{i}.npy", i)
    # progress=True drives the rich bar (to stderr; not a TTY here) through the whole run
    report = batch_explain(FakePipeline(raise_on="c1"), tmp_path / "in", tmp_path / "out", progress=True)
    errors = {c.clip: c.error for c in report.clips if c.status == "failed"}
    assert errors == {"c1.npy": "ValueError: deliberate failure for c1.npy second line"}
    assert report.count("ok") == 3
    stopped = batch_explain(
        FakePipeline(raise_on="c1"), tmp_path / "in", tmp_path / "out2", fail_fast=True, progress=False
    )
    assert [c.clip for c in stopped.clips] == ["c0.npy", "c1.npy"] and stopped.exit_code == 1
    assert not (tmp_path / "out2" / "c2.npy").exists()


def test_dead_worker_loses_only_its_clip_which_is_retried(tmp_path: Path) -> None:
    clips = {f"c{i}.npy": write_npy_clip(tmp_path / "in" / f"c{i}.npy", i) for i in range(4)}
    marker = tmp_path / "died"
    pipe = FakePipeline(die_on="c2", die_once_marker=str(marker))
    report = batch_explain(pipe, tmp_path / "in", tmp_path / "out", workers=2, progress=False)
    assert marker.exists()  # the worker really died once
    assert {c.clip: (c.status, c.attempts) for c in report.clips}["c2.npy"] == ("ok", 2)
    assert report.count("ok") == 4
    _check_outputs(tmp_path / "out", clips)
    _no_leftovers(tmp_path / "out")
    # a clip that kills every worker that touches it: bounded retries, then recorded failed
    always = batch_explain(
        FakePipeline(die_on="c2"), tmp_path / "in", tmp_path / "out3", max_retries=1, progress=False
    )
    c2 = {c.clip: c for c in always.clips}["c2.npy"]
    assert c2.status == "failed" and c2.attempts == 2 and "died" in c2.error
    assert always.count("ok") == 3


_INTERRUPTIBLE = textwrap.dedent(
    """
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    sys.path.insert(0, {tests!r})
    from test_batch_support import FakePipeline
    from onnxcfp.batch import batch_explain
    try:
        batch_explain(FakePipeline(sleep={sleep}), {inputs!r}, {out!r}, workers=2, resume=True,
                      progress=False)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


def test_sigint_keeps_finished_clips_and_resume_does_each_clip_once(tmp_path: Path) -> None:
    n = 12
    clips = {f"c{i:02d}.npy": write_npy_clip(tmp_path / "in" / f"c{i:02d}.npy", i) for i in range(n)}
    out = tmp_path / "out"
    script = _INTERRUPTIBLE.format(
        tests=str(TESTS_DIR), sleep=0.25, inputs=str(tmp_path / "in"), out=str(out)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.is_dir() and sum(1 for p in out.glob("c*.npy") if p.is_dir()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130

    _no_leftovers(out)
    first = {p.name for p in out.iterdir() if p.is_dir()}
    assert 3 <= len(first) < n  # interrupted mid-batch, not before or after
    for name in first:  # every folder present is complete (verified against its own manifest)
        (job,) = discover_clips([tmp_path / "in" / name])
        assert verify_clip_folder(out / name, job, FakePipeline().fingerprint()) is not None
    doc = json.loads((out / "summary.json").read_text())
    assert doc["finished"] is False and doc["interrupted"] is True
    assert {c["clip"] for c in doc["clips"]} == first

    report = batch_explain(FakePipeline(), tmp_path / "in", out, workers=2, resume=True, progress=False)
    status = {c.clip: c.status for c in report.clips}
    assert {k for k, s in status.items() if s == "skipped"} == first
    assert {k for k, s in status.items() if s == "ok"} == set(clips) - first
    _check_outputs(out, clips)
    _no_leftovers(out)
    assert os.path.exists(out / "summary.csv")


def test_labels_csv_sets_each_clips_target_and_output_inside_inputs_is_not_a_clip(tmp_path: Path) -> None:
    write_npy_clip(tmp_path / "in" / "a.npy", 1)
    write_npy_clip(tmp_path / "in" / "sub" / "b.npy", 2)
    write_npy_clip(tmp_path / "in" / "c.npy", 3)
    labels = tmp_path / "labels.csv"
    labels.write_text("clip,label\nsub/b,2\na.npy,1\n")  # by id without extension, and by exact id
    out = tmp_path / "in" / "results"  # inside the inputs: its clip folders must not become clips
    write_frames_folder(out / "stale_frames_looking_folder", 9)
    report = batch_explain(FakePipeline(), tmp_path / "in", out, labels=labels, progress=False)
    assert {c.clip: c.target for c in report.clips} == {
        "a.npy": 1,
        "sub/b.npy": 2,
        "c.npy": int(np.argmax(expected_mean(np.load(tmp_path / "in" / "c.npy")))),  # no label: top-1
    }
    with pytest.raises(ConfigError, match="clip"):
        bad = tmp_path / "bad.csv"
        bad.write_text("name,label\nx,1\n")
        batch_explain(FakePipeline(), tmp_path / "in", out, labels=bad, progress=False)
