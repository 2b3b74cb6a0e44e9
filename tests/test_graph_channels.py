"""Channel maps against an onnxruntime oracle: shift one output channel of a producing conv (by editing its
bias in a copy of the model) and check that exactly the mapped channels of each consumer's input change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_builders as builders
import pytest
from onnx import numpy_helper

from onnxcfp.errors import ChannelFlowError, ConfigError
from onnxcfp.graph import ChannelSource, ModelGraph, load_graph

DELTA = 4.0  # large against post-BN activations of ~1, so a ReLU cannot hide the shift


def _ancestor_convs(graph: ModelGraph, tensor: str, stop_at_conv: bool) -> set[str]:
    """Convs whose output reaches ``tensor``; with ``stop_at_conv`` only those with no conv in between."""
    producer = {o: n for n in graph.model.graph.node for o in n.output}
    by_output = {layer.output: layer.name for layer in graph.layers}
    found: set[str] = set()
    stack, seen = [tensor], {tensor}
    while stack:
        t = stack.pop()
        if t in by_output:
            found.add(by_output[t])
            if stop_at_conv:
                continue
        node = producer.get(t)
        if node is None:
            continue
        inputs = node.input[:1] if node.op_type == "Conv" else node.input
        for i in inputs:
            if i and i not in seen:
                seen.add(i)
                stack.append(i)
    return found


def _shift_bias(model: onnx.ModelProto, graph: ModelGraph, layer_name: str, channel: int, delta: float):
    """A copy of ``model`` with ``delta`` added to one output channel's bias of ``layer_name``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    layer = graph.layer(layer_name)
    node = next(n for n in out.graph.node if n.op_type == "Conv" and n.output[0] == layer.output)
    bias = np.zeros(layer.out_channels, np.float32) if layer.bias is None else layer.bias.copy()
    bias[channel] += delta
    name = f"__oracle_bias_{layer.index}"
    out.graph.initializer.append(numpy_helper.from_array(bias, name))
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)
    return out


def check_channel_maps_by_perturbation(model: onnx.ModelProto, clip: np.ndarray, max_layers: int = 64) -> int:
    """Returns the number of (producer, consumer tensor) pairs checked exactly."""
    graph = load_graph(model)
    assert graph.explainable, graph.problems
    tensors = list(dict.fromkeys([*(layer.input for layer in graph.layers), graph.head.features]))
    exposed = builders.expose(graph.model, tensors)
    base = builders.run(exposed, clip, tensors)
    maps = {t: graph.channel_map(t, "all") for t in tensors}
    direct = {t: _ancestor_convs(graph, t, stop_at_conv=True) for t in tensors}
    every = {t: _ancestor_convs(graph, t, stop_at_conv=False) for t in tensors}
    through_conv = {
        t: set().union(*(every[graph.layer(q).input] | set() for q in direct[t])) if direct[t] else set()
        for t in tensors
    }
    checked = 0
    for layer in graph.layers[:max_layers]:
        channel = (7 * layer.index + 3) % layer.out_channels
        changed_any: dict[str, np.ndarray] = {}
        for delta in (DELTA, -DELTA):
            shifted = builders.run(
                builders.expose(_shift_bias(graph.model, graph, layer.name, channel, delta), tensors),
                clip,
                tensors,
            )
            for t in tensors:
                diff = np.abs(shifted[t] - base[t])
                ch_axis = 1 if t != graph.head.features else graph.flow.channel_axis(t)
                per_channel = np.moveaxis(diff, ch_axis, 0).reshape(diff.shape[ch_axis], -1).max(axis=1)
                scale = 1e-5 * (1.0 + float(np.abs(base[t]).max()))
                now = per_channel > scale
                changed_any[t] = now | changed_any.get(t, np.zeros_like(now))
        source = ChannelSource(layer.name, channel)
        for t in tensors:
            if layer.name not in every[t]:
                assert not changed_any[t].any(), (t, layer.name)
                continue
            if layer.name not in direct[t] or layer.name in through_conv[t]:
                continue  # another conv lies between: it mixes channels, the map is about the direct path
            expected = np.array([source in srcs for srcs in maps[t].sources])
            if all(d == 1 for d in layer.output_shape[2:]) and base[t][0].size > base[t].shape[1]:
                # a squeeze-excite gate conv ([N,C,1,1,1]) scales channels: the map does not follow
                # gates (they are not the feature path), though its channel c does scale channel c
                assert not expected.any() and changed_any[t].sum() <= 1, (t, layer.name)
                continue
            assert np.array_equal(changed_any[t], expected), (
                f"{t}: shifting {layer.name}:{channel} changed {np.flatnonzero(changed_any[t]).tolist()}"
                f" but the map says {np.flatnonzero(expected).tolist()}"
            )
            checked += 1
    return checked


