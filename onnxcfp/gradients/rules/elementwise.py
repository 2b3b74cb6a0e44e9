"""Broadcasting binary/variadic arithmetic, Where, Expand and Cast. Every operand gradient is reduced back
to the operand's shape with ``ctx.unbroadcast``."""

from __future__ import annotations

import onnx

from onnxcfp.gradients.context import FLOAT_TYPES, GradContext
from onnxcfp.gradients.rules.registry import Grads, rule


@rule("Add", "Sum")  # Sum is a variadic Add
def add(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    return [ctx.unbroadcast(gy, y, x) if n else None for x, n in zip(node.input, need, strict=True)]


@rule("Sub")
def sub(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    a, b = node.input
    return [
        ctx.unbroadcast(gy, y, a) if need[0] else None,
        ctx.unbroadcast(ctx.op("Neg", gy), y, b) if need[1] else None,
    ]


@rule("Mul")
def mul(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    a, b = node.input
    return [
        ctx.unbroadcast(ctx.op("Mul", gy, b), y, a) if need[0] else None,
        ctx.unbroadcast(ctx.op("Mul", gy, a), y, b) if need[1] else None,
    ]


@rule("Div")
def div(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    a, b = node.input
    ga = ctx.op("Div", gy, b)
    return [
        ctx.unbroadcast(ga, y, a) if need[0] else None,
        ctx.unbroadcast(ctx.op("Neg", ctx.op("Mul", ga, y)), y, b) if need[1] else None,  # −gy·Y/B
    ]


@rule("Pow")
def pow_(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    a, b = node.input
    out: Grads = [None, None]
    if need[0]:
        b_f = b if ctx.dtype(b) == ctx.dtype(a) else ctx.op("Cast", b, to=ctx.dtype(a))
        power = ctx.op("Pow", a, ctx.op("Sub", b_f, ctx.scalar_like(1.0, a)))
        out[0] = ctx.unbroadcast(ctx.op("Mul", gy, ctx.op("Mul", b_f, power)), y, a)
    if need[1]:
        a_f = a if ctx.dtype(a) == ctx.dtype(b) else ctx.op("Cast", a, to=ctx.dtype(b))
        gy_b = gy if ctx.dtype(b) == ctx.dtype(y) else ctx.op("Cast", gy, to=ctx.dtype(b))
        y_b = y if ctx.dtype(b) == ctx.dtype(y) else ctx.op("Cast", y, to=ctx.dtype(b))
        out[1] = ctx.unbroadcast(ctx.op("Mul", gy_b, ctx.op("Mul", y_b, ctx.op("Log", a_f))), y, b)
    return out


@rule("Mean")
def mean(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    share = ctx.op("Mul", gy, ctx.scalar_like(1.0 / len(node.input), y))
    return [ctx.unbroadcast(share, y, x) if n else None for x, n in zip(node.input, need, strict=True)]


@rule("Max", "Min")
def max_min(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    if len(node.input) == 1:
        return [gy]
    # Ties split the gradient evenly between the operands that reach the extreme (torch.amax convention).
    masks = [ctx.op("Cast", ctx.op("Equal", x, y), to=ctx.dtype(y)) for x in node.input]
    share = ctx.op("Div", gy, ctx.op("Sum", *masks))
    return [
        ctx.unbroadcast(ctx.op("Mul", share, m), y, x) if n else None
        for x, m, n in zip(node.input, masks, need, strict=True)
    ]


@rule("Where")
def where(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy, y = gys[0], node.output[0]
    assert gy is not None
    cond, a, b = node.input
    zero = ctx.scalar_like(0.0, y)
    return [
        None,
        ctx.unbroadcast(ctx.op("Where", cond, gy, zero), y, a) if need[1] else None,
        ctx.unbroadcast(ctx.op("Where", cond, zero, gy), y, b) if need[2] else None,
    ]


@rule("Expand")
def expand(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    return [ctx.unbroadcast(gy, node.output[0], node.input[0]), None]


@rule("Cast", "CastLike")
def cast(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    if ctx.dtype(x) not in FLOAT_TYPES:
        return [None] * len(node.input)
    return [ctx.op("Cast", gy, to=ctx.dtype(x))] + [None] * (len(node.input) - 1)
