"""ReduceSum/Mean/Max/Min/L2/SumSquare, reading axes in both forms: ReduceSum takes an axes *input* from
opset 13, the others an *attribute* below 18 and an input from 18."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.registry import Grads, rule


def _axes(ctx: GradContext, node: onnx.NodeProto) -> list[int] | None:
    """The reduced axes, non-negative; None means "no reduction" (noop_with_empty_axes=1 with no axes)."""
    attrs = node_attrs(node)
    axes: list[int] | None = None
    if "axes" in attrs:
        axes = [int(a) for a in attrs["axes"]]
    elif len(node.input) > 1 and node.input[1]:
        value = ctx.constant(node.input[1])
        if value is None:
            raise ctx.unsupported(node, "its axes are computed at run time")
        axes = [int(a) for a in value.reshape(-1)]
    rank = ctx.rank(node.input[0])
    if not axes:
        if int(attrs.get("noop_with_empty_axes", 0)):
            return None
        if rank is None:
            raise ctx.unsupported(node, "it reduces all axes of an input of unknown rank")
        return list(range(rank))
    if any(a < 0 for a in axes):
        if rank is None:
            raise ctx.unsupported(node, "negative axes on an input of unknown rank")
        axes = [a % rank for a in axes]
    return sorted(axes)


def _keep(ctx: GradContext, node: onnx.NodeProto, t: str, axes: list[int]) -> str:
    """t (shaped like the output) with the reduced axes restored as size-1 axes."""
    if int(node_attrs(node).get("keepdims", 1)):
        return t
    return ctx.op("Unsqueeze", t, ctx.ints(axes))


@rule("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    axes = _axes(ctx, node)
    rest: Grads = [None] * (len(node.input) - 1)
    if axes is None:
        return [gy, *rest]
    gx = ctx.op("Expand", _keep(ctx, node, gy, axes), ctx.shape_of(x))
    if node.op_type == "ReduceMean":
        xs = ctx.shape(x)
        sizes = [xs[a] for a in axes] if xs is not None else [None]
        if all(isinstance(d, int) for d in sizes):
            gx = ctx.op("Mul", gx, ctx.scalar_like(1.0 / float(np.prod(sizes)), x))  # type: ignore[arg-type]
        else:
            ratio = ctx.op(
                "Div",
                ctx.op("Cast", ctx.op("Size", node.output[0]), to=ctx.dtype(x)),
                ctx.op("Cast", ctx.op("Size", x), to=ctx.dtype(x)),
            )
            gx = ctx.op("Mul", gx, ratio)
    return [gx, *rest]


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x, y = node.input[0], node.output[0]
    axes = _axes(ctx, node)
    rest: Grads = [None] * (len(node.input) - 1)
    if axes is None:
        return [gy, *rest]
    hit = ctx.op("Cast", ctx.op("Equal", x, _keep(ctx, node, y, axes)), to=ctx.dtype(x))
    ties = ctx.op("ReduceSum", hit, ctx.ints(axes), keepdims=1)  # ties share the gradient evenly
    return [ctx.op("Mul", hit, ctx.op("Div", _keep(ctx, node, gy, axes), ties)), *rest]


@rule("ReduceL2")
def reduce_l2(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x, y = node.input[0], node.output[0]
    axes = _axes(ctx, node)
    rest: Grads = [None] * (len(node.input) - 1)
    if axes is None:
        return [ctx.op("Mul", gy, ctx.op("Sign", x)), *rest]  # |x| per element
    return [ctx.op("Mul", x, ctx.op("Div", _keep(ctx, node, gy, axes), _keep(ctx, node, y, axes))), *rest]


@rule("ReduceSumSquare")
def reduce_sum_square(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    axes = _axes(ctx, node)
    rest: Grads = [None] * (len(node.input) - 1)
    twice_x = ctx.op("Mul", x, ctx.scalar_like(2.0, x))
    if axes is None:
        return [ctx.op("Mul", gy, twice_x), *rest]
    return [ctx.op("Mul", twice_x, _keep(ctx, node, gy, axes)), *rest]
