"""Channel flow: which conv output channel(s) produce each channel of a tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxcfp.errors import ChannelFlowError, ConfigError
from onnxcfp.graph.layers import ConvLayer
from onnxcfp.graph.model import GraphIndex


@dataclass(frozen=True, order=True)
class ChannelSource:
    """Output channel ``channel`` of the conv named ``layer``."""

    layer: str
    channel: int


@dataclass(frozen=True)
class ChannelMap:
    """For each channel j of ``tensor``, the conv output channels it comes from.

    ``sources[j]`` is empty when channel j comes straight from the graph input (no conv before it), one
    source through channel-aligned ops, several after a residual Add (which ones depends on the residual
    mode the map was built with).
    """

    tensor: str
    sources: tuple[tuple[ChannelSource, ...], ...]

    @property
    def num_channels(self) -> int:
        return len(self.sources)

    def by_layer(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{layer: (tensor_channels, layer_channels)}``: parallel int arrays, for vectorised lookups."""
        pairs: dict[str, tuple[list[int], list[int]]] = {}
        for j, srcs in enumerate(self.sources):
            for s in srcs:
                tj, lj = pairs.setdefault(s.layer, ([], []))
                tj.append(j)
                lj.append(s.channel)
        return {
            k: (np.asarray(t, dtype=np.int64), np.asarray(c, dtype=np.int64)) for k, (t, c) in pairs.items()
        }


# Ops whose output channel j is input 0's channel j (per-channel or channel-independent maps).
ALIGNED_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Clip",
        "Gelu",
        "Mish",
        "Erf",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Sqrt",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "ThresholdedRelu",
        "Identity",
        "Dropout",
        "Cast",
        "BatchNormalization",
        "InstanceNormalization",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "Resize",
        "Upsample",
        "QuantizeLinear",
        "DequantizeLinear",
        "LRN",
        "Pad",
    }
)
# Elementwise ops merging several tensors. At the additive ones a channel comes from every addend, and
# residual="branch" keeps only the addend(s) of greatest conv depth.
ADDITIVE_OPS = frozenset({"Add", "Sum", "Sub", "Mean", "Max", "Min"})
ELEMENTWISE_OPS = ADDITIVE_OPS | {"Mul", "Div", "Pow", "Where"}
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceProd"})
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
RESIDUAL_MODES = ("branch", "all")

Sources = tuple[tuple[ChannelSource, ...], ...]


