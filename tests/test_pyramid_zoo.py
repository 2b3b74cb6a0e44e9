"""Acceptance on the model zoo: the vectorised pyramid equals the naive loop version, and with
normalise="original" the authors' formulas transcribed literally (tests/original_cfp.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from original_cfp import original_tree
from pyramid_naive import naive_pyramid

from onnxcfp.graph import load_graph
from onnxcfp.pyramid import Pyramid, build_pyramid, level_tubes, pyramid_tensors
from onnxcfp.runtime import run

MODELS = sorted(p.stem for p in (Path(__file__).parent.parent / "models").glob("*.onnx"))


def _clip(graph, seed=0):
    shape = [1 if not isinstance(s, int) else s for s in graph.video_input.shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module", params=MODELS)
def traced_model(request):
    """One clip per model, one run exposing everything any tested pyramid (depth 4, both modes) needs."""
    graph = load_graph(Path(__file__).parent.parent / "models" / f"{request.param}.onnx")
    acts, grads = {}, {}
    for residual in ("branch", "all"):
        req = pyramid_tensors(graph, 4, "gradients", residual, tube="gradcam")
        acts.update(dict.fromkeys(req.activations))
        grads.update(dict.fromkeys(req.gradients))
    trace = run(graph, _clip(graph), tuple(acts), tuple(grads))
    return request.param, graph, trace


def _as_naive(p: Pyramid):
    out = []
    for lv in p.levels:
        ids = [(layer, int(c)) for layer, c in zip(lv.node_layer, lv.node_channel, strict=True)]
        nodes = dict(zip(ids, lv.node_relevance.tolist(), strict=True))
        edges = {}
        for c, par, pl, s in zip(
            lv.edge_child, lv.edge_parent, lv.edge_parent_level, lv.edge_score, strict=True
        ):
            parent = p.levels[int(pl) - 1]
            key = (int(pl), parent.node_layer[int(par)], int(parent.node_channel[int(par)]), *ids[int(c)])
            edges[key] = s
        out.append({"nodes": nodes, "edges": edges})
    return out


def _assert_same(mine, naive, what):
    assert len(mine) == len(naive), what
    for lvl, (a, b) in enumerate(zip(mine, naive, strict=True), start=1):
        assert set(a["nodes"]) == set(b["nodes"]), f"{what} level {lvl} nodes"
        assert set(a["edges"]) == set(b["edges"]), f"{what} level {lvl} edges"
        for k in a["nodes"]:
            assert a["nodes"][k] == pytest.approx(b["nodes"][k], rel=1e-9, abs=1e-12), f"{what} relevance {k}"
        for k in a["edges"]:
            assert a["edges"][k] == pytest.approx(b["edges"][k], rel=1e-9), f"{what} edge {k}"


def test_vectorised_equals_naive(traced_model):
    name, graph, trace = traced_model
    methods = ("weights", "gradients") if graph.head.linear else ("gradients",)
    label = int(trace.target[0])
    checked = 0
    for method in methods:
        for residual in ("branch", "all"):
            for theta in (0.4, 0.6, 0.8):
                for depth in (1, 2, 3, 4):
                    for top_n in (None, 2):
                        p = build_pyramid(graph, trace, label, theta, depth, method, residual, top_n)
                        naive = naive_pyramid(graph, trace, label, theta, depth, method, residual, top_n)
                        _assert_same(
                            _as_naive(p), naive, f"{name} {method} {residual} θ={theta} d={depth} n={top_n}"
                        )
                        checked += 1
    # something non-trivial was compared: deeper levels are not all empty
    p = build_pyramid(graph, trace, label, 0.4, 4, "gradients", "all")
    assert sum(lv.size for lv in p.levels[1:]) > 0
    assert checked >= 48


def test_top_n_at_one_level_equals_naive(traced_model):
    name, graph, trace = traced_model
    label = int(trace.target[0])
    for level in (1, 2, 3):
        p = build_pyramid(graph, trace, label, 0.4, 3, "gradients", "all", 1, top_n_level=level)
        naive = naive_pyramid(graph, trace, label, 0.4, 3, "gradients", "all", 1, top_n_level=level)
        _assert_same(_as_naive(p), naive, f"{name} top_n_level={level}")


def test_outputs_finite_and_json_round_trip(traced_model):
    _, graph, trace = traced_model
    p = build_pyramid(graph, trace, depth=4, method="gradients", residual="all", theta=0.4)
    data = json.loads(json.dumps(p.to_json(), allow_nan=False))
    assert Pyramid.from_json(data).to_json() == p.to_json()
    for kind in ("relevance", "sum", "gradcam"):
        for tube in level_tubes(p, trace, kind):
            assert np.isfinite(tube.volume).all() and tube.volume.min() >= 0 and tube.volume.max() <= 1
            assert np.isfinite(tube.to_clip((16, 64, 64))).all()


# ---- normalise="original" against the literal transcription -------------------------------------------


def _conv_depths(model):
    """Most Conv nodes on any path from the graph input to each tensor (an independent re-statement)."""
    depth = {}
    for node in model.graph.node:
        d = max((depth.get(i, 0) for i in node.input if i), default=0)
        for o in node.output:
            depth[o] = d + (1 if node.op_type == "Conv" else 0)
    return depth


def _branch_conv(model, tensor, depth):
    """The Conv whose output reaches ``tensor`` through single-input ops, following at each Add the addend
    of greatest conv depth."""
    producer = {o: n for n in model.graph.node for o in n.output}
    while True:
        node = producer[tensor]
        if node.op_type == "Conv":
            return node
        data = [i for i in node.input if i in producer]
        tensor = max(data, key=lambda t: depth.get(t, 0)) if node.op_type == "Add" else data[0]


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("theta", [0.4, 0.6, 0.8])
def test_original_normalise_matches_transcription(depth, theta):
    graph = load_graph(Path(__file__).parent.parent / "models" / "r3d_bottleneck_legacy.onnx")
    model = graph.model
    cdepth = _conv_depths(model)
    by_output = {layer.output: layer for layer in graph.layers}
    chain, tensor = [], graph.head.features
    for _ in range(depth):
        conv = _branch_conv(model, tensor, cdepth)
        layer = by_output[conv.output[0]]
        chain.append(layer)
        tensor = layer.input
    request = pyramid_tensors(graph, depth, "weights", "branch", normalise="original")
    assert set(request.activations) >= {lay.input for lay in chain[:-1]}
    trace = run(
        graph, _clip(graph, 3), tuple(dict.fromkeys([*request.activations, *(c.input for c in chain)]))
    )
    label = int(trace.logits[0].argmax())
    kernels = [lay.weight for lay in reversed(chain)]
    acts = [trace.activations[lay.input][0] for lay in reversed(chain)]
    expected = original_tree(graph.head.weight, label, kernels, acts, theta, depth)
    p = build_pyramid(graph, trace, label, theta, depth, "weights", "branch", normalise="original")
    assert p.to_compat_json() == json.loads(json.dumps(expected))
    # every level lives in the chain's layer
    for lv, lay in zip(p.levels, chain, strict=True):
        assert set(lv.node_layer) <= {lay.name}
