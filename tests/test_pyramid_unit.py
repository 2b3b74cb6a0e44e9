"""Pyramid selection on hand-made graphs: groups, depthwise pass-through, NaN-free edge cases, the
gradient self-check, tubes against a direct re-statement, JSON round trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from pyramid_naive import naive_pyramid

from onnxcfp.errors import ConfigError, GradientCheckError
from onnxcfp.graph import ChannelSource, ModelGraph
from onnxcfp.graph.channels import ChannelMap
from onnxcfp.graph.head import ClassifierHead
from onnxcfp.graph.layers import ConvKind, ConvLayer
from onnxcfp.graph.modelgraph import VideoInput
from onnxcfp.pyramid import (
    Pyramid,
    build_pyramid,
    frame_importance,
    kernel_tube,
    level_tubes,
    pyramid_tensors,
)
from onnxcfp.trace import Trace
from onnxcfp.volume import normalise01

T, H, W = 2, 3, 3


class _Flow:
    @staticmethod
    def channel_axis(tensor: str) -> int:
        return 1


@dataclass(frozen=True, eq=False)
class HandGraph(ModelGraph):
    """A ModelGraph whose channel flow is given as a table {tensor: [producer layer or None per channel]}."""

    table: dict = field(default_factory=dict)

    def channel_map(self, tensor: str, residual: str = "branch") -> ChannelMap:
        srcs = self.table[tensor]
        return ChannelMap(tensor, tuple(() if s is None else ((ChannelSource(*s),)) for s in srcs))

    @property
    def flow(self):  # type: ignore[override]
        return _Flow()


def _head_model(feat: str, c: int, k: int, w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("GlobalAveragePool", [feat], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, [1, c, T, H, W])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, k])],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _layer(name, index, inp, out, cin, cout, groups, rng):
    weight = rng.standard_normal((cout, cin // groups, 1, 3, 3)).astype(np.float32)
    kind = (
        ConvKind.DEPTHWISE if cin // groups == 1 else (ConvKind.GROUPED if groups > 1 else ConvKind.SPATIAL)
    )
    return ConvLayer(
        name,
        index,
        inp,
        out,
        weight,
        None,
        (1, 3, 3),
        (1, 1, 1),
        (0, 1, 1, 0, 1, 1),
        (1, 1, 1),
        groups,
        cin,
        cout,
        kind,
        (1, cout, T, H, W),
        index + 1,
    )


def make_case(spec, seed, k=5, acts=None):
    """``spec``: list of (name, cin, cout, groups) in order; layer i reads layer i-1's output (the first
    reads the clip). F is the last layer's output. Returns graph, trace with activations and gradients."""
    rng = np.random.default_rng(seed)
    layers, table, tensors = [], {}, {}
    prev, prev_c = "clip", 3
    table["clip"] = [None] * 3
    for i, (name, cin, cout, groups) in enumerate(spec):
        assert cin == prev_c
        layer = _layer(name, i, prev, f"{name}_out", cin, cout, groups, rng)
        layers.append(layer)
        table[layer.output] = [(name, c) for c in range(cout)]
        prev, prev_c = layer.output, cout
    for t, srcs in table.items():
        tensors[t] = (acts(t, len(srcs)) if acts else rng.standard_normal((1, len(srcs), T, H, W))).astype(
            np.float32
        )
    feat = prev
    w = rng.standard_normal((k, prev_c)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    head = ClassifierHead("gemm", ("gap", "flatten", "gemm"), feat, "logits", k, w, b)
    logits = (w @ tensors[feat][0].reshape(prev_c, -1).mean(1) + b)[None].astype(np.float32)
    grads = {t: rng.standard_normal(a.shape).astype(np.float32) for t, a in tensors.items()}
    target = int(logits[0].argmax())
    grads[feat] = np.broadcast_to(
        (w[target] / (T * H * W))[None, :, None, None, None], tensors[feat].shape
    ).copy()
    graph = HandGraph(
        model=_head_model(feat, prev_c, k, w, b),
        source="hand",
        layers=tuple(layers),
        head=head,
        video_input=VideoInput("clip", "NCTHW", (1, 3, T, H, W), 1),
        shapes={},
        table=table,
    )
    return graph, Trace(logits, tensors, grads, np.asarray([target]), "logit")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    theta=st.sampled_from([0.0, 0.3, 0.6, 1.0]),
    top_n=st.sampled_from([None, 1, 2]),
)
def test_grouped_children_stay_in_their_group(seed, theta, top_n):
    graph, trace = make_case([("a", 3, 8, 1), ("g", 8, 12, 4), ("b", 12, 6, 1)], seed)
    for method in ("weights", "gradients"):
        p = build_pyramid(graph, trace, None, theta, 3, method, top_n=top_n)
        lv3, lv2 = p.level(3), p.level(2)
        for c, par in zip(lv3.edge_child, lv3.edge_parent, strict=True):
            if lv2.node_layer[par] == "g":
                group = int(lv2.node_channel[par]) // 3  # 12 outputs / 4 groups
                assert int(lv3.node_channel[c]) // 2 == group  # 8 inputs / 4 groups
        naive = naive_pyramid(graph, trace, int(trace.target[0]), theta, 3, method, "branch", top_n)
        assert [set(lv.node_ids()) for lv in p.levels] == [{f"{a}:{b}" for a, b in n["nodes"]} for n in naive]


