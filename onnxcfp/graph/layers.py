"""Conv layers of a model: what each Conv node reads, writes and holds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


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
