"""Every zoo model: class scores unchanged by exposing tensors, exposed tensors equal the reference
evaluator's (tolerance REF_RTOL of the tensor's largest magnitude, see test_runtime_fixtures)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_runtime_fixtures import ROOT, assert_close_to_reference, plain_ort, reference

from onnxcfp import runtime
from onnxcfp.graph.modelgraph import ModelGraph
from onnxcfp.runtime import RuntimeConfig, run

ZOO = sorted((ROOT / "models").glob("*.onnx"))
CPU1 = RuntimeConfig(provider="cpu", intra_threads=1)


def _zoo_graph(path) -> ModelGraph:
    try:
        from onnxcfp.graph import load_graph
    except ImportError:  # the graph package's __init__ not written yet
        from onnxcfp.graph.modelgraph import load_graph
    graph = load_graph(path)
    assert graph.head is not None, graph.problems
    return graph


def _conv_tensors(model: onnx.ModelProto) -> list[str]:
    """Every Conv's data input and output, read off the nodes (not from the graph layer under test)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    return list(dict.fromkeys(t for n in convs for t in (n.input[0], n.output[0])))


def test_zoo_is_present():
    assert ZOO, "models/*.onnx missing: run python models/build_zoo.py"


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_model_exposed_tensors_match_reference(path):
    graph = _zoo_graph(path)
    tensors = [*_conv_tensors(graph.model), graph.head.features]
    vin = graph.video_input
    shape = tuple(2 if i == 0 else d for i, d in enumerate(vin.shape))  # two clips: batched or one by one
    assert all(isinstance(d, int) for d in shape), f"zoo input shape should be static: {vin.shape}"
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    trace = run(graph, x, activations=tensors, config=CPU1)
    # the memory report must size what the run really returned (mfnet_legacy hides sizes from onnx's
    # own shape inference behind Shape->Gather->Slice paths)
    assert runtime.exposed_bytes(graph, tensors, x.shape) == sum(a.nbytes for a in trace.activations.values())

    logits_name = runtime.logits_tensor(graph)
    for i in range(2):
        one = x[i : i + 1]
        plain = plain_ort(onnx.load(path), {vin.name: one})
        ref = reference(graph.model, [logits_name, *tensors], {vin.name: one})
        if logits_name == onnx.load(path).graph.output[0].name:
            # 1e-5 relative to the logits' scale: trained logits reach ~50, where one float32 ulp is 4e-6
            # and exposing tensors changes which kernels onnxruntime fuses (so the summation order).
            want = plain[0].reshape(1, -1)
            assert np.abs(trace.logits[i : i + 1] - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
        assert_close_to_reference(trace.logits[i : i + 1], ref[logits_name].reshape(1, -1), "logits")
        for name in tensors:
            assert_close_to_reference(trace.activations[name][i : i + 1], ref[name], name)


@pytest.mark.parametrize("path", ZOO, ids=[p.stem for p in ZOO])
def test_zoo_model_feature_gradients_satisfy_the_linear_head_identity(path):
    """For a linear head, logit_c − bias_c = Σ_k W[c,k]·pool(F_k) = Σ_k pool(∂logit_c/∂F_k)·pool(F_k)·|F_k|
    where |F_k| is the number of positions pooled (pyramid.md's self-check), for every clip."""
    graph = _zoo_graph(path)
    head = graph.head
    if not head.linear:
        pytest.skip(f"{head.kind} head is not linear")
    vin = graph.video_input
    shape = tuple(2 if i == 0 else d for i, d in enumerate(vin.shape))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    trace = run(graph, x, activations=[head.features], gradients=[head.features], config=CPU1)
    feats, grads = trace.activations[head.features], trace.gradients[head.features]
    channel_axis = 1 if vin.layout == "NCTHW" else feats.ndim - 1
    spatial = tuple(a for a in range(1, feats.ndim) if a != channel_axis)
    positions = np.prod([feats.shape[a] for a in spatial])
    explained = (grads.mean(axis=spatial) * feats.mean(axis=spatial)).sum(axis=1) * positions
    bias = head.bias if head.bias is not None else np.zeros(head.num_classes, np.float32)
    want = trace.logits[np.arange(2), trace.target] - bias[trace.target]
    np.testing.assert_allclose(explained, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
