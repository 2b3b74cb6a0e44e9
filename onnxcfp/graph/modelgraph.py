"""``ModelGraph``: everything the later stages need to know about a loaded model, in one typed object."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import onnx

from onnxcfp.errors import ChannelFlowError, HeadNotFoundError, NoConvError, NoVideoInputError
from onnxcfp.graph.channels import ChannelFlow, ChannelMap
from onnxcfp.graph.head import ClassifierHead, find_head
from onnxcfp.graph.layers import ConvLayer, conv_depths, extract_layers
from onnxcfp.graph.model import GraphIndex, ModelSource, load_model

Dim = int | str | None  # a static size, a symbolic name, or unknown


@dataclass(frozen=True)
class VideoInput:
    """The model's 5-D clip input. ``layout`` is "NCTHW" (PyTorch-style) or "NTHWC" (TensorFlow-style,
    where a Transpose precedes the first Conv). Sizes are ints when static, names when symbolic."""

    name: str
    layout: str
    shape: tuple[Dim, ...]
    elem_type: int  # onnx.TensorProto data type

    def dim(self, axis: str) -> Dim:
        """Size along "N", "C", "T", "H" or "W"."""
        return self.shape[self.layout.index(axis)]


@dataclass(frozen=True)
class GraphStructure:
    """Where a model's channel paths merge and part: node names of residual merges (Add/Sum of two or
    more feature maps) and channel-axis Concats, and the tensors taken apart along channels (one entry
    per tensor, however many Split/Slice nodes take it apart)."""

    residual_adds: tuple[str, ...]
    channel_concats: tuple[str, ...]
    channel_splits: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """A loaded model and what onnxcfp found in it.

    ``model`` is the checked model with shapes inferred and its IR version lowered to what the installed
    onnxruntime accepts; ``layers`` are its Conv nodes in topological order; ``shapes`` maps every tensor
    name with an inferred shape to it; ``problems`` says why the model cannot be explained (empty when
    it can).
    """

    model: onnx.ModelProto
    source: str
    video_input: VideoInput
    layers: tuple[ConvLayer, ...]
    head: ClassifierHead | None
    shapes: dict[str, tuple[Dim, ...]]
    problems: tuple[str, ...] = ()
    _channel_maps: dict[tuple[str, str], ChannelMap] = field(default_factory=dict, repr=False)
    _flow: ChannelFlow | None = field(default=None, repr=False)

    @property
    def explainable(self) -> bool:
        return not self.problems and self.head is not None

    def layer(self, name: str) -> ConvLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no conv layer named {name!r}")

    @functools.cached_property
    def structure(self) -> GraphStructure:
        """Residual merges, channel concats and channel splits, found from the graph."""
        flow, index = self.flow, self.flow.index
        adds: list[str] = []
        concats: list[str] = []
        splits: dict[str, None] = {}
        for node in self.model.graph.node:
            out = node.output[0] if node.output else ""
            if node.op_type in ("Add", "Sum"):
                out_shape = index.shape(out)
                features = [
                    i
                    for i in node.input
                    if i and index.constant(i) is None and _compatible(index.shape(i), out_shape)
                ]
                if len(features) >= 2 and flow.channel_axis(out) is not None:
                    adds.append(index.name_of(node))
            elif node.op_type == "Concat":
                axis = flow.channel_axis(out)
                rank = len(index.shape(out) or ())
                cat_axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0)
                if axis is not None and rank and cat_axis % rank == axis:
                    concats.append(index.name_of(node))
            elif node.op_type in ("Split", "Slice"):
                axis = flow.channel_axis(node.input[0])
                if axis is not None and _cuts_axis(index, node, axis):
                    splits.setdefault(node.input[0], None)
        return GraphStructure(tuple(adds), tuple(concats), tuple(splits))

    @property
    def flow(self) -> ChannelFlow:
        """The channel-flow tracer (built on first use for hand-made ``ModelGraph`` objects)."""
        if self._flow is None:
            index = GraphIndex(self.model, self.shapes or None)
            flow = ChannelFlow(
                index,
                self.layers,
                conv_depths(index),
                {self.video_input.name: self.video_input.layout.index("C")},
            )
            object.__setattr__(self, "_flow", flow)
        assert self._flow is not None
        return self._flow

    @functools.cached_property
    def _conv_inputs(self) -> frozenset[str]:
        return frozenset(layer.input for layer in self.layers)

    def channel_axis(self, tensor: str) -> int:
        """The axis of ``tensor`` that holds conv channels: 1 for a conv's input (a Conv reads NC... by
        definition), else followed forward from conv outputs and the video input's layout (e.g. 4 for an
        ``[N, T, H, W, C]`` tensor of a TF-style head). Raises ``ChannelFlowError`` when no conv channel
        reaches ``tensor`` along a channel-keeping path."""
        if tensor in self._conv_inputs:
            return 1
        axis = self.flow.channel_axis(tensor)
        if axis is None:
            raise ChannelFlowError(
                f"cannot tell which axis of {tensor!r} holds channels (no conv output reaches it along a"
                " channel-keeping path); pick a tensor between convs"
            )
        return int(axis)

    def channel_map(self, tensor: str, residual: str = "branch") -> ChannelMap:
        """For each channel of ``tensor``, the conv output channels it comes from. ``residual="branch"``:
        at a residual Add follow only the addend(s) of greatest conv depth; ``"all"``: every addend.
        Raises ``ChannelFlowError`` naming the node and op when the path holds an op it cannot follow."""
        key = (tensor, residual)
        if key not in self._channel_maps:
            self._channel_maps[key] = self.flow.channel_map(tensor, residual)
        return self._channel_maps[key]


def detect_video_input(index: GraphIndex) -> VideoInput:
    """The 5-D graph input that reaches a Conv, and its layout: NTHWC when a Transpose on its way to the
    first Conv moves the last axis in front of H and W (how tf2onnx feeds NDHWC clips to NCDHW convs)."""
    g = index.graph
    declared = {vi.name: vi for vi in g.input}
    candidates = [n for n in index.graph_inputs if len(index.shapes.get(n, ())) == 5]
    if not candidates:
        found = ", ".join(f"{n}{list(index.shapes.get(n, ()))}" for n in index.graph_inputs) or "none"
        raise NoVideoInputError(
            f"model has no 5-D video input (inputs: {found}); onnxcfp needs an N,C,T,H,W or N,T,H,W,C clip"
        )
    for name in candidates:
        layout = _layout_towards_conv(index, name)
        if layout is not None:
            elem = declared[name].type.tensor_type.elem_type
            return VideoInput(name=name, layout=layout, shape=tuple(index.shapes[name]), elem_type=elem)
    raise NoConvError(f"no Conv reads the 5-D input {candidates[0]!r}; onnxcfp explains convolutional models")


def _layout_towards_conv(index: GraphIndex, name: str) -> str | None:
    """Breadth-first from the input to the first Conv; None when no Conv is reached."""
    frontier = [(name, False)]
    seen = {name}
    while frontier:
        nxt: list[tuple[str, bool]] = []
        for tensor, channels_last in frontier:
            for node in index.consumers.get(tensor, []):
                if node.op_type == "Conv":
                    return "NTHWC" if channels_last else "NCTHW"
                moved = channels_last
                if node.op_type == "Transpose":
                    perm = [int(p) for p in next((a.ints for a in node.attribute if a.name == "perm"), [])]
                    if len(perm) == 5 and perm.index(4) < min(perm.index(2), perm.index(3)):
                        moved = True
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        nxt.append((out, moved))
        frontier = nxt
    return None


def load_graph(src: ModelSource) -> ModelGraph:
    """Load a model (see ``load_model``) and find its video input, conv layers, classifier head and
    channel flow. Raises ``NoVideoInputError`` / ``NoConvError`` for models onnxcfp cannot read at all;
    softer problems (no head found, an op the channel flow cannot follow) land in ``problems``."""
    model = load_model(src)
    index = GraphIndex(model)
    if not any(node.op_type == "Conv" for node in model.graph.node):
        raise NoConvError("model has no Conv node; onnxcfp explains convolutional video models")
    video = detect_video_input(index)
    layers = extract_layers(index)
    flow = ChannelFlow(index, layers, conv_depths(index), {video.name: video.layout.index("C")})
    problems: list[str] = []
    head: ClassifierHead | None
    try:
        head = find_head(index, flow.channel_axis)
    except HeadNotFoundError as err:
        head, problems = None, [str(err)]
    graph = ModelGraph(
        model=model,
        source=_describe(src, model),
        video_input=video,
        layers=layers,
        head=head,
        shapes=index.shapes,
        problems=(),
        _flow=flow,
    )
    # Map every conv input and F now: an op the flow cannot follow makes the model unexplainable, and
    # inspect must say so up front rather than the pyramid failing halfway.
    for tensor in [*(layer.input for layer in layers), *([head.features] if head else [])]:
        try:
            graph.channel_map(tensor, "branch")
        except ChannelFlowError as err:
            if str(err) not in problems:
                problems.append(str(err))
    object.__setattr__(graph, "problems", tuple(problems))
    return graph


def _compatible(a: tuple[Dim, ...] | None, b: tuple[Dim, ...] | None) -> bool:
    """Same rank and no two static dims that differ (symbolic dims match anything): a full feature map,
    not a broadcast gate or bias."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x != y) for x, y in zip(a, b, strict=True))


def _cuts_axis(index: GraphIndex, node: onnx.NodeProto, axis: int) -> bool:
    """Whether a Split/Slice node takes a range of ``axis`` (not the whole of it)."""
    shape_in = index.shape(node.input[0])
    rank = len(shape_in or ())
    if not rank:
        return False
    if node.op_type == "Split":
        return next((int(a.i) for a in node.attribute if a.name == "axis"), 0) % rank == axis
    axes = index.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    starts = index.constant(node.input[1])
    count = len(starts) if starts is not None else 0
    picked = [int(a) % rank for a in axes] if axes is not None else list(range(count))
    if axis not in picked:
        return False
    out_shape = index.shape(node.output[0])
    return out_shape is None or shape_in is None or out_shape[axis] != shape_in[axis]


def _describe(src: ModelSource, model: onnx.ModelProto) -> str:
    if isinstance(src, str | os.PathLike):
        return str(src)
    return f"<{type(src).__name__}: graph {model.graph.name!r}>"
