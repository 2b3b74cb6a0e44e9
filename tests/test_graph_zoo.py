"""The graph layer over every committed zoo model, against what the builder script declares in the card
(models/<name>.json "declared": counted from the torch modules, never from the exported ONNX)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import zoo_card

from onnxcfp.graph import load_graph


def test_zoo_model_matches_its_declared_structure(zoo_models: Path) -> None:
    card = zoo_card(zoo_models)
    declared = card["declared"]
    graph = load_graph(zoo_models)
    assert graph.video_input.name == card["input"]["name"]
    assert graph.video_input.layout == card["input"]["layout"]
    static = [d if isinstance(d, int) else None for d in graph.video_input.shape]
    assert [s for s in static[1:]] == card["input"]["shape"][1:]
    assert dict(Counter(layer.kind.value for layer in graph.layers)) == declared["conv_kinds"]
    assert (
        dict(Counter(str(layer.groups) for layer in graph.layers if layer.groups > 1)) == declared["groups"]
    )
    structure = graph.structure
    assert len(structure.residual_adds) == declared["residual_adds"]
    assert len(structure.channel_concats) == declared["channel_concats"]
    assert len(structure.channel_splits) == declared["channel_splits"]
    head = graph.head
    assert head is not None, graph.problems
    assert head.kind == declared["head"]["kind"]
    assert head.num_classes == declared["head"]["num_classes"] == len(card["classes"])
    assert graph.channel_map(head.features).num_channels == declared["head"]["feature_channels"]
    if head.linear:
        assert head.weight.shape == (declared["head"]["num_classes"], declared["head"]["feature_channels"])
    assert graph.explainable, graph.problems