def test_depthwise_passes_through_without_counting_a_level():
    graph, trace = make_case([("z", 3, 4, 1), ("a", 4, 6, 1), ("d", 6, 6, 6), ("b", 6, 5, 1)], 7)
    p = build_pyramid(graph, trace, None, 0.0, 3, "gradients")
    lv2 = p.level(2)
    d_nodes = {int(c) for lay, c in zip(lv2.node_layer, lv2.node_channel, strict=True) if lay == "d"}
    a_nodes = {int(c) for lay, c in zip(lv2.node_layer, lv2.node_channel, strict=True) if lay == "a"}
    assert d_nodes and a_nodes == d_nodes  # every depthwise kernel keeps its single input, same level
    for n in p.nodes(2):
        if n.layer == "a":
            assert [(e.node, e.level, e.score) for e in n.parents] == [(f"d:{n.channel}", 2, 1.0)]
    assert set(p.level(3).node_layer) == {"z"}  # the next real back-step lands one level down
    assert set(p.level(2).tensors) == {"d_out", "a_out"}
    naive = naive_pyramid(graph, trace, int(trace.target[0]), 0.0, 3, "gradients", "branch")
    for lv, nv in zip(p.levels, naive, strict=True):
        assert dict(zip(lv.node_ids(), lv.node_relevance, strict=True)) == pytest.approx(
            {f"{a}:{b}": r for (a, b), r in nv["nodes"].items()}
        )
    # at the last level there is nothing to pass through to
    p2 = build_pyramid(graph, trace, None, 0.0, 2, "gradients")
    assert set(p2.level(2).node_layer) == {"d"}