@pytest.mark.parametrize("name", sorted(builders.ALL_BUILDERS))
def test_channel_maps_match_bias_perturbation_on_builders(name: str) -> None:
    clip = np.random.default_rng(0).normal(size=builders.CLIP_SHAPE).astype(np.float32)
    model = builders.ALL_BUILDERS[name]()
    if name == "nthwc_tf_style":
        clip = np.ascontiguousarray(clip.transpose(0, 2, 3, 4, 1))
    assert check_channel_maps_by_perturbation(model, clip) >= 2


def test_channel_maps_match_bias_perturbation_on_zoo(zoo_models: Path) -> None:
    from conftest import zoo_card

    card = zoo_card(zoo_models)
    shape = [d if isinstance(d, int) else 1 for d in card["input"]["shape"]]
    clip = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    assert check_channel_maps_by_perturbation(onnx.load(str(zoo_models)), clip) >= 2


def test_branch_mode_follows_the_deepest_addend_and_all_mode_every_addend() -> None:
    graph = load_graph(builders.resnet_blocks())
    add_out = next(n.output[0] for n in graph.model.graph.node if n.name == "add_projection")
    relu_out = next(n.output[0] for n in graph.model.graph.node if list(n.input) == [add_out])
    consumer = (
        next(layer for layer in graph.layers if layer.input == relu_out)
        if any(layer.input == relu_out for layer in graph.layers)
        else None
    )
    tensor = consumer.input if consumer else graph.head.features
    branch = graph.channel_map(tensor, "branch")
    every = graph.channel_map(tensor, "all")
    branch_layers = {s.layer for srcs in branch.sources for s in srcs}
    all_layers = {s.layer for srcs in every.sources for s in srcs}
    # the projection conv (written after the branch, depth 2) is only followed in "all" mode
    assert "proj" not in branch_layers and "proj" in all_layers
    deepest = max(graph.layer(name).conv_depth for name in all_layers)
    assert {graph.layer(name).conv_depth for name in branch_layers} == {deepest}
    for b_srcs, a_srcs in zip(branch.sources, every.sources, strict=True):
        assert set(b_srcs) < set(a_srcs)
    # identity shortcut: "all" reaches back into the stem, "branch" does not
    ident = graph.channel_map(next(layer.input for layer in graph.layers if layer.conv_depth == 4), "all")
    assert all(len(srcs) == 2 for srcs in ident.sources)


def test_concat_offsets_and_shuffle_are_global_indices() -> None:
    graph = load_graph(builders.fibres())
    grouped = next(layer for layer in graph.layers if layer.groups == 2)
    m = graph.channel_map(grouped.input)
    assert [s[0].channel for s in m.sources] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len({s[0].layer for s in m.sources[:4]} | {s[0].layer for s in m.sources[4:]}) == 2
    after_shuffle = next(
        layer for layer in graph.layers if layer.in_channels == 5 and layer.kernel == (1, 1, 1)
    )
    # shuffle of 2 groups x 4 channels puts channel j at (j % 2) * 4 + j // 2; then Slice [2:7]
    assert [s[0].channel for s in graph.channel_map(after_shuffle.input).sources] == [1, 5, 2, 6, 3]


def test_unknown_op_is_a_channel_flow_error_naming_node_and_op() -> None:
    graph = load_graph(builders.model_with_op("Tile"))
    assert not graph.explainable and "odd_op" in graph.problems[0] and "Tile" in graph.problems[0]
    consumer = graph.layers[1]
    with pytest.raises(ChannelFlowError, match=r"odd_op.*Tile"):
        graph.channel_map(consumer.input)


def test_bad_residual_mode_and_unknown_tensor() -> None:
    graph = load_graph(builders.plain_chain())
    with pytest.raises(ConfigError):
        graph.channel_map(graph.layers[1].input, "some")
    with pytest.raises(ChannelFlowError, match="not in the model"):
        graph.channel_map("no_such_tensor")


def test_by_layer_inverts_sources() -> None:
    graph = load_graph(builders.fibres())
    m = graph.channel_map(graph.layers[3].input)
    for layer, (tensor_ch, layer_ch) in m.by_layer().items():
        for j, c in zip(tensor_ch, layer_ch, strict=True):
            assert ChannelSource(layer, int(c)) in m.sources[int(j)]
