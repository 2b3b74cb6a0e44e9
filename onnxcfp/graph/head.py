"""The classifier head: the node(s) turning the last conv features into class scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ClassifierHead:
    """``features`` is F, the tensor the classifier pools and reads (the last conv stage's output, e.g.
    the last ReLU before global pooling); ``logits`` is the tensor of class scores before any Softmax.

    ``weight`` is ``[num_classes, C_F]`` in F's channel order and ``bias`` ``[num_classes]`` for a linear
    head (Gemm/MatMul(+Add) after pooling, or a 1x1x1 Conv head followed by pooling). For a head with
    several layers (``kind == "mlp"``) ``weight``/``bias`` are None and ``linear`` is False: only the
    gradients method can start a pyramid there.
    """

    kind: str  # "gemm" | "matmul" | "conv1x1" | "mlp"
    nodes: tuple[str, ...]  # names of the head's nodes, in graph order
    features: str
    logits: str
    num_classes: int
    weight: np.ndarray | None
    bias: np.ndarray | None
    softmax_output: str | None = None  # the Softmax output that follows the logits, if the graph has one

    @property
    def linear(self) -> bool:
        return self.weight is not None
