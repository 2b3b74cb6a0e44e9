"""Golden-file regression: an untouched model passes, a deliberately perturbed weight is detected (exit 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from onnxcfp.cli import app
from onnxcfp.regress import Tolerances, regress

ROOT = Path(__file__).resolve().parents[1]
NAME = "r3d_basic_legacy"
runner = CliRunner()


@pytest.fixture()
def zoo(tmp_path: Path) -> Path:
    """A one-model zoo with freshly written golden files next to it."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copy(ROOT / "models" / f"{NAME}{suffix}", folder / f"{NAME}{suffix}")
    result = runner.invoke(app, ["regress", str(folder), "--golden", str(tmp_path / "golden"), "--update",
                                 "--report", str(tmp_path / "update.json")])
    assert result.exit_code == 0, result.output
    return folder


def _perturb_conv_weight(model_path: Path, scale: float) -> None:
    """Add noise of ``scale`` × the weight's std to the widest conv weight (a real change of the model)."""
    model = onnx.load(model_path)
    convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = [i for i in model.graph.initializer if i.name in convs]
    target = max(inits, key=lambda i: int(np.prod(i.dims)))
    w = numpy_helper.to_array(target)
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype) * w.std() * scale
    target.CopyFrom(numpy_helper.from_array(w + noise, target.name))
    onnx.save(model, model_path)


def test_untouched_model_passes(zoo: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["regress", str(zoo), "--golden", str(tmp_path / "golden"),
                                 "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["drifted"] is False and data["models"][0]["worst_jaccard"] == 1.0


def test_perturbed_weight_is_detected(zoo: Path, tmp_path: Path) -> None:
    _perturb_conv_weight(zoo / f"{NAME}.onnx", scale=0.5)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["regress", str(zoo), "--golden", str(tmp_path / "golden"),
                                 "--report", str(report)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "drift:" in result.output
    drifts = json.loads(report.read_text())["models"][0]["drifts"]
    assert {d["what"] for d in drifts} & {"kept", "tube", "prediction", "target"}


def test_tiny_numeric_noise_is_tolerated(zoo: Path, tmp_path: Path) -> None:
    """A change far below float32 precision of the explanation (1e-7 of the weights' std) is not drift."""
    _perturb_conv_weight(zoo / f"{NAME}.onnx", scale=1e-7)
    assert not regress(zoo, tmp_path / "golden", tolerances=Tolerances()).drifted


def test_missing_golden_is_drift_and_bad_folders_are_errors(zoo: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_golden"
    empty.mkdir()
    report = regress(zoo, empty)
    assert report.drifted and report.models[0].drifts[0].what == "missing"
    result = runner.invoke(app, ["regress", str(tmp_path / "nowhere"), "--golden", str(empty)])
    assert result.exit_code == 2 and "does not exist" in result.output