class ChannelFlow:
    """Traces, for each channel of a tensor, the conv output channels it comes from, walking the graph
    backwards from the tensor and stopping at conv outputs. Results are memoised per (tensor, channel
    axis, residual mode), so mapping every conv input costs one pass over the graph."""

    def __init__(
        self,
        index: GraphIndex,
        layers: Sequence[ConvLayer],
        depth: dict[str, int],
        input_channel_axes: dict[str, int],
    ) -> None:
        self.index = index
        self.conv_by_output = {layer.output: layer for layer in layers}
        self.conv_inputs = {layer.input for layer in layers}
        self.depth = depth
        self.input_channel_axes = input_channel_axes
        self._memo: dict[tuple[str, int, str], Sources] = {}
        self._axis_memo: dict[str, int | None] = {}

    # ---- public -------------------------------------------------------------------------------------
    def channel_map(self, tensor: str, residual: str = "branch") -> ChannelMap:
        if residual not in RESIDUAL_MODES:
            raise ConfigError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        if tensor not in self.index.producer and tensor not in self.index.graph_inputs:
            raise ChannelFlowError(f"tensor {tensor!r} is not in the model; give a tensor name the graph has")
        # A conv reads its input's channels on axis 1 by definition, whatever came before.
        axis = 1 if tensor in self.conv_inputs else self.channel_axis(tensor)
        if axis is None:
            raise ChannelFlowError(
                f"cannot tell which axis of {tensor!r} holds channels (no conv output reaches it along a"
                " channel-keeping path); pick a tensor between convs"
            )
        return ChannelMap(tensor=tensor, sources=self._sources(tensor, axis, residual))

    def channel_axis(self, tensor: str) -> int | None:
        """The axis of ``tensor`` that carries conv channels, followed forward from conv outputs (axis 1)
        and the video input (its layout's C)."""
        if tensor in self._axis_memo:
            return self._axis_memo[tensor]
        self._axis_memo[tensor] = None
        axis = self._forward_axis(tensor)
        self._axis_memo[tensor] = axis
        return axis

    # ---- forward: which axis is the channel axis ------------------------------------------------------
    def _forward_axis(self, tensor: str) -> int | None:
        if tensor in self.input_channel_axes:
            return self.input_channel_axes[tensor]
        node = self.index.producer.get(tensor)
        if node is None or self.index.constant(tensor) is not None:
            return None
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            return 1
        out_rank = self._rank(tensor)
        if op == "Transpose":
            a = self.channel_axis(node.input[0])
            perm = self._perm(node)
            return None if a is None else perm.index(a)
        if op in ALIGNED_OPS or op in ELEMENTWISE_OPS or op in ("Concat", "Split", "Slice"):
            data = node.input[1:] if op == "Where" else node.input
            for inp in data:
                if not inp or self.index.constant(inp) is not None:
                    continue
                a = self.channel_axis(inp)
                rank = self._rank(inp)
                if a is not None and rank is not None and out_rank is not None:
                    return a + (out_rank - rank)
            return None
        if op in REDUCE_OPS:
            a = self.channel_axis(node.input[0])
            axes = self._reduce_axes(node)
            if a is None or axes is None or a in axes:
                return None
            return a if self._attr(node, "keepdims", 1) else a - sum(1 for x in axes if x < a)
        if op in RESHAPE_OPS:
            a = self.channel_axis(node.input[0])
            if a is not None:
                return self._reshape_axis(node.input[0], a, tensor)
            # end of a Reshape-Transpose-Reshape chain (channel shuffle): the channels are whole again
            # where the chain's start had them; the backward trace proves the permutation
            start = node.input[0]
            while (p := self.index.producer.get(start)) is not None and (
                p.op_type in RESHAPE_OPS or p.op_type == "Transpose"
            ):
                start = p.input[0]
            a = self.channel_axis(start)
            return None if a is None else self._reshape_axis(start, a, tensor)
        return None

    # ---- backward: which conv channels feed each channel ----------------------------------------------
    def _sources(self, tensor: str, axis: int, residual: str) -> Sources:
        key = (tensor, axis, residual)
        if key not in self._memo:
            self._memo[key] = self._trace(tensor, axis, residual)
        return self._memo[key]

    def _trace(self, tensor: str, axis: int, residual: str) -> Sources:
        layer = self.conv_by_output.get(tensor)
        if layer is not None:
            if axis != 1:
                raise ChannelFlowError(
                    f"channel axis {axis} of conv output {tensor!r} is not its channel axis 1"
                )
            return tuple((ChannelSource(layer.name, c),) for c in range(layer.out_channels))
        node = self.index.producer.get(tensor)
        if node is None or self.index.constant(tensor) is not None:
            # the graph input (or a constant): channels with no conv before them
            return ((),) * self._channels(tensor, axis)
        op = node.op_type
        if op in ALIGNED_OPS:
            if op == "Pad":
                self._check_pad(node, axis)
            return self._sources(node.input[0], axis, residual)
        if op in ELEMENTWISE_OPS:
            return self._merge(node, tensor, axis, residual)
        if op == "Concat":
            return self._concat(node, tensor, axis, residual)
        if op == "Split":
            return self._split(node, tensor, axis, residual)
        if op == "Slice":
            return self._slice(node, axis, residual)
        if op == "Gather":
            return self._gather(node, tensor, axis, residual)
        if op == "Transpose":
            return self._sources(node.input[0], self._perm(node)[axis], residual)
        if op in REDUCE_OPS:
            axes = self._reduce_axes(node)
            if axes is None:
                raise self._error(node, tensor, "reduces over axes that are not constants")
            if self._attr(node, "keepdims", 1):
                in_axis = axis
            else:
                kept = [a for a in range(self._rank(node.input[0]) or 0) if a not in axes]
                in_axis = kept[axis]
            if in_axis in axes:
                raise self._error(node, tensor, "reduces over the channel axis")
            return self._sources(node.input[0], in_axis, residual)
        if op in RESHAPE_OPS:
            return self._reshape(node, tensor, axis, residual)
        raise self._error(node, tensor, "is not a channel-keeping op onnxcfp knows")

    def _merge(self, node: onnx.NodeProto, tensor: str, axis: int, residual: str) -> Sources:
        """Elementwise merge. Operands that are constants, have no channel axis, have 1 channel, or are
        1 at every axis but batch and channel while the output is not (a squeeze-excite gate, a pooled
        context) scale or shift channels; they do not carry the feature map, so they are not followed."""
        out_shape = self.index.shape(tensor)
        if out_shape is None:
            raise self._error(node, tensor, "has an output of unknown shape")
        out_rank = len(out_shape)
        n_out = self._channels(tensor, axis)
        out_spatial = [d for i, d in enumerate(out_shape) if i not in (0, axis)]
        data = list(node.input[1:] if node.op_type == "Where" else node.input)
        operands: list[tuple[str, int, int]] = []
        for inp in data:
            if not inp or self.index.constant(inp) is not None:
                continue
            shape = self.index.shape(inp)
            if shape is None:
                raise self._error(node, tensor, f"has an input {inp!r} of unknown shape")
            a = axis - (out_rank - len(shape))
            if a < 0 or (shape[a] == 1 and n_out != 1):
                continue
            rest = [d for i, d in enumerate(shape) if i not in (0, a)]
            if all(d == 1 for d in rest) and not all(d == 1 for d in out_spatial) and len(rest) >= 1:
                continue
            operands.append((inp, a, self._channels(inp, a)))
        if not operands:
            raise self._error(node, tensor, "has no operand carrying the channels")
        if residual == "branch" and node.op_type in ADDITIVE_OPS and len(operands) > 1:
            deepest = max(self.depth.get(inp, 0) for inp, _, _ in operands)
            operands = [o for o in operands if self.depth.get(o[0], 0) == deepest]
        traced = [(self._sources(inp, a, residual), n) for inp, a, n in operands]
        merged = []
        for j in range(n_out):
            seen: dict[ChannelSource, None] = {}
            for srcs, n in traced:
                for s in srcs[j if n > 1 else 0]:
                    seen.setdefault(s, None)
            merged.append(tuple(seen))
        return tuple(merged)

    def _concat(self, node: onnx.NodeProto, tensor: str, axis: int, residual: str) -> Sources:
        rank = self._rank(tensor)
        cat_axis = self._attr(node, "axis", 0) % (rank or 1)
        inputs = [i for i in node.input if i]
        if cat_axis == axis:
            out: list[tuple[ChannelSource, ...]] = []
            for inp in inputs:  # Concat offsets: each branch's channels follow the previous branches'
                out.extend(self._sources(inp, axis, residual))
            return tuple(out)
        # Concat along time/space: every channel j comes from channel j of every input.
        traced = [self._sources(inp, axis, residual) for inp in inputs]
        return tuple(
            tuple(dict.fromkeys(s for srcs in traced for s in srcs[j])) for j in range(len(traced[0]))
        )

    def _split(self, node: onnx.NodeProto, tensor: str, axis: int, residual: str) -> Sources:
        src = self._sources(node.input[0], axis, residual)
        rank = self._rank(node.input[0]) or 1
        if self._attr(node, "axis", 0) % rank != axis:
            return src
        n_in = len(src)
        outputs = list(node.output)
        sizes: list[int] | None = None
        if "split" in self._attrs(node):
            sizes = [int(s) for s in self._attr(node, "split", [])]
        elif len(node.input) > 1 and node.input[1]:
            value = self.index.constant(node.input[1])
            if value is None:
                raise self._error(node, tensor, "splits channels by sizes that are not constants")
            sizes = [int(s) for s in value]
        else:
            shapes = [self.index.shape(o) for o in outputs]
            if all(s is not None and isinstance(s[axis], int) for s in shapes):
                sizes = [int(s[axis]) for s in shapes]  # type: ignore[index]
            else:  # equal split; opset 18's num_outputs puts the remainder in the last chunk
                chunk = -(-n_in // len(outputs))
                sizes = [min(chunk, n_in - k * chunk) for k in range(len(outputs))]
        k = outputs.index(tensor)
        start = sum(sizes[:k])
        return src[start : start + sizes[k]]

    def _slice(self, node: onnx.NodeProto, axis: int, residual: str) -> Sources:
        src = self._sources(node.input[0], axis, residual)
        rank = self._rank(node.input[0]) or 1
        args = [self.index.constant(i) if i else None for i in node.input[1:5]]
        starts, ends = args[0], args[1]
        if starts is None or ends is None:
            raise self._error(node, node.output[0], "slices by starts/ends that are not constants")
        axes = args[2] if len(args) > 2 and args[2] is not None else np.arange(len(starts))
        steps = args[3] if len(args) > 3 and args[3] is not None else np.ones(len(starts), dtype=np.int64)
        for k, a in enumerate(int(a) % rank for a in axes):
            if a == axis:
                picked = range(len(src))[slice(int(starts[k]), int(ends[k]), int(steps[k]))]
                return tuple(src[j] for j in picked)
        return src

    def _gather(self, node: onnx.NodeProto, tensor: str, axis: int, residual: str) -> Sources:
        indices = self.index.constant(node.input[1])
        rank = self._rank(node.input[0]) or 1
        g_axis = self._attr(node, "axis", 0) % rank
        if indices is None:
            raise self._error(node, tensor, "gathers by indices that are not constants")
        if indices.ndim == 0:
            in_axis = axis + 1 if axis >= g_axis else axis
            return self._sources(node.input[0], in_axis, residual)
        if indices.ndim != 1:
            raise self._error(node, tensor, "gathers with multi-dimensional indices")
        if axis != g_axis:
            return self._sources(node.input[0], axis, residual)
        src = self._sources(node.input[0], axis, residual)
        return tuple(src[int(i) % len(src)] for i in indices)

    def _reshape(self, node: onnx.NodeProto, tensor: str, axis: int, residual: str) -> Sources:
        """A reshape that keeps the channel axis whole is a rename of the axis. Anything else (channel
        shuffle Reshape-Transpose-Reshape, Flatten of channels with space) is proven by running the
        reshape chain on an array holding each element's channel index: output channel j maps to input
        channel c only when every element of j holds c."""
        a = self._backward_reshape_axis(node.input[0], tensor, axis)
        if a is not None:
            return self._sources(node.input[0], a, residual)
        chain: list[onnx.NodeProto] = [node]
        start = node.input[0]
        while (p := self.index.producer.get(start)) is not None and (
            p.op_type in RESHAPE_OPS or p.op_type == "Transpose"
        ):
            chain.append(p)
            start = p.input[0]
        chain.reverse()
        start_axis = self.channel_axis(start)
        in_shape = self._concrete(start)
        if start_axis is None or in_shape is None:
            raise self._error(
                node, tensor, "reshapes channels and the shapes/axis needed to prove how are unknown"
            )
        labels = np.broadcast_to(
            np.arange(in_shape[start_axis], dtype=np.int64).reshape(
                [-1 if i == start_axis else 1 for i in range(len(in_shape))]
            ),
            in_shape,
        )
        for step in chain:
            if step.op_type == "Transpose":
                labels = np.transpose(labels, self._perm(step))
            else:
                target = self._concrete(step.output[0])
                if target is None or int(np.prod(target)) != labels.size:
                    raise self._error(step, tensor, "reshapes channels and its output shape is not known")
                labels = labels.reshape(target)
        moved = np.moveaxis(labels, axis, 0).reshape(labels.shape[axis], -1)
        if not np.all(moved == moved[:, :1]):
            raise self._error(node, tensor, "mixes channels of its input into one output channel")
        src = self._sources(start, start_axis, residual)
        return tuple(src[int(c)] for c in moved[:, 0])

    # ---- helpers ------------------------------------------------------------------------------------
    def _error(self, node: onnx.NodeProto, tensor: str, why: str) -> ChannelFlowError:
        return ChannelFlowError(
            f"node {self.index.name_of(node)!r} (op {node.op_type}) on the channel path of {tensor!r} {why};"
            " onnxcfp cannot map its channels (simplify the model or report the op)"
        )

    def _attrs(self, node: onnx.NodeProto) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def _attr(self, node: onnx.NodeProto, name: str, default):
        return self._attrs(node).get(name, default)

    def _perm(self, node: onnx.NodeProto) -> list[int]:
        perm = self._attr(node, "perm", None)
        if perm is None:
            return list(range((self._rank(node.input[0]) or 0) - 1, -1, -1))
        return [int(p) for p in perm]

    def _rank(self, tensor: str) -> int | None:
        shape = self.index.shape(tensor)
        return None if shape is None else len(shape)

    def _channels(self, tensor: str, axis: int) -> int:
        shape = self.index.shape(tensor)
        if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
            raise ChannelFlowError(
                f"the channel count of {tensor!r} is unknown; the model needs static channels"
            )
        return int(shape[axis])  # type: ignore[arg-type]

    def _concrete(self, tensor: str) -> list[int] | None:
        """The tensor's shape with symbolic dims (the batch, usually) taken as 1, for index simulation."""
        shape = self.index.shape(tensor)
        if shape is None or any(d is None for d in shape):
            return None
        return [d if isinstance(d, int) else 1 for d in shape]

    def _reduce_axes(self, node: onnx.NodeProto) -> set[int] | None:
        rank = self._rank(node.input[0])
        if rank is None:
            return None
        axes = self._attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self.index.constant(node.input[1])
            if value is None:
                return None
            axes = value.tolist()
        if axes is None or len(axes) == 0:
            return set(range(rank))
        return {int(a) % rank for a in axes}

    def _check_pad(self, node: onnx.NodeProto, axis: int) -> None:
        pads = self.index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if pads is None:
            pads = self._attr(node, "pads", None)
        if pads is None:
            raise self._error(node, node.output[0], "pads by amounts that are not constants")
        pads = [int(p) for p in pads]
        rank = len(pads) // 2
        axes_value = self.index.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axes = (
            [int(a) % (self._rank(node.input[0]) or rank) for a in axes_value]
            if axes_value is not None
            else (list(range(rank)))
        )
        for k, a in enumerate(axes):
            if a == axis and (pads[k] != 0 or pads[k + len(axes)] != 0):
                raise self._error(node, node.output[0], "pads the channel axis")

    def _reshape_axis(self, src: str, src_axis: int, dst: str) -> int | None:
        """Forward: the axis of ``dst`` that is ``src``'s axis ``src_axis`` kept whole, if there is one."""
        s_in, s_out = self.index.shape(src), self.index.shape(dst)
        if s_in is None or s_out is None:
            return None
        for b in range(len(s_out)):
            if s_out[b] == s_in[src_axis] and _same_size(s_in[:src_axis], s_out[:b]):
                return b
        return None

    def _backward_reshape_axis(self, src: str, dst: str, dst_axis: int) -> int | None:
        s_in, s_out = self.index.shape(src), self.index.shape(dst)
        if s_in is None or s_out is None:
            return None
        for a in range(len(s_in)):
            if s_in[a] == s_out[dst_axis] and _same_size(s_in[:a], s_out[:dst_axis]):
                return a
        return None


def _same_size(a: Sequence[int | str | None], b: Sequence[int | str | None]) -> bool:
    """Whether two dim lists have provably the same element count (static product and symbols alike)."""
    if any(d is None for d in (*a, *b)):
        return False
    ints_a = int(np.prod([d for d in a if isinstance(d, int)], dtype=np.int64))
    ints_b = int(np.prod([d for d in b if isinstance(d, int)], dtype=np.int64))
    syms_a = sorted(d for d in a if isinstance(d, str))
    syms_b = sorted(d for d in b if isinstance(d, str))
    return ints_a == ints_b and syms_a == syms_b
