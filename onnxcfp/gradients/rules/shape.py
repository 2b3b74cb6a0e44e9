"""Data-movement ops: their adjoints move gy back (Reshape, Transpose, Split/Concat, Pad with negated
pads), or, for arbitrary gathers (Slice with steps, Gather, Tile, Pad reflect/edge), scatter gy back
through an index tensor pushed through the same op (``index_scatter``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.pool import SCATTER_ADD_OPSET
from onnxcfp.gradients.rules.registry import Grads, rule


def index_scatter(ctx: GradContext, node: onnx.NodeProto, gy: str, duplicates: bool) -> str:
    """Adjoint of a pure data-movement op f on input 0: push flat indices of x through f, then
    ScatterElements gy to them (adding when f may pick one element several times)."""
    x = node.input[0]
    size = ctx.op("Size", x)
    flat_idx = ctx.op("Range", ctx.const(0, np.int64), size, ctx.const(1, np.int64))
    idx = ctx.op("Reshape", flat_idx, ctx.shape_of(x))
    moved = ctx.emit(node.op_type, [idx, *node.input[1:]], len(node.output), **node_attrs(node))[0]
    zeros = ctx.op(
        "ConstantOfShape",
        ctx.op("Reshape", size, ctx.ints([1])),
        value=numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(x))),
    )
    if duplicates:
        ctx.require_opset(SCATTER_ADD_OPSET)
    flat_moved = ctx.op("Reshape", moved, ctx.ints([-1]))
    flat_gy = ctx.op("Reshape", gy, ctx.ints([-1]))
    reduction = "add" if duplicates else None
    flat = ctx.op("ScatterElements", zeros, flat_moved, flat_gy, axis=0, reduction=reduction)
    return ctx.reshape_like(flat, x)


def _first_only(n_inputs: int, g: str) -> Grads:
    return [g] + [None] * (n_inputs - 1)


@rule("Identity", "Dropout")
def identity(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    return _first_only(len(node.input), gy)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    return _first_only(len(node.input), ctx.reshape_like(gy, node.input[0]))


@rule("Transpose")
def transpose(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    perm = node_attrs(node).get("perm")
    if perm is None:
        rank = ctx.rank(node.input[0])
        if rank is None:
            raise ctx.unsupported(node, "default perm on an input of unknown rank")
        perm = list(reversed(range(rank)))
    inverse = [int(i) for i in np.argsort(perm)]
    return [ctx.op("Transpose", gy, perm=inverse)]


def _axis(ctx: GradContext, node: onnx.NodeProto, default: int) -> int:
    axis = int(node_attrs(node).get("axis", default))
    if axis < 0:
        rank = ctx.rank(node.input[0])
        if rank is None:
            raise ctx.unsupported(node, "negative axis on an input of unknown rank")
        axis += rank
    return axis


@rule("Concat")
def concat(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    axis = _axis(ctx, node, 0)
    sizes = []
    for x in node.input:
        shp = ctx.shape(x)
        sizes.append(shp[axis] if shp is not None and isinstance(shp[axis], int) else None)
    if all(s is not None for s in sizes):
        split = ctx.ints(sizes)  # type: ignore[arg-type]
    else:
        parts = [
            ctx.op("Slice", ctx.op("Shape", x), ctx.ints([axis]), ctx.ints([axis + 1])) for x in node.input
        ]
        split = ctx.op("Concat", *parts, axis=0)
    pieces = ctx.emit("Split", [gy, split], len(node.input), axis=axis)
    return [p if n else None for p, n in zip(pieces, need, strict=True)]


@rule("Split")
def split(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    axis = _axis(ctx, node, 0)
    parts = [g if g is not None else ctx.zeros_like(y) for g, y in zip(gys, node.output, strict=True)]
    return _first_only(len(node.input), ctx.op("Concat", *parts, axis=axis))


@rule("Slice")
def slice_(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    consts = [ctx.constant(i) if i else None for i in node.input[1:]]
    xs = ctx.shape(x)
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 else None
    steps = consts[3] if len(consts) > 3 else None
    given = list(node.input[1:])
    dynamic_input = any(name and c is None for name, c in zip(given, consts, strict=True))
    if xs is not None and starts is not None and ends is not None and not dynamic_input:
        rank = len(xs)
        axes_l = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
        steps_l = [int(s) for s in (steps if steps is not None else [1] * len(starts))]
        if all(s == 1 for s in steps_l) and all(isinstance(xs[a], int) for a in axes_l):
            pads = [0] * (2 * rank)
            for a, s, e in zip(axes_l, starts.tolist(), ends.tolist(), strict=True):
                dim = int(xs[a])  # type: ignore[arg-type]
                s = min(max(s + dim if s < 0 else s, 0), dim)
                e = min(max(e + dim if e < 0 else e, 0), dim)
                pads[a] = s
                pads[rank + a] = dim - max(e, s)
            return _first_only(len(node.input), ctx.op("Pad", gy, ctx.ints(pads)))
    return _first_only(len(node.input), index_scatter(ctx, node, gy, duplicates=False))


@rule("Pad")
def pad(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    mode = node_attrs(node).get("mode", "constant")
    if mode != "constant":
        return _first_only(len(node.input), index_scatter(ctx, node, gy, duplicates=True))
    pads = node.input[1]
    value = ctx.constant(pads)
    negated = ctx.ints((-value).reshape(-1).tolist()) if value is not None else ctx.op("Neg", pads)
    extra = ["", node.input[3]] if len(node.input) > 3 and node.input[3] else []
    # Negative pads crop, so Pad(gy, −pads) is the exact adjoint even for mixed-sign pads.
    return _first_only(len(node.input), ctx.op("Pad", gy, negated, *extra))


@rule("Gather")
def gather(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    return [index_scatter(ctx, node, gy, duplicates=True), None]


@rule("Tile")
def tile(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    return [index_scatter(ctx, node, gy, duplicates=True), None]
