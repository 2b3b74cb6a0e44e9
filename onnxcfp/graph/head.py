"""The classifier head: the node(s) turning the last conv features into class scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxcfp.errors import HeadNotFoundError
from onnxcfp.graph.model import GraphIndex


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


_PASS_OPS = frozenset(
    {"Identity", "Dropout", "Cast", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"}
)
_POOL_OPS = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "ReduceMax"}
)
_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "HardSwish", "Elu", "Selu", "Clip"})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax"})


@dataclass(frozen=True)
class _Linear:
    kind: str
    weight: np.ndarray  # [out, in]
    bias: np.ndarray  # [out]


def find_head(index: GraphIndex, channel_axis: Callable[[str], int | None]) -> ClassifierHead:
    """Walk back from the first graph output: past a trailing Softmax (the logits are its input), over
    the linear layers (Gemm, MatMul(+Add), 1x1x1 Conv), reshapes and the pooling that reads F.
    Raises ``HeadNotFoundError`` saying where the walk stopped."""
    output = index.graph.output[0].name
    t = output
    softmax_output: str | None = None
    while (node := index.producer.get(t)) is not None and node.op_type in (_PASS_OPS | _SOFTMAX):
        if node.op_type in _SOFTMAX:
            softmax_output, t = t, node.input[0]
            break
        t = node.input[0]
    logits = t if softmax_output is not None else output

    head_nodes: list[onnx.NodeProto] = []
    linears: list[_Linear] = []  # in backward order: the one writing the logits first
    activation_seen = False  # an activation after (in graph order) the linear layers met so far
    nonlinear_between = False
    pooled = False
    t = logits
    while True:
        node = index.producer.get(t)
        if node is None:
            raise HeadNotFoundError(
                f"no classifier head: reached the graph input walking back from {logits!r}"
            )
        op = node.op_type
        head_conv = op == "Conv" and not linears and _is_pointwise(index, node)
        if pooled and op not in ("Identity", "Dropout") and not head_conv:
            break  # t is F: what the pooling (or a 1x1x1 conv head right before it) reads
        lin = _linear(index, node)
        bias_node: onnx.NodeProto | None = None
        if lin is None and op == "Add" and not pooled:
            # MatMul + Add: the bias belongs to the linear layer writing the Add's data input
            data = [i for i in node.input if index.constant(i) is None]
            const = [i for i in node.input if index.constant(i) is not None]
            producer = index.producer.get(data[0]) if len(data) == 1 and len(const) == 1 else None
            inner = _linear(index, producer) if producer is not None else None
            if producer is None or inner is None:
                raise HeadNotFoundError(
                    f"no classifier head: Add {index.name_of(node)!r} after the features is not a linear bias"
                )
            extra = np.asarray(index.constant(const[0]), np.float32).reshape(-1)
            lin = _Linear(inner.kind, inner.weight, inner.bias + np.broadcast_to(extra, inner.bias.shape))
            bias_node, node = node, producer
        if lin is not None:
            if linears and activation_seen:
                nonlinear_between = True
            activation_seen = False
            linears.append(lin)
            head_nodes.extend(n for n in (bias_node, node) if n is not None)
            t = node.input[0]
            continue
        if op in _ACTIVATIONS and linears and not pooled:
            activation_seen = True
        elif op in _POOL_OPS:
            pooled = True
        elif op not in _PASS_OPS:
            raise HeadNotFoundError(
                f"no classifier head: walking back from {logits!r} met {op} {index.name_of(node)!r} before"
                " any global pooling; onnxcfp needs conv features -> pooling -> linear classifier"
            )
        head_nodes.append(node)
        t = node.input[0]
    if not pooled:
        raise HeadNotFoundError(f"no classifier head: no global pooling before {logits!r}")
    if not linears:
        raise HeadNotFoundError(f"no classifier head: no Gemm/MatMul/1x1x1 Conv before {logits!r}")
    features = t
    order = [index.name_of(n) for n in index.graph.node if any(n is h for h in head_nodes)]
    num_classes = int(linears[0].weight.shape[0])
    if len(linears) > 1 and nonlinear_between:
        return ClassifierHead("mlp", tuple(order), features, logits, num_classes, None, None, softmax_output)
    # Several linear layers with nothing between them compose into one: W = W_last ... W_first.
    weight = linears[-1].weight
    bias = linears[-1].bias
    for lin in reversed(linears[:-1]):
        bias = lin.weight @ bias + lin.bias
        weight = lin.weight @ weight
    axis = channel_axis(features)
    shape = index.shape(features)
    if axis is None or shape is None or shape[axis] != weight.shape[1]:
        raise HeadNotFoundError(
            f"no classifier head: the classifier reads {weight.shape[1]} features but {features!r} has"
            f" shape {shape}; onnxcfp needs a global pooling over time and space before the classifier"
        )
    return ClassifierHead(
        kind=linears[0].kind,
        nodes=tuple(order),
        features=features,
        logits=logits,
        num_classes=num_classes,
        weight=np.ascontiguousarray(weight, dtype=np.float32),
        bias=np.ascontiguousarray(bias, dtype=np.float32),
        softmax_output=softmax_output,
    )


def _is_pointwise(index: GraphIndex, node: onnx.NodeProto) -> bool:
    w = index.constant(node.input[1])
    return w is not None and w.ndim >= 3 and all(k == 1 for k in w.shape[2:]) and _group(node) == 1


def _group(node: onnx.NodeProto) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "group"), 1)


def _linear(index: GraphIndex, node: onnx.NodeProto) -> _Linear | None:
    """The node as ``weight @ x + bias`` over its last axis (channels), or None if it is not linear."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Gemm" and not attrs.get("transA", 0):
        b = index.constant(node.input[1])
        if b is None:
            return None
        w = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
        c = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = (
            np.zeros(w.shape[0], np.float32)
            if c is None
            else np.broadcast_to(
                np.asarray(c, np.float32).reshape(-1) * float(attrs.get("beta", 1.0)), (w.shape[0],)
            )
        )
        return _Linear("gemm", np.asarray(w, np.float32), np.asarray(bias, np.float32))
    if op == "MatMul":
        b = index.constant(node.input[1])
        if b is None or b.ndim != 2:
            return None
        return _Linear("matmul", np.asarray(b.T, np.float32), np.zeros(b.shape[1], np.float32))
    if op == "Conv" and _is_pointwise(index, node):
        w = index.constant(node.input[1])
        assert w is not None
        c = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = np.zeros(w.shape[0], np.float32) if c is None else np.asarray(c, np.float32)
        return _Linear("conv1x1", np.asarray(w.reshape(w.shape[0], w.shape[1]), np.float32), bias)
    return None
