"""`onnxcfp inspect`: tables, --json, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import onnx_builders as builders
import pytest
from typer.testing import CliRunner

from onnxcfp.cli import app
from onnxcfp.graph import load_graph

runner = CliRunner()


def _inspect(*args: str):
    return runner.invoke(app, ["inspect", *args])


def test_json_describes_layers_merges_and_head(tmp_path: Path) -> None:
    path = tmp_path / "fibres.onnx"
    onnx.save(builders.fibres(), str(path))
    result = _inspect(str(path), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    graph = load_graph(path)
    assert info["schema"] == "onnxcfp.inspect/1" and info["explainable"] is True and info["problems"] == []
    assert info["input"] == {"name": "clip", "layout": "NCTHW", "shape": [1, 3, 4, 8, 8]}
    assert [layer["name"] for layer in info["layers"]] == [layer.name for layer in graph.layers]
    assert [layer["kind"] for layer in info["layers"]] == [
        "3d",
        "spatial",
        "temporal",
        "grouped",
        "pointwise",
        "3d",
    ]
    assert len(info["residual_adds"]) == 1 and info["channel_concats"] == ["concat"]
    assert len(info["channel_splits"]) == 2  # the Split of the stem, the Slice after the shuffle
    assert info["head"]["kind"] == "matmul" and info["head"]["num_classes"] == 5
    assert info["head"]["feature_channels"] == 5


def test_table_output_and_unexplainable_model(tmp_path: Path) -> None:
    path = tmp_path / "odd.onnx"
    onnx.save(builders.model_with_op("Tile"), str(path))
    result = _inspect(str(path))
    assert result.exit_code == 0
    assert "Conv layers" in result.stdout and "explainable: no" in result.stdout and "Tile" in result.stdout


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "text.onnx"
    text.write_text("not a model at all\n" * 10)
    full = builders.plain_chain().SerializeToString()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(full[: len(full) // 2])
    no5d = tmp_path / "no5d.onnx"
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    onnx.save(
        helper.make_model(
            helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x4], [y4], [w]),
            ir_version=10,
            opset_imports=[helper.make_opsetid("", 17)],
        ),
        str(no5d),
    )
    noconv = tmp_path / "noconv.onnx"
    x5 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 8, 8])
    y5 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 5)
    onnx.save(
        helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x5], [y5]),
            ir_version=10,
            opset_imports=[helper.make_opsetid("", 17)],
        ),
        str(noconv),
    )
    folder = tmp_path / "escape"
    folder.mkdir()
    m = builders.plain_chain()
    onnx.save(
        m,
        str(tmp_path / "outside.onnx"),
        save_as_external_data=True,
        location="outside.bin",
        size_threshold=0,
    )
    escaped = onnx.load(str(tmp_path / "outside.onnx"), load_external_data=False)
    for t in escaped.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(escaped, str(folder / "m.onnx"))
    return {
        "text": text,
        "truncated": trunc,
        "no5d": no5d,
        "noconv": noconv,
        "escape": folder / "m.onnx",
        "missing": tmp_path / "missing.onnx",
    }


@pytest.mark.parametrize("case", ["text", "truncated", "no5d", "noconv", "escape", "missing"])
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path: Path, case: str) -> None:
    path = _bad_inputs(tmp_path)[case]
    result = _inspect(str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    """The installed entry point (python -m onnxcfp.cli would skip it): one real process, exit 2."""
    env = {**os.environ, "COLUMNS": "120"}
    code = "from onnxcfp.cli import app; app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "inspect", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: model file not found")
