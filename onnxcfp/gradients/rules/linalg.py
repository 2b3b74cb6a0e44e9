"""Gemm and MatMul (numpy semantics, batch broadcasting, 1-D operands)."""

from __future__ import annotations

import onnx

from onnxcfp.gradients.context import GradContext, StaticShape, node_attrs
from onnxcfp.gradients.rules.registry import Grads, rule


@rule("Gemm")
def gemm(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    attrs = node_attrs(node)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    a, b = node.input[0], node.input[1]
    out: Grads = [None] * len(node.input)
    if need[0]:
        out[0] = (
            ctx.op("Gemm", gy, b, alpha=alpha, transB=1 - tb)
            if ta == 0
            else ctx.op("Gemm", b, gy, alpha=alpha, transA=tb, transB=1)
        )
    if need[1]:
        out[1] = (
            ctx.op("Gemm", a, gy, alpha=alpha, transA=1 - ta)
            if tb == 0
            else ctx.op("Gemm", gy, a, alpha=alpha, transA=1, transB=ta)
        )
    if len(node.input) > 2 and need[2]:
        scaled = gy if beta == 1.0 else ctx.op("Mul", gy, ctx.scalar_like(beta, node.output[0]))
        out[2] = ctx.unbroadcast(scaled, node.output[0], node.input[2])
    return out


def _swap_last(ctx: GradContext, t: str, rank: int) -> str:
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.op("Transpose", t, perm=perm)


@rule("MatMul")
def matmul(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    a, b = node.input
    y = node.output[0]
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra is None or rb is None:
        raise ctx.unsupported(node, "the ranks of its operands are unknown")
    sa, sb, sy = ctx.shape(a), ctx.shape(b), ctx.shape(y)
    out: Grads = [None, None]
    if ra >= 2 and rb >= 2:
        batch: StaticShape | None = sy[:-2] if sy is not None else None
        if need[0]:
            ga_shape = (*batch, *sa[-2:]) if batch is not None and sa is not None else None
            g = ctx.op("MatMul", gy, _swap_last(ctx, b, rb))
            out[0] = ctx.unbroadcast(g, y, a, g_shape=ga_shape)
        if need[1]:
            gb_shape = (*batch, *sb[-2:]) if batch is not None and sb is not None else None
            g = ctx.op("MatMul", _swap_last(ctx, a, ra), gy)
            out[1] = ctx.unbroadcast(g, y, b, g_shape=gb_shape)
        return out
    if rb == 1 and ra >= 2:  # y[..., m] = Σ_k a[..., m, k] b[k]
        gy_col = ctx.op("Unsqueeze", gy, ctx.ints([-1]))
        if need[0]:
            out[0] = ctx.op("Mul", gy_col, b)
        if need[1]:
            prod = ctx.op("MatMul", ctx.op("Unsqueeze", gy, ctx.ints([-2])), a)  # [..., 1, k]
            out[1] = ctx.op("ReduceSum", prod, ctx.ints(list(range(ra - 1))), keepdims=0)
        return out
    if ra == 1 and rb >= 2:  # y[..., n] = Σ_k a[k] b[..., k, n]
        if need[0]:
            prod = ctx.op("MatMul", b, ctx.op("Unsqueeze", gy, ctx.ints([-1])))  # [..., k, 1]
            col = ctx.op("Squeeze", prod, ctx.ints([-1]))
            out[0] = col if rb == 2 else ctx.op("ReduceSum", col, ctx.ints(list(range(rb - 2))), keepdims=0)
        if need[1]:
            outer = ctx.op(
                "Mul", ctx.op("Unsqueeze", a, ctx.ints([-1])), ctx.op("Unsqueeze", gy, ctx.ints([-2]))
            )
            gb_shape = (*sy[:-1], sa[0], sy[-1]) if sy is not None and sa is not None else None
            out[1] = ctx.unbroadcast(outer, y, b, g_shape=gb_shape)
        return out
    # both 1-D: y = a·b (a scalar)
    if need[0]:
        out[0] = ctx.op("Mul", gy, b)
    if need[1]:
        out[1] = ctx.op("Mul", gy, a)
    return out
