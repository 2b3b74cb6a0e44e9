"""``onnxcfp batch`` end to end with a zoo model: a corrupt video is reported and the rest finish (typer
runner); Ctrl-C on the real command (subprocess) keeps finished clips, and --resume does each clip once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch_support import write_corrupt_video
from typer.testing import CliRunner

from onnxcfp.batch import MANIFEST, discover_clips, verify_clip_folder

MODEL = Path(__file__).resolve().parents[1] / "models" / "r3d_basic_legacy.onnx"
# The child must react to Ctrl-C even when the test runner was started where SIGINT is ignored (a shell's
# background job): Python only installs its KeyboardInterrupt handler when SIGINT is at its default.
RUN_CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from onnxcfp.cli import app; sys.argv[0] = 'onnxcfp'; app()"
)
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="model zoo not built")


def _write_clips(root: Path, n: int, seed: int) -> list[str]:
    from onnxcfp.datasets import make_clips

    root.mkdir(parents=True, exist_ok=True)
    data = make_clips(n, seed=seed)
    for i, frames in enumerate(data.frames):
        np.save(root / f"clip{i:02d}.npy", frames)
    return [f"clip{i:02d}.npy" for i in range(n)]


def test_cli_batch_reports_corrupt_video_and_finishes_the_rest(tmp_path: Path) -> None:
    from onnxcfp.cli import app

    ids = _write_clips(tmp_path / "in", 3, seed=3)
    write_corrupt_video(tmp_path / "in" / "bad" / "broken.mp4")
    out = tmp_path / "out"
    args = ["batch", str(MODEL), str(tmp_path / "in"), "-o", str(out), "--formats", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "failed: bad/broken.mp4" in result.output and "3 ok" in result.output
    doc = json.loads((out / "summary.json").read_text())
    assert doc["counts"] == {"ok": 3, "failed": 1} and doc["finished"] is True
    for cid in ids:  # each explained clip has a pyramid in a verified folder
        assert json.loads((out / cid / "pyramid.json").read_text())["schema"] == "onnxcfp.pyramid/1"
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 1 and "3 skipped" in again.output and "1 failed" in again.output


def test_cli_batch_sigint_then_resume_does_every_clip_once(tmp_path: Path) -> None:
    from onnxcfp.cli import app

    ids = _write_clips(tmp_path / "in", 20, seed=5)
    out = tmp_path / "out"
    args = ["batch", str(MODEL), str(tmp_path / "in"), "-o", str(out), "--formats", "json,stack"]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for p in out.glob("clip*") if p.is_dir()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output

    first = {p.name for p in out.iterdir() if p.is_dir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half outputs
    assert 2 <= len(first) < len(ids)
    fingerprint = json.loads((out / next(iter(first)) / MANIFEST).read_text())["fingerprint"]
    for name in first:
        (job,) = discover_clips([tmp_path / "in" / name])
        assert verify_clip_folder(out / name, job, fingerprint) is not None

    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "summary.json").read_text())["clips"]
    assert sorted(r["clip"] for r in rows) == ids  # every clip exactly once in the summary
    assert {r["clip"] for r in rows if r["status"] == "skipped"} == first
    assert {r["clip"] for r in rows if r["status"] == "ok"} == set(ids) - first
