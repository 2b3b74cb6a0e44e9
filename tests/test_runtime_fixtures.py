"""Shared helpers for the runtime/augment tests: tiny 3D ResNets, hand-made ModelGraphs, oracles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcfp.graph.head import ClassifierHead
from onnxcfp.graph.modelgraph import ModelGraph, VideoInput

ROOT = Path(__file__).resolve().parents[1]

# Tolerance of ORT (float32, fused kernels) against onnx's reference evaluator, relative to the tensor's
# largest magnitude: float32 convs summing a few hundred products differ by ~1e-6 relative.
REF_RTOL = 1e-4


def load_r3d():
    """benchmarks/r3d.py as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location("r3d", ROOT / "benchmarks" / "r3d.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_r3d(batch: int | str = "N", fold_bn: bool = False, num_classes: int = 5, seed: int = 0):
    """A 2-stage r3d_18-style net (BN, ReLU, residual adds, strided projection) on 3x4x16x16 clips."""
    return load_r3d().build_r3d18(
        num_classes=num_classes, frames=4, size=16, batch=batch, width=4, blocks=(1, 1), seed=seed,
        fold_bn=fold_bn,
    )


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    shapes = {}
    g = model.graph
    for vi in (*g.value_info, *g.input, *g.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in vi.type.tensor_type.shape.dim
            )
    return shapes


def graph_of(
    model: onnx.ModelProto,
    features: str | None = "layer2.0.out",
    logits: str = "logits",
    layout: str = "NCTHW",
) -> ModelGraph:
    """A ModelGraph for a model whose first input is the clip: only what the runtime reads is filled in
    (no conv layers). With ``features`` the head is a Gemm named "fc" (as r3d.py writes it); without,
    there is no head and the runtime reads the model's first output as the class scores."""
    model = onnx.shape_inference.infer_shapes(model)
    vin = model.graph.input[0]
    shapes = _shapes(model)
    head = None
    if features is not None:
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        head = ClassifierHead(
            kind="gemm", nodes=("fc",), features=features, logits=logits,
            num_classes=int(shapes[logits][1]), weight=inits.get("fc.weight"), bias=inits.get("fc.bias"),
        )
    return ModelGraph(
        model=model, source="<test>",
        video_input=VideoInput(vin.name, layout, shapes[vin.name], vin.type.tensor_type.elem_type),
        layers=(), head=head, shapes=shapes,
    )


class MaxPool(OpRun):  # the class name is the op type it overrides
    """MaxPool restated naively for the reference evaluator, whose own 3-D MaxPool raises IndexError
    (onnx 1.23) on padded pools: pad with -inf, then the max over every (dilated) kernel offset."""

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        assert auto_pad in (None, "NOTSET", b"NOTSET") and not ceil_mode, "only explicit pads, floor mode"
        rank = len(kernel_shape)
        dilations = dilations or [1] * rank
        strides = strides or [1] * rank
        pads = pads or [0] * (2 * rank)
        padded = np.pad(x, [(0, 0), (0, 0), *zip(pads[:rank], pads[rank:], strict=True)],
                        constant_values=-np.inf)
        out_sizes = [
            (padded.shape[2 + i] - ((kernel_shape[i] - 1) * dilations[i] + 1)) // strides[i] + 1
            for i in range(rank)
        ]
        result = np.full((*x.shape[:2], *out_sizes), -np.inf, dtype=x.dtype)
        for offset in np.ndindex(*kernel_shape):
            window = tuple(
                slice(o * d, o * d + (n - 1) * s + 1, s)
                for o, d, n, s in zip(offset, dilations, out_sizes, strides, strict=True)
            )
            result = np.maximum(result, padded[(slice(None), slice(None), *window)])
        return (result,)


def reference(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]) -> dict:
    """onnx's reference evaluator on the ORIGINAL model, reading intermediate tensors by name."""
    values = ReferenceEvaluator(model, new_ops=[MaxPool]).run(names, feeds)
    return dict(zip(names, values, strict=True))


def plain_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The unmodified model's outputs from a fresh onnxruntime CPU session."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close_to_reference(got: np.ndarray, ref: np.ndarray, name: str) -> None:
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != reference {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=REF_RTOL, atol=REF_RTOL * scale, err_msg=name)


def clip_batch(n: int, shape=(3, 4, 16, 16), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_tiny_r3d_is_a_residual_net_that_the_reference_evaluator_runs():
    model = tiny_r3d()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Add") == 2 and ops.count("Conv") == 6 and "BatchNormalization" in ops
    x = clip_batch(2)
    (logits,) = plain_ort(model, {"video": x})
    ref = reference(model, ["logits"], {"video": x})["logits"]
    assert logits.shape == (2, 5) and np.abs(logits).max() > 1e-3
    assert_close_to_reference(logits, ref, "logits")


def test_naive_maxpool_matches_onnxruntime_on_padded_strided_3d_pools():
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 9, 8)).astype(np.float32)
    for kernel, strides, pads in [([3, 3, 3], [1, 1, 1], [1] * 6), ([1, 3, 3], [1, 2, 2], [0, 1, 1, 0, 1, 1]),
                                  ([2, 2, 2], [2, 2, 2], [0] * 6)]:
        node = onnx.helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=kernel, strides=strides, pads=pads)
        graph = onnx.helper.make_graph(
            [node], "pool", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10)
        (want,) = plain_ort(model, {"x": x})
        np.testing.assert_array_equal(reference(model, ["y"], {"x": x})["y"], want)
