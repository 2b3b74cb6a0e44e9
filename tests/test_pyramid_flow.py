"""Pyramid children across Concat / Split / Slice carry global channel indices of the right branch.

The vectorised pyramid and the naive one in the tests share ``ModelGraph.channel_map``, so agreeing with
each other cannot catch a wrong map. Here the oracle is onnxruntime: for a child node (layer L', channel
j') reached through a Concat/Split/Slice, shift L'.bias[j'] in a copy of the model (an Add of a one-hot
constant right after L', which works however the exporter stored the bias) and check that the channels
of the parent layer's input X that change are exactly those pyramid.json says the child was scored at
(its node's ``at``, also listed in the level's ``channels``). Which nodes lie behind a Concat/Split/Slice
is decided by an independent walk of the ONNX graph, not by the channel flow.

Also: ``ModelGraph.channel_axis`` and ``Trace.layer_inputs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_builders as builders
import pytest
from onnx import numpy_helper

from onnxcfp.errors import ChannelFlowError
from onnxcfp.graph import ModelGraph, load_graph
from onnxcfp.pyramid import Pyramid, build_pyramid, pyramid_tensors
from onnxcfp.runtime import run
from onnxcfp.trace import Trace

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BRANCHY_ZOO = sorted(
    p.stem for p in MODELS_DIR.glob("*.onnx") if p.stem.split("_")[0] in ("i3d", "s3d", "mfnet")
)
CHANNEL_OPS = frozenset({"Concat", "Split", "Slice"})
# Shifts: ±4 is large against post-BN activations of ~1; the big one revives a channel that a ReLU zeroes
# everywhere (the weights method keeps such channels at level 1: its class scores ignore the input).
DELTAS = (4.0, -4.0, 1000.0)
CHILDREN_PER_MODEL = 64  # each costs 3 small forwards; models with more are sampled, deterministically
DEPTH = 6  # deep enough to reach the first stage's Split in mfnet_dynamo and in the fibres builder


# ---- an independent view of the ONNX graph ----------------------------------------------------------
def _conv_free_paths(model: onnx.ModelProto, tensor: str) -> dict[str, frozenset[str]]:
    """For each Conv output that reaches ``tensor`` without passing through another Conv: the Concat,
    Split and Slice op types met on such paths (all paths together). Shape/Size outputs carry no data
    and are not followed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    found: dict[str, frozenset[str]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    stack: list[tuple[str, frozenset[str]]] = [(tensor, frozenset())]
    while stack:
        t, crossed = stack.pop()
        if (t, crossed) in seen:
            continue
        seen.add((t, crossed))
        if t in conv_outputs:
            found[t] = found.get(t, frozenset()) | crossed
            continue
        node = producer.get(t)
        if node is None or node.op_type in ("Shape", "Size", "Constant"):
            continue
        now = crossed | {node.op_type} if node.op_type in CHANNEL_OPS else crossed
        stack.extend((i, now) for i in node.input if i)
    return found


def _reaches_through_conv(model: onnx.ModelProto, source: str, tensor: str) -> bool:
    """Whether conv output ``source`` also reaches ``tensor`` through another Conv (then shifting its bias
    changes channels of ``tensor`` the direct path does not explain, e.g. an identity shortcut or a gate)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: set[tuple[str, bool]] = set()
    stack = [(tensor, False)]
    while stack:
        t, via_conv = stack.pop()
        if (t, via_conv) in seen:
            continue
        seen.add((t, via_conv))
        if t == source and via_conv:
            return True
        node = producer.get(t)
        if node is None or node.op_type in ("Shape", "Size", "Constant"):
            continue
        now = via_conv or node.op_type == "Conv"
        stack.extend((i, now) for i in node.input if i)
    return False


def _shift_channel(
    model: onnx.ModelProto, conv_output: str, channels: int, channel: int, delta: float
) -> onnx.ModelProto:
    """A copy of ``model`` where ``delta`` is added to one output channel of the Conv writing
    ``conv_output`` (what shifting its bias does), by an Add inserted right after it: no need to know how
    the exporter stored the bias (initializer, Constant node, none)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    at = next(k for k, n in enumerate(out.graph.node) if n.op_type == "Conv" and n.output[0] == conv_output)
    conv = out.graph.node[at]
    raw = f"{conv_output}__before_shift"
    conv.output[0] = raw
    shift = np.zeros((channels, 1, 1, 1), np.float32)
    shift[channel] = delta
    out.graph.initializer.append(numpy_helper.from_array(shift, f"{conv_output}__shift"))
    add = onnx.helper.make_node("Add", [raw, f"{conv_output}__shift"], [conv_output])
    out.graph.node.insert(at + 1, add)
    return out


def _changed_channels(base: np.ndarray, shifted: np.ndarray) -> set[int]:
    """Channels (axis 1) of an ``[N, C, ...]`` tensor that differ beyond float noise."""
    diff = np.abs(shifted - base)
    per_channel = np.moveaxis(diff, 1, 0).reshape(diff.shape[1], -1).max(axis=1)
    return set(np.flatnonzero(per_channel > 1e-5 * (1.0 + float(np.abs(base).max()))).tolist())


# ---- the pyramids under test ------------------------------------------------------------------------
def _pyramids(graph: ModelGraph, clip: np.ndarray) -> Iterator[tuple[str, dict]]:
    """pyramid.json (round-tripped through text) for both methods and both residual modes."""
    acts: dict[str, None] = {}
    grads: dict[str, None] = {}
    for residual in ("branch", "all"):
        req = pyramid_tensors(graph, DEPTH, "gradients", residual)
        acts.update(dict.fromkeys(req.activations))
        grads.update(dict.fromkeys(req.gradients))
    trace = run(graph, clip, tuple(acts), tuple(grads))
    methods = ("weights", "gradients") if graph.head is not None and graph.head.linear else ("gradients",)
    for method in methods:
        for residual in ("branch", "all"):
            p = build_pyramid(graph, trace, None, 0.4, DEPTH, method, residual)
            data = json.loads(json.dumps(p.to_json()))
            assert Pyramid.from_json(data).to_json() == data  # what we check is what a user loads
            yield f"{method}/{residual}", data


Claims = dict[tuple[str, int], dict[str, dict[str, set[int]]]]  # (layer, ch) -> X -> variant -> X chans


def _claims_behind_channel_ops(
    graph: ModelGraph, data: dict
) -> Iterator[tuple[str, int, str, set[int], frozenset[str]]]:
    """(child layer, child channel, scored tensor X, X channels per pyramid.json, ops crossed) for every
    node whose scored tensor it reaches only along conv-free paths, some of which cross a Concat, Split
    or Slice. X is the parent layer's input (F for level-1 nodes, whose parent is the class)."""
    model = graph.model
    assert graph.head is not None
    features = graph.head.features
    layer_output = {layer.name: layer.output for layer in graph.layers}
    paths: dict[str, dict[str, frozenset[str]]] = {}
    for lv in data["levels"]:
        listed = {(c["tensor"], c["channel"]) for c in lv["channels"]}
        for node in lv["nodes"]:
            by_tensor: dict[str, set[int]] = {}
            for tensor, j in node["at"]:
                assert (tensor, j) in listed, (node["id"], tensor, j)
                by_tensor.setdefault(tensor, set()).add(j)
            # scored where its parents read: the parent layers' inputs, or F for the class's children
            parent_layers = {p["node"].rsplit(":", 1)[0] for p in node["parents"]}
            where = {data["layers"][name]["input"] for name in parent_layers}
            if lv["level"] == 1:
                where.add(features)
            assert by_tensor and set(by_tensor) <= where, (node["id"], sorted(by_tensor), sorted(where))
            for tensor, channels in by_tensor.items():
                if tensor not in paths:
                    paths[tensor] = _conv_free_paths(model, tensor)
                source = layer_output[node["layer"]]
                crossed = paths[tensor].get(source, frozenset())
                if crossed and not _reaches_through_conv(model, source, tensor):
                    yield node["layer"], int(node["channel"]), tensor, channels, crossed


def _sample(
    claims: Claims, crossed: dict[tuple[str, int], frozenset[str]], seed: int
) -> list[tuple[str, int]]:
    """Up to CHILDREN_PER_MODEL children, at least one behind each op type met (if any pyramid met it)."""
    keys = sorted(claims)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    picked: dict[tuple[str, int], None] = {}
    for op in sorted(CHANNEL_OPS):
        first = next((k for k in order if op in crossed[k]), None)
        if first is not None:
            picked[first] = None
    for k in order:
        if len(picked) >= CHILDREN_PER_MODEL:
            break
        picked[k] = None
    return sorted(picked)


def check_branch_children_by_perturbation(
    graph: ModelGraph, clip: np.ndarray, seed: int
) -> tuple[int, frozenset[str]]:
    """Checks sampled children of every pyramid variant against onnxruntime. Returns how many (child,
    tensor, variant) claims agreed, and the channel op types the checked children were reached through."""
    assert graph.video_input.layout == "NCTHW"  # X channels on axis 1 (conv inputs, 5-D features)
    claims: Claims = {}
    crossed: dict[tuple[str, int], frozenset[str]] = {}
    for variant, data in _pyramids(graph, clip):
        for layer, channel, tensor, channels, ops in _claims_behind_channel_ops(graph, data):
            claims.setdefault((layer, channel), {}).setdefault(tensor, {})[variant] = channels
            crossed[(layer, channel)] = crossed.get((layer, channel), frozenset()) | ops
    assert claims, "no pyramid node lies behind a Concat/Split/Slice: the test would check nothing"
    picked = _sample(claims, crossed, seed)
    tensors = sorted({t for k in picked for t in claims[k]})
    base = builders.run(builders.expose(graph.model, tensors), clip, tensors)
    checked = 0
    for layer, channel in picked:
        conv = graph.layer(layer)
        changed: dict[str, set[int]] = {t: set() for t in claims[(layer, channel)]}
        for delta in DELTAS:
            shifted_model = builders.expose(
                _shift_channel(graph.model, conv.output, conv.out_channels, channel, delta), list(changed)
            )
            shifted = builders.run(shifted_model, clip, list(changed))
            for t in changed:
                changed[t] |= _changed_channels(base[t], shifted[t])
        for tensor, by_variant in claims[(layer, channel)].items():
            assert changed[tensor], f"shifting {layer}:{channel} changed nothing in {tensor}"
            for variant, channels in by_variant.items():
                assert channels == changed[tensor], (
                    f"{variant}: {layer}:{channel} scored at {tensor} channels {sorted(channels)}, but "
                    f"shifting its bias changes channels {sorted(changed[tensor])}"
                )
                checked += 1
    return checked, frozenset().union(*(crossed[k] for k in picked))


def _channel_ops_in(graph: ModelGraph) -> frozenset[str]:
    """Concat/Split/Slice op types of the model that act on 5-D feature maps (not on shape vectors)."""
    return frozenset(
        n.op_type
        for n in graph.model.graph.node
        if n.op_type in CHANNEL_OPS and len(graph.shapes.get(n.output[0]) or ()) == 5
    )


def _zoo_clip(graph: ModelGraph, seed: int) -> np.ndarray:
    shape = [d if isinstance(d, int) else 1 for d in graph.video_input.shape]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", BRANCHY_ZOO)
def test_zoo_branch_children_are_global_indices_of_the_right_branch(name: str) -> None:
    graph = load_graph(MODELS_DIR / f"{name}.onnx")
    checked, ops = check_branch_children_by_perturbation(graph, _zoo_clip(graph, 3), seed=len(name))
    assert checked >= 20 and ops == _channel_ops_in(graph), (checked, sorted(ops))


@pytest.mark.parametrize("name", ["inception", "fibres"])
def test_builder_branch_children_are_global_indices_of_the_right_branch(name: str) -> None:
    graph = load_graph(builders.ALL_BUILDERS[name]())
    clip = np.random.default_rng(4).standard_normal(builders.CLIP_SHAPE).astype(np.float32)
    checked, ops = check_branch_children_by_perturbation(graph, clip, seed=0)
    assert checked >= 4 and ops == _channel_ops_in(graph), (checked, sorted(ops))


# ---- ModelGraph.channel_axis ------------------------------------------------------------------------
def test_channel_axis_is_one_for_conv_inputs_and_found_for_channels_last_features() -> None:
    graph = load_graph(builders.nthwc_tf_style())
    assert graph.head is not None
    # conv inputs: axis 1 by the Conv's definition, even right after the NTHWC->NCTHW Transpose
    assert {graph.channel_axis(layer.input) for layer in graph.layers} == {1}
    # F is N,T,H,W,C here: the axis whose size is the classifier's input width, read off a real run
    clip = np.random.default_rng(0).standard_normal((1, 4, 8, 8, 3)).astype(np.float32)
    features = builders.run(builders.expose(graph.model, [graph.head.features]), clip, [graph.head.features])
    f_shape = features[graph.head.features].shape
    width = graph.head.weight.shape[1]
    assert [a for a, d in enumerate(f_shape) if d == width] == [4]
    assert graph.channel_axis(graph.head.features) == 4
    assert graph.channel_axis(graph.video_input.name) == 4  # the clip's own layout
    # the pyramid reads F's channels on that axis and records it for the tubes
    trace = run(graph, clip, (graph.head.features,))
    p = build_pyramid(graph, trace, None, 0.6, 1, "weights", "branch")
    assert dict(p.channel_axes) == {graph.head.features: 4}


def test_channel_axis_of_a_tensor_without_conv_channels_is_one_clear_error() -> None:
    graph = load_graph(builders.plain_chain())
    assert graph.head is not None
    assert graph.channel_axis(graph.head.features) == 1
    with pytest.raises(ChannelFlowError, match="cannot tell which axis") as err:
        graph.channel_axis(graph.head.logits)  # Gemm output: classes, not channels
    assert "\n" not in str(err.value)


# ---- Trace.layer_inputs -----------------------------------------------------------------------------
def test_layer_inputs_key_the_exposed_activations_by_conv_layer() -> None:
    graph = load_graph(builders.inception())
    clip = np.random.default_rng(5).standard_normal(builders.CLIP_SHAPE).astype(np.float32)
    # the conv's input straight from its ONNX node, not from ConvLayer.input
    conv_node = {n.output[0]: n for n in graph.model.graph.node if n.op_type == "Conv"}
    read = {layer.name: conv_node[layer.output].input[0] for layer in graph.layers}
    stem_out = read[graph.layers[1].name]
    sharing = [name for name, t in read.items() if t == stem_out]
    assert len(sharing) == 2  # two inception branches read the stem's output
    skipped = next(name for name, t in read.items() if t not in (stem_out, "clip"))
    exposed = sorted({t for name, t in read.items() if name != skipped} - {"clip"})
    trace = run(graph, clip, tuple(exposed))

    got = trace.layer_inputs(graph)
    want = [name for name in read if read[name] in exposed]  # topological layer order
    assert list(got) == [layer.name for layer in graph.layers if layer.name in want]
    assert skipped not in got and graph.layers[0].name not in got  # the clip itself was not exposed
    oracle = builders.run(builders.expose(graph.model, exposed), clip, exposed)
    for name, array in got.items():
        # the runtime may fuse conv+BN, the oracle runs the graph as written: float32 rounding apart
        np.testing.assert_allclose(array, oracle[read[name]], rtol=1e-4, atol=1e-5)
    assert got[sharing[0]] is got[sharing[1]]  # one tensor, one array: nothing copied
    assert Trace(logits=trace.logits).layer_inputs(graph) == {}