@pytest.mark.parametrize("normalise", ["max", "original"])
@pytest.mark.parametrize("theta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("case", ["constant", "zero", "single"])
def test_never_nan(case, theta, normalise):
    if case == "constant":
        graph, trace = make_case(
            [("a", 3, 4, 1), ("b", 4, 4, 1)], 1, acts=lambda t, c: np.full((1, c, T, H, W), 2.0)
        )
    elif case == "zero":
        graph, trace = make_case(
            [("a", 3, 4, 1), ("b", 4, 4, 1)], 1, acts=lambda t, c: np.zeros((1, c, T, H, W))
        )
    else:
        graph, trace = make_case([("a", 3, 1, 1), ("b", 1, 1, 1)], 2)
    method = "weights" if normalise == "original" else "gradients"
    if case == "zero" and method == "gradients":
        graph_w = graph
        p = build_pyramid(graph_w, trace, None, theta, 3, "weights", normalise=normalise)
    else:
        p = build_pyramid(graph, trace, None, theta, 3, method, normalise=normalise)
    text = json.dumps(p.to_json(), allow_nan=False)
    json.dumps(p.to_compat_json(), allow_nan=False)
    assert Pyramid.from_json(json.loads(text)).to_json() == p.to_json()
    for kind in ("relevance", "sum", "gradcam"):
        for tube in level_tubes(p, trace, kind):
            assert np.isfinite(tube.volume).all() and np.isfinite(tube.to_clip((4, 6, 6))).all()
            assert np.isfinite(frame_importance(tube.volume)).all()
    if case == "zero":
        assert all(lv.size == 0 for lv in p.levels[1:])  # zero contributions select nothing
        assert all(not np.any(t.volume) for t in level_tubes(p, trace))  # constant map -> zeros


def test_gradient_self_check_and_zero_gradients():
    graph, trace = make_case([("a", 3, 4, 1), ("b", 4, 6, 1)], 3)
    build_pyramid(graph, trace, method="gradients")  # consistent gradients pass
    feat = graph.head.features
    bad = Trace(
        trace.logits, trace.activations, {**trace.gradients, feat: trace.gradients[feat] * 2}, trace.target
    )
    with pytest.raises(GradientCheckError, match="self-check"):
        build_pyramid(graph, bad, method="gradients")
    zero = Trace(
        trace.logits,
        trace.activations,
        {**trace.gradients, feat: np.zeros_like(trace.gradients[feat])},
        trace.target,
    )
    with pytest.raises(GradientCheckError, match="zero"):
        build_pyramid(graph, zero, method="gradients")
    with pytest.raises(ConfigError, match="gradients are for class"):
        build_pyramid(graph, trace, label=(int(trace.target[0]) + 1) % 5, method="gradients")
    for kwargs in ({"theta": 1.5}, {"depth": 0}, {"method": "x"}, {"top_n": 0}, {"residual": "some"}):
        with pytest.raises(ConfigError):
            build_pyramid(graph, trace, **kwargs)


def test_tubes_match_direct_formulas():
    graph, trace = make_case([("a", 3, 6, 1), ("b", 6, 8, 1)], 11)
    p = build_pyramid(graph, trace, None, 0.3, 2, "gradients")
    f = trace.activations["b_out"][0].astype(np.float64)
    a = trace.activations["a_out"][0].astype(np.float64)
    ga = trace.gradients["a_out"][0].astype(np.float64)
    n1 = {n.channel: n.relevance for n in p.nodes(1)}
    by_kind = {k: level_tubes(p, trace, k) for k in ("relevance", "sum", "gradcam")}
    np.testing.assert_allclose(
        by_kind["relevance"][0].volume, normalise01(sum(r * f[c] for c, r in n1.items())), atol=1e-6
    )
    np.testing.assert_allclose(by_kind["sum"][0].volume, normalise01(sum(f[c] for c in n1)), atol=1e-6)
    kept2 = [n.channel for n in p.nodes(2)]
    assert kept2
    cam = np.maximum(sum(ga[j].mean() * a[j] for j in kept2), 0)
    np.testing.assert_allclose(by_kind["gradcam"][1].volume, normalise01(cam), atol=1e-6)
    rel2 = sum(n.relevance * a[n.channel] for n in p.nodes(2))
    np.testing.assert_allclose(by_kind["relevance"][1].volume, normalise01(rel2), atol=1e-6)
    kt = kernel_tube(p, trace, "a", kept2[0])
    np.testing.assert_allclose(kt.volume, normalise01(a[kept2[0]]), atol=1e-6)
    assert kt.node == ("a", kept2[0]) and kt.tensors == ("a_out",)
    fi = frame_importance(by_kind["sum"][0].volume)
    v = by_kind["sum"][0].volume
    np.testing.assert_allclose(fi, v.sum(axis=(1, 2)) / v.sum(), rtol=1e-5)


def test_request_is_minimal_and_sufficient():
    graph, _ = make_case([("z", 3, 4, 1), ("a", 4, 6, 1), ("d", 6, 6, 6), ("b", 6, 5, 1)], 5)
    assert pyramid_tensors(graph, 1, "weights").activations == ("b_out",)
    assert pyramid_tensors(graph, 1, "weights").gradients == ()
    r = pyramid_tensors(graph, 2, "gradients")  # the last level is not passed through
    assert set(r.activations) == {"b_out", "d_out"} and set(r.gradients) == {"b_out", "d_out"}
    r3 = pyramid_tensors(graph, 3, "gradients")
    assert set(r3.activations) == {"b_out", "d_out", "a_out", "z_out"}  # a_out: the pass-through's tube
    assert set(r3.gradients) == {"b_out", "d_out", "z_out"}  # z reads the clip: never scored
    assert set(pyramid_tensors(graph, 3, "gradients", tube="gradcam").gradients) == set(r3.activations)


def test_compat_tree_shape():
    graph, trace = make_case([("a", 3, 4, 1), ("b", 4, 4, 1)], 4)
    p = build_pyramid(graph, trace, None, 0.0, 2, "weights")
    tree = p.to_compat_json()
    label = str(p.class_index)
    assert set(tree) == {label}
    assert set(tree[label]) == {str(n.channel) for n in p.nodes(1)}
    for n in p.nodes(1):
        kids = sorted(m.channel for m in p.nodes(2) if any(e.node == n.id for e in m.parents))
        assert tree[label][str(n.channel)] == kids
