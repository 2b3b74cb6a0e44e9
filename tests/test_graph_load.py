"""Model loading, video input, conv layers and classifier head, on models built with onnx.helper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_builders as builders
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcfp.errors import (
    ModelLoadError,
    NoConvError,
    NoVideoInputError,
    OnnxcfpError,
    UnsafeExternalDataError,
)
from onnxcfp.graph import ConvKind, classify_kind, load_graph, load_model, max_ir_version_supported


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ---- loading --------------------------------------------------------------------------------------
def test_path_bytes_and_proto_load_the_same_and_proto_is_not_modified(tmp_path: Path) -> None:
    model = builders.plain_chain()
    model.ir_version = onnx.IR_VERSION  # what onnx >= 1.23 writes
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    before = model.SerializeToString()
    loaded = [load_model(path), load_model(str(path)), load_model(path.read_bytes()), load_model(model)]
    assert model.SerializeToString() == before
    for m in loaded:
        assert m.ir_version == min(onnx.IR_VERSION, max_ir_version_supported())
        assert len(m.graph.value_info) > 0  # shapes inferred
        # the lowered model really runs in the installed onnxruntime
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_ir_version_is_lowered_only_when_onnxruntime_refuses_it() -> None:
    limit = max_ir_version_supported()
    # the probe agrees with onnxruntime itself: one above the limit is refused
    if limit < onnx.IR_VERSION:
        m = builders.plain_chain()
        m.ir_version = limit + 1
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error types
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    m = builders.plain_chain()
    m.ir_version = 8
    assert load_model(m).ir_version == 8


def test_bad_inputs_are_typed_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "missing.onnx")
    assert "not found" in _one_line(err)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelLoadError) as err:
        load_model(text)
    _one_line(err)
    full = builders.plain_chain().SerializeToString()
    for cut in (len(full) // 3, len(full) // 2, len(full) - 7):
        trunc = tmp_path / f"trunc{cut}.onnx"
        trunc.write_bytes(full[:cut])
        with pytest.raises(ModelLoadError) as err:
            load_model(trunc)
        _one_line(err)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path)  # a folder


def test_opset_outside_range_is_refused() -> None:
    m = builders.plain_chain()
    m.opset_import[0].version = 9
    with pytest.raises(ModelLoadError, match="opset 9"):
        load_model(m)


def test_no_video_input_and_no_conv() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])
    g4 = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g", [x], [y], [w]
    )
    with pytest.raises(NoVideoInputError) as err:
        load_graph(helper.make_model(g4, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]))
    assert "5-D" in _one_line(err)
    x5 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 8, 8])
    y5 = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 5)
    g5 = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x5], [y5])
    with pytest.raises(NoConvError) as err:
        load_graph(helper.make_model(g5, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]))
    _one_line(err)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)  # onnx.save(save_as_external_data=True) rewrites the model it is given
    return out


def _save_external(model: onnx.ModelProto, folder: Path, location: str) -> Path:
    onnx.save(
        _copy(model),
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    m = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "m.onnx"
    onnx.save(m, str(path))
    return path


def test_external_data_inside_folder_loads_and_matches(tmp_path: Path) -> None:
    model = builders.plain_chain()
    path = _save_external(model, tmp_path, "weights.bin")
    graph = load_graph(path)
    ref = load_graph(model)
    for a, b in zip(graph.layers, ref.layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
    with pytest.raises(ModelLoadError, match="file path"):
        load_model(path.read_bytes())


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "missing"])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, kind: str) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    model = builders.plain_chain()
    onnx.save(
        _copy(model),
        str(tmp_path / "real.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="outside.bin",
        size_threshold=0,
    )
    location = {
        "dotdot": "../outside.bin",
        "absolute": str(tmp_path / "outside.bin"),
        "symlink": "link.bin",
        "missing": "nowhere.bin",
    }[kind]
    if kind == "symlink":
        os.symlink(tmp_path / "outside.bin", inner / "link.bin")
    path = _save_external(model, inner, location)
    expected = ModelLoadError if kind == "missing" else UnsafeExternalDataError
    with pytest.raises(expected) as err:
        load_model(path)
    _one_line(err)


# ---- input, layers, head --------------------------------------------------------------------------
def test_video_input_layout_and_symbolic_dims() -> None:
    g = load_graph(builders.plain_chain(batch="N"))
    assert g.video_input.layout == "NCTHW" and g.video_input.shape == ("N", 3, 4, 8, 8)
    assert g.video_input.dim("C") == 3 and g.video_input.dim("N") == "N"
    g = load_graph(builders.nthwc_tf_style())
    assert g.video_input.layout == "NTHWC" and g.video_input.dim("C") == 3 and g.video_input.dim("T") == 4


@pytest.mark.parametrize(
    ("shape", "groups", "kind"),
    [
        ((8, 8, 3, 3, 3), 1, ConvKind.FULL3D),
        ((8, 2, 3, 3, 3), 4, ConvKind.GROUPED),
        ((8, 1, 3, 3, 3), 8, ConvKind.DEPTHWISE),
        ((8, 8, 1, 1, 1), 1, ConvKind.POINTWISE),
        ((8, 8, 1, 3, 3), 1, ConvKind.SPATIAL),
        ((8, 8, 3, 1, 1), 1, ConvKind.TEMPORAL),
        ((8, 8, 3, 3), 1, ConvKind.CONV2D),
        ((8, 4, 1, 1, 1), 2, ConvKind.GROUPED),
    ],
)
def test_classify_kind(shape: tuple[int, ...], groups: int, kind: ConvKind) -> None:
    assert classify_kind(shape, groups) is kind


@pytest.mark.parametrize("weights", ["constant", "dq", "cast"])
def test_weights_through_constant_dequantize_and_cast_chains(weights: str) -> None:
    model = builders.plain_chain(weights=weights)
    graph = load_graph(model)
    names = [
        next(n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.name == layer.name)
        for layer in graph.layers
    ]
    # oracle: onnxruntime evaluates the weight tensor the Conv node really reads
    values = builders.run(builders.expose(model, names), np.zeros(builders.CLIP_SHAPE, np.float32), names)
    for layer, value in zip(graph.layers, values.values(), strict=True):
        np.testing.assert_allclose(layer.weight, value, rtol=1e-6, atol=1e-7)
        assert layer.weight.dtype == np.float32


def test_layers_fields_and_conv_depth() -> None:
    g = load_graph(builders.resnet_blocks(grouped=True))
    names = [layer.name for layer in g.layers]
    assert len(set(names)) == len(names) and [layer.index for layer in g.layers] == list(range(len(names)))
    grouped = [layer for layer in g.layers if layer.kind is ConvKind.GROUPED]
    assert [layer.groups for layer in grouped] == [4, 4] and grouped[0].channels_per_group == 2
    proj = g.layer("proj")
    assert proj.conv_depth == 4 and proj.strides == (1, 2, 2) and proj.output_shape == (1, 12, 4, 4, 4)
    assert max(layer.conv_depth for layer in g.layers) == 5


@pytest.mark.parametrize(
    ("name", "kind"),
    [("plain_chain", "gemm"), ("fibres", "matmul"), ("inception", "conv1x1"), ("nthwc_tf_style", "matmul")],
)
def test_linear_head_weight_reproduces_logits(name: str, kind: str) -> None:
    """Oracle: onnxruntime's logits equal W · mean(F over T,H,W) + b for the head's W, b."""
    model = builders.ALL_BUILDERS[name]()
    graph = load_graph(model)
    head = graph.head
    assert head is not None and head.kind == kind and head.linear and head.num_classes == 5
    clip = np.random.default_rng(0).normal(size=builders.CLIP_SHAPE).astype(np.float32)
    if graph.video_input.layout == "NTHWC":
        clip = np.ascontiguousarray(clip.transpose(0, 2, 3, 4, 1))
    out = builders.run(
        builders.expose(graph.model, [head.features, head.logits]), clip, [head.features, head.logits]
    )
    axis = graph.flow.channel_axis(head.features)
    feats = np.moveaxis(out[head.features], axis, 1)
    pooled = feats.reshape(feats.shape[0], feats.shape[1], -1).mean(axis=2)
    assert head.weight.shape == (5, pooled.shape[1])
    np.testing.assert_allclose(
        pooled @ head.weight.T + head.bias, out[head.logits].reshape(1, -1), rtol=1e-4, atol=1e-5
    )
    if name == "plain_chain":
        assert head.softmax_output is not None


def test_mlp_head_is_reported_as_such() -> None:
    graph = load_graph(builders.x3d_like())
    assert graph.head.kind == "mlp" and not graph.head.linear and graph.head.weight is None
    assert graph.explainable


def test_every_error_is_one_line_onnxcfp_error() -> None:
    assert issubclass(UnsafeExternalDataError, OnnxcfpError)
