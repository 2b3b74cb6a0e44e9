"""The explain/demo/zoo commands, driven through typer's runner and as a subprocess, on every input kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from onnxcfp.cli import app
from onnxcfp.datasets import make_clips
from onnxcfp.explain import Explainer, ExplainOptions

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "r3d_basic_legacy.onnx"
runner = CliRunner()


@pytest.fixture(scope="module")
def clip_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same generated clip as a video, a folder of PNG frames and an .npy array."""
    folder = tmp_path_factory.mktemp("clips")
    frames = make_clips(1, seed=3).frames[0]
    npy = folder / "clip.npy"
    np.save(npy, frames)
    frames_dir = folder / "frames"
    frames_dir.mkdir()
    for i, frame in enumerate(frames):
        iio.imwrite(frames_dir / f"f{i}.png", frame)  # natural sort: f2 before f10
    video = folder / "clip.mp4"
    iio.imwrite(video, frames, fps=8, codec="libx264", quality=9, macro_block_size=1)
    return {"npy": npy, "frames": frames_dir, "video": video}


@pytest.mark.parametrize("kind", ["npy", "frames", "video"])
def test_explain_each_input_kind(clip_inputs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(MODEL), str(clip_inputs[kind]), "-o", str(out),
                                 "--formats", "json,html", "--depth", "2"])
    assert result.exit_code == 0, result.output
    assert "top-5" in result.output
    data = json.loads((out / "pyramid.json").read_text())
    assert data["schema"] == "onnxcfp.pyramid/1" and len(data["levels"]) == 2
    assert (out / "report.html").is_file()
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temp files


def test_lossless_inputs_explain_alike(clip_inputs: dict[str, Path]) -> None:
    """The .npy and the PNG folder hold the same pixels, so their explanations agree exactly."""
    explainer = Explainer(MODEL, ExplainOptions(kernel_tubes=False))
    a = explainer.explain(clip_inputs["npy"])
    b = explainer.explain(clip_inputs["frames"])
    assert a.pyramid.to_json()["levels"] == b.pyramid.to_json()["levels"]
    np.testing.assert_array_equal(a.trace.logits, b.trace.logits)


def test_explain_label_by_name_and_bad_label(clip_inputs: dict[str, Path], tmp_path: Path) -> None:
    ok = runner.invoke(app, ["explain", "r3d_basic", str(clip_inputs["npy"]), "-o", str(tmp_path / "a"),
                             "--label", "grow", "--formats", "json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "a" / "pyramid.json").read_text())["class"]["name"] == "grow"
    bad = runner.invoke(app, ["explain", str(MODEL), str(clip_inputs["npy"]), "--label", "dance"])
    assert bad.exit_code == 2
    assert "unknown class name 'dance'" in bad.output


def test_explain_bad_inputs_one_line_exit_2(tmp_path: Path) -> None:
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((5, 64, 64, 3), np.uint8))
    good = tmp_path / "good.npy"
    np.save(good, make_clips(1, seed=2).frames[0])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    cases = [
        (["explain", str(MODEL), str(tmp_path / "missing.mp4")], "does not exist"),
        (["explain", str(MODEL), str(short)], "--loop"),
        (["explain", str(MODEL), str(junk)], "cannot read"),
        (["explain", str(tmp_path / "nope.onnx"), str(short)], "not found"),
        (["explain", str(MODEL), str(good), "--theta", "1.5"], "theta"),
        (["explain", str(MODEL), str(good), "--formats", "mp4,tiff"], "tiff"),
    ]
    for args, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "onnxcfp", *args], capture_output=True, text=True,
                              cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert needle in lines[0]
        assert "Traceback" not in proc.stderr


def test_short_clip_with_loop(tmp_path: Path) -> None:
    short = tmp_path / "short.npy"
    np.save(short, make_clips(1, seed=1).frames[0][:5])
    result = runner.invoke(app, ["explain", str(MODEL), str(short), "--loop", "-o", str(tmp_path / "o"),
                                 "--formats", "json"])
    assert result.exit_code == 0, result.output


def test_demo_writes_all_outputs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "onnxcfp", "demo", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("report.html", "pyramid.json", "pyramid.png", "importance.csv", "clip.mp4"):
        assert (out / name).is_file(), name
    assert list(out.glob("level1*.mp4")) and list(out.glob("level1*.gif"))


def test_zoo_lists_models() -> None:
    result = runner.invoke(app, ["zoo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "r3d_basic_legacy" in result.output
