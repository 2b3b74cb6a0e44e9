"""Pointwise activations and Softmax/LogSoftmax. Masks come from the output Y where that is equivalent
(Relu, LeakyRelu α>0, Clip, HardSigmoid), so the forward Conv keeps a single consumer and onnxruntime
keeps its Conv+activation fusion. Kink conventions follow PyTorch (0 at the kink, strict interiors)."""

from __future__ import annotations

import math

import onnx

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.registry import Grads, rule


def _zero(ctx: GradContext, like: str) -> str:
    return ctx.scalar_like(0.0, like)


@rule("Relu")
def relu(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    return [ctx.op("Where", ctx.op("Greater", y, _zero(ctx, y)), gy, _zero(ctx, y))]


@rule("LeakyRelu")
def leaky_relu(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    alpha = float(node_attrs(node).get("alpha", 0.01))
    gy = gys[0]
    assert gy is not None
    # Y>0 ⇔ X>0 only when α>0; otherwise read the input.
    probe = node.output[0] if alpha > 0 else node.input[0]
    scaled = ctx.op("Mul", gy, ctx.scalar_like(alpha, probe))
    return [ctx.op("Where", ctx.op("Greater", probe, _zero(ctx, probe)), gy, scaled)]


@rule("PRelu")
def prelu(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    x, slope = node.input[0], node.input[1]
    gy = gys[0]
    assert gy is not None
    if need[1]:
        raise ctx.unsupported(node, "its slope depends on the gradient targets (weights get no gradient)")
    return [ctx.op("Where", ctx.op("Greater", x, _zero(ctx, x)), gy, ctx.op("Mul", gy, slope)), None]


@rule("Clip")
def clip(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    if any(need[1:]):
        raise ctx.unsupported(node, "its min/max bounds depend on the gradient targets")
    bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
    conds = []
    if bounds[0]:
        conds.append(ctx.op("Greater", y, bounds[0]))
    if bounds[1]:
        conds.append(ctx.op("Less", y, bounds[1]))
    if not conds:
        return [gy]
    cond = conds[0] if len(conds) == 1 else ctx.op("And", *conds)
    return [ctx.op("Where", cond, gy, _zero(ctx, y))]


@rule("Sigmoid")
def sigmoid(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    one_minus = ctx.op("Sub", ctx.scalar_like(1.0, y), y)
    return [ctx.op("Mul", gy, ctx.op("Mul", y, one_minus))]


@rule("Tanh")
def tanh(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    return [ctx.op("Mul", gy, ctx.op("Sub", ctx.scalar_like(1.0, y), ctx.op("Mul", y, y)))]


@rule("HardSigmoid")
def hard_sigmoid(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    alpha = float(node_attrs(node).get("alpha", 0.2))
    y, gy = node.output[0], gys[0]
    assert gy is not None
    inside = ctx.op("And", ctx.op("Greater", y, _zero(ctx, y)), ctx.op("Less", y, ctx.scalar_like(1.0, y)))
    return [ctx.op("Where", inside, ctx.op("Mul", gy, ctx.scalar_like(alpha, y)), _zero(ctx, y))]


@rule("HardSwish")
def hard_swish(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    x, gy = node.input[0], gys[0]
    assert gy is not None
    slope = ctx.op("Add", ctx.op("Mul", x, ctx.scalar_like(1.0 / 3.0, x)), ctx.scalar_like(0.5, x))
    upper = ctx.op("Where", ctx.op("Greater", x, ctx.scalar_like(3.0, x)), ctx.scalar_like(1.0, x), slope)
    deriv = ctx.op("Where", ctx.op("Less", x, ctx.scalar_like(-3.0, x)), _zero(ctx, x), upper)
    return [ctx.op("Mul", gy, deriv)]


def _axis(node: onnx.NodeProto) -> int:
    return int(node_attrs(node).get("axis", -1))  # opset ≥ 13 default


@rule("Softmax")
def softmax(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    dot = ctx.op("ReduceSum", ctx.op("Mul", gy, y), ctx.ints([_axis(node)]), keepdims=1)
    return [ctx.op("Mul", y, ctx.op("Sub", gy, dot))]


@rule("LogSoftmax")
def log_softmax(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    total = ctx.op("ReduceSum", gy, ctx.ints([_axis(node)]), keepdims=1)
    return [ctx.op("Sub", gy, ctx.op("Mul", ctx.op("Exp", y), total))]


@rule("Exp")
def exp(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    assert gys[0] is not None
    return [ctx.op("Mul", gys[0], node.output[0])]


@rule("Log")
def log(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    assert gys[0] is not None
    return [ctx.op("Div", gys[0], node.input[0])]


@rule("Sqrt")
def sqrt(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    return [ctx.op("Div", ctx.op("Mul", gy, ctx.scalar_like(0.5, y)), y)]


@rule("Reciprocal")
def reciprocal(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    y, gy = node.output[0], gys[0]
    assert gy is not None
    return [ctx.op("Neg", ctx.op("Mul", gy, ctx.op("Mul", y, y)))]


@rule("Neg")
def neg(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    assert gys[0] is not None
    return [ctx.op("Neg", gys[0])]


@rule("Abs")
def abs_(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    assert gys[0] is not None
    return [ctx.op("Mul", gys[0], ctx.op("Sign", node.input[0]))]


@rule("Softplus")
def softplus(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    assert gys[0] is not None
    return [ctx.op("Mul", gys[0], ctx.op("Sigmoid", node.input[0]))]


@rule("Softsign")
def softsign(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    x, gy = node.input[0], gys[0]
    assert gy is not None
    den = ctx.op("Add", ctx.scalar_like(1.0, x), ctx.op("Abs", x))
    return [ctx.op("Div", gy, ctx.op("Mul", den, den))]


@rule("Elu")
def elu(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    alpha = float(node_attrs(node).get("alpha", 1.0))
    x, y, gy = node.input[0], node.output[0], gys[0]
    assert gy is not None
    neg_side = ctx.op("Mul", gy, ctx.op("Add", y, ctx.scalar_like(alpha, y)))  # α·eˣ = y + α for x ≤ 0
    return [ctx.op("Where", ctx.op("Greater", x, _zero(ctx, x)), gy, neg_side)]


@rule("Erf")
def erf(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    x, gy = node.input[0], gys[0]
    assert gy is not None
    gauss = ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x)))
    return [ctx.op("Mul", gy, ctx.op("Mul", gauss, ctx.scalar_like(2.0 / math.sqrt(math.pi), x)))]


@rule("Gelu")
def gelu(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    if node_attrs(node).get("approximate", "none") != "none":
        raise ctx.unsupported(node, "only approximate='none' Gelu has a rule")
    x, gy = node.input[0], gys[0]
    assert gy is not None
    # d/dx x·Φ(x) = Φ(x) + x·φ(x)
    cdf = ctx.op(
        "Mul",
        ctx.scalar_like(0.5, x),
        ctx.op("Add", ctx.scalar_like(1.0, x), ctx.op("Erf", ctx.op("Mul", x, ctx.scalar_like(0.5**0.5, x)))),
    )
    pdf = ctx.op(
        "Mul",
        ctx.op("Exp", ctx.op("Mul", ctx.op("Mul", x, x), ctx.scalar_like(-0.5, x))),
        ctx.scalar_like(1.0 / math.sqrt(2.0 * math.pi), x),
    )
    return [ctx.op("Mul", gy, ctx.op("Add", cdf, ctx.op("Mul", x, pdf)))]
