"""Typed results of the pyramid stage: the tensor request, the DAG of kept kernels, and saliency tubes.

A ``Pyramid`` stores each level as parallel NumPy arrays (nodes, parent edges, scored channels) so that
selection stays vectorised end to end; ``Level.nodes`` turns them into ``Node`` objects on demand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from onnxcfp.volume import normalise01, resize_volume

SCHEMA = "onnxcfp.pyramid/1"


@dataclass(frozen=True)
class TensorRequest:
    """The minimal set of tensors a pyramid needs from the runtime: activations and d(score)/d(tensor)."""

    activations: tuple[str, ...]
    gradients: tuple[str, ...]


@dataclass(frozen=True)
class Edge:
    """A parent of a node: ``node`` is the parent's id ("layer:channel") at level ``level`` (the level
    above for a scored edge, the same level for a depthwise pass-through) and ``score`` its normalised
    contribution n_j."""

    node: str
    level: int
    score: float


@dataclass(frozen=True)
class Node:
    """One kept kernel: output channel ``channel`` of conv ``layer`` at pyramid level ``level``.

    ``score`` is the largest normalised score over its incoming edges (n_c at level 1), ``relevance`` how
    strongly the pyramid above leads to it (max 1 per level). ``at`` lists the (tensor, channel) pairs
    where it was scored: the channel(s) of the scored tensor that this kernel produces.
    """

    layer: str
    channel: int
    level: int
    score: float
    relevance: float
    parents: tuple[Edge, ...]
    at: tuple[tuple[str, int], ...]

    @property
    def id(self) -> str:
        return f"{self.layer}:{self.channel}"


@dataclass(frozen=True)
class LayerInfo:
    """Per-layer metadata written to pyramid.json (``index`` orders nodes)."""

    index: int
    kind: str
    kernel: tuple[int, ...]
    groups: int
    in_channels: int
    out_channels: int
    input: str
    output: str
    input_shape: tuple[int | str | None, ...]


@dataclass(frozen=True, eq=False)
class Level:
    """One pyramid level as parallel arrays.

    Nodes ``i``: ``node_layer[i]``, ``node_channel[i]``, ``node_score[i]``, ``node_relevance[i]``, sorted
    by (layer index, channel). Edges ``e``: child ``edge_child[e]`` (index into this level's nodes), parent
    ``edge_parent[e]`` (index into the nodes of level ``edge_parent_level[e]``), score ``edge_score[e]``.
    Scored channels ``q`` (what the tubes add up): channel ``entry_channel[q]`` of tensor
    ``tensors[entry_tensor[q]]`` with relevance weight ``entry_weight[q]``; ``at_node``/``at_entry`` pair
    nodes with the scored channels they produce.
    """

    level: int
    tensors: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    node_layer: tuple[str, ...]
    node_channel: np.ndarray
    node_score: np.ndarray
    node_relevance: np.ndarray
    edge_child: np.ndarray
    edge_parent: np.ndarray
    edge_parent_level: np.ndarray
    edge_score: np.ndarray
    entry_tensor: np.ndarray
    entry_channel: np.ndarray
    entry_weight: np.ndarray
    at_node: np.ndarray
    at_entry: np.ndarray

    @property
    def size(self) -> int:
        return len(self.node_layer)

    @property
    def shape(self) -> tuple[int, ...]:
        """T x H x W of the level's first scored tensor (see ``shapes`` for all of them)."""
        return tuple(self.shapes[self.tensors[0]]) if self.tensors else ()

    def node_ids(self) -> list[str]:
        return [f"{layer}:{int(c)}" for layer, c in zip(self.node_layer, self.node_channel, strict=True)]

    def channels_of(self, tensor: str) -> tuple[np.ndarray, np.ndarray]:
        """Scored channels of ``tensor`` in this level and their relevance weights."""
        if tensor not in self.tensors:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        sel = self.entry_tensor == self.tensors.index(tensor)
        return self.entry_channel[sel], self.entry_weight[sel]


@dataclass(frozen=True, eq=False)
class Pyramid:
    """A class feature pyramid for one clip: the DAG of kept kernels, level by level."""

    source: str
    input: Mapping[str, Any]  # {"name", "layout", "shape"}
    clip: int
    class_index: int
    class_name: str | None
    class_score: float
    score_kind: str
    params: Mapping[str, Any]  # theta, depth, method, residual, top_n, top_n_level, normalise, tube
    layers: Mapping[str, LayerInfo]
    levels: tuple[Level, ...]
    channel_axes: Mapping[str, int] = field(default_factory=dict)  # tensors whose C is not axis 1

    def level(self, number: int) -> Level:
        return self.levels[number - 1]

    @cached_property
    def _nodes(self) -> tuple[tuple[Node, ...], ...]:
        ids = [lv.node_ids() for lv in self.levels]
        out = []
        for li, lv in enumerate(self.levels):
            parents: list[list[Edge]] = [[] for _ in range(lv.size)]
            for c, p, pl, s in zip(
                lv.edge_child, lv.edge_parent, lv.edge_parent_level, lv.edge_score, strict=True
            ):
                parents[int(c)].append(Edge(ids[int(pl) - 1][int(p)], int(pl), float(s)))
            at: list[list[tuple[str, int]]] = [[] for _ in range(lv.size)]
            for n, q in zip(lv.at_node, lv.at_entry, strict=True):
                at[int(n)].append((lv.tensors[int(lv.entry_tensor[q])], int(lv.entry_channel[q])))
            out.append(
                tuple(
                    Node(layer, int(ch), li + 1, float(sc), float(r), tuple(parents[i]), tuple(at[i]))
                    for i, (layer, ch, sc, r) in enumerate(
                        zip(lv.node_layer, lv.node_channel, lv.node_score, lv.node_relevance, strict=True)
                    )
                )
            )
        return tuple(out)

    def nodes(self, level: int) -> tuple[Node, ...]:
        """The nodes of ``level`` (1-based) as objects, sorted by (layer index, channel)."""
        return self._nodes[level - 1]

    def node(self, layer: str, channel: int, level: int | None = None) -> Node:
        for lv in [level] if level is not None else range(1, len(self.levels) + 1):
            for n in self.nodes(lv):
                if n.layer == layer and n.channel == channel:
                    return n
        raise KeyError(f"no node {layer}:{channel} in the pyramid")

    def to_json(self) -> dict[str, Any]:
        from onnxcfp.pyramid.serialize import pyramid_to_json

        return pyramid_to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pyramid:
        from onnxcfp.pyramid.serialize import pyramid_from_json

        return pyramid_from_json(data)

    def to_compat_json(self) -> dict[str, Any]:
        from onnxcfp.pyramid.serialize import pyramid_to_compat_json

        return pyramid_to_compat_json(self)


@dataclass(frozen=True, eq=False)
class SaliencyTube:
    """A saliency volume at feature resolution, in [0, 1].

    ``tensors`` are the tensors it was built from (their T x H x W is all it can resolve). When it comes
    from several tensors, ``parts`` holds each tensor's unnormalised map so ``to_clip`` can up-sample each
    to the clip before adding (the spec's rule); ``rectify`` applies ReLU after adding (Grad-CAM).
    ``num_channels`` is the level-set size (kept channels summed), ``tensor_channels`` the channels the
    tensors hold in all — report them next to a ``sum`` tube.
    """

    label: str
    level: int
    volume: np.ndarray
    tensors: tuple[str, ...]
    node: tuple[str, int] | None
    parts: tuple[np.ndarray, ...] = field(default=(), repr=False)
    rectify: bool = False
    num_channels: int = 0
    tensor_channels: int = 0

    def to_clip(self, size: Sequence[int]) -> np.ndarray:
        """The tube up-sampled to the clip's (T, H, W): exact-size trilinear, half-pixel centres, [0, 1]."""
        size = tuple(int(s) for s in size)
        if len(self.parts) > 1:
            acc = np.zeros(size, np.float32)
            for part in self.parts:
                acc += resize_volume(part, size)
            if self.rectify:
                acc = np.maximum(acc, 0.0)
            return normalise01(acc)
        return normalise01(resize_volume(self.volume, size))
