"""Conv layers of a model: what each Conv node reads, writes and holds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from onnx import helper

from onnxcfp.errors import ModelLoadError
from onnxcfp.graph.model import GraphIndex


class ConvKind(str, Enum):
    """How a conv mixes channels and which axes its kernel spans."""

    FULL3D = "3d"  # kT>1, kH|kW>1, groups=1
    GROUPED = "grouped"  # 1 < groups < C_in
    DEPTHWISE = "depthwise"  # groups == C_in (one input channel per kernel)
    POINTWISE = "pointwise"  # 1x1x1
    SPATIAL = "spatial"  # 1xkxk
    TEMPORAL = "temporal"  # kx1x1
    CONV2D = "2d"  # 4-D weight: a per-frame 2-D conv


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """One Conv node. ``name`` is unique in the graph (a generated one where the node had none).

    ``input`` is the tensor the conv really reads (after BN/ReLU/pool/concat of the previous stage), and
    ``weight`` is ``[C_out, C_in/groups, *kernel]`` as float32 NumPy, resolved through initializers,
    Constant nodes and Identity/Cast/DequantizeLinear chains.
    """

    name: str
    index: int  # position among the graph's convs, in topological order
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray | None
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int
    in_channels: int
    out_channels: int
    kind: ConvKind
    output_shape: tuple[int | str | None, ...]
    conv_depth: int  # most Conv nodes on any path from the graph input to this conv's output, itself included

    @property
    def channels_per_group(self) -> int:
        """How many input channels each kernel reads (C_in / groups)."""
        return self.in_channels // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.channels_per_group == 1


def classify_kind(weight_shape: tuple[int, ...], groups: int) -> ConvKind:
    """Groups decide first (a grouped 1x1x1 conv is "grouped": what matters is which channels each kernel
    reads), then the kernel's extent over T and H×W."""
    if len(weight_shape) != 5:
        return ConvKind.CONV2D
    if groups > 1:
        return ConvKind.DEPTHWISE if weight_shape[1] == 1 else ConvKind.GROUPED
    kt, kh, kw = weight_shape[2:]
    if kt == 1 and kh == 1 and kw == 1:
        return ConvKind.POINTWISE
    if kt == 1:
        return ConvKind.SPATIAL
    if kh == 1 and kw == 1:
        return ConvKind.TEMPORAL
    return ConvKind.FULL3D


def conv_depths(index: GraphIndex) -> dict[str, int]:
    """For every tensor, the most Conv nodes on any path from a graph input to it (constants: 0). Only a
    conv's data input X counts for it: weights are not a path from the clip."""
    depth: dict[str, int] = {}
    for node in index.graph.node:
        inputs = node.input[:1] if node.op_type == "Conv" else node.input
        d = max((depth.get(i, 0) for i in inputs if i), default=0)
        d += 1 if node.op_type == "Conv" else 0
        for out in node.output:
            if out:
                depth[out] = d
    return depth


def extract_layers(index: GraphIndex) -> tuple[ConvLayer, ...]:
    """Every Conv node as a ``ConvLayer``, in topological (file) order."""
    depth = conv_depths(index)
    layers: list[ConvLayer] = []
    for node in index.graph.node:
        if node.op_type != "Conv":
            continue
        name = index.name_of(node)
        weight = index.constant(node.input[1])
        if weight is None:
            raise ModelLoadError(
                f"Conv {name!r} reads weight {node.input[1]!r} that is not a constant; fold constants first"
                " (e.g. onnxsim or onnxruntime's offline optimisation)"
            )
        bias = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        spatial = weight.ndim - 2
        groups = int(attrs.get("group", 1))
        kernel = tuple(int(k) for k in weight.shape[2:])
        pads = tuple(int(p) for p in attrs.get("pads", [0] * (2 * spatial)))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(index.shape(node.input[0]), kernel, attrs, auto_pad) or pads
        out_shape = index.shape(node.output[0]) or ()
        layers.append(
            ConvLayer(
                name=name,
                index=len(layers),
                input=node.input[0],
                output=node.output[0],
                weight=np.ascontiguousarray(weight, dtype=np.float32),
                bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
                kernel=kernel,
                strides=tuple(int(s) for s in attrs.get("strides", [1] * spatial)),
                pads=pads,
                dilations=tuple(int(d) for d in attrs.get("dilations", [1] * spatial)),
                groups=groups,
                in_channels=int(weight.shape[1]) * groups,
                out_channels=int(weight.shape[0]),
                kind=classify_kind(tuple(weight.shape), groups),
                output_shape=tuple(out_shape),
                conv_depth=depth[node.output[0]],
            )
        )
    return tuple(layers)


def _same_pads(
    in_shape: tuple[int | str | None, ...] | None, kernel: tuple[int, ...], attrs: dict, auto_pad: str
) -> tuple[int, ...] | None:
    """Explicit pads for auto_pad=SAME_*, when the input's spatial size is static."""
    if in_shape is None or not all(isinstance(d, int) for d in in_shape[2:]):
        return None
    strides = attrs.get("strides", [1] * len(kernel))
    dilations = attrs.get("dilations", [1] * len(kernel))
    begins, ends = [], []
    for size, k, s, d in zip(in_shape[2:], kernel, strides, dilations, strict=True):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return tuple(begins + ends)
