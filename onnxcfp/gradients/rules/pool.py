"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

MaxPool scatters gy onto the argmax positions (the pool's Indices output) with ScatterElements; where
windows overlap one input can win several windows, so the scatter must *add* (MaxUnpool overwrites, which
is wrong) — reduction='add' needs opset 16, which the driver then raises the model to. AveragePool is a
linear map y = (1/D)·S(x): its adjoint scales by the in-graph divisor map and applies the ones-kernel
transposed sum S^T; with stride 1 S^T is itself a sum-pool with mirrored pads (the fast path).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.conv import window
from onnxcfp.gradients.rules.registry import Grads, rule

SCATTER_ADD_OPSET = 16


def _scatter_flat(ctx: GradContext, x: str, indices: str, gy: str, add: bool) -> str:
    """Reshape(ScatterElements(zeros[numel(x)], flat indices, flat gy), shape(x))."""
    static = ctx.static_shape(x)
    if static is not None:
        numel = ctx.ints([int(np.prod(static, dtype=np.int64))])
    else:
        numel = ctx.op("Reshape", ctx.op("Size", x), ctx.ints([1]))
    zero = numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(x)))
    zeros = ctx.op("ConstantOfShape", numel, value=zero)
    flat_i = ctx.op("Reshape", indices, ctx.ints([-1]))
    flat_g = ctx.op("Reshape", gy, ctx.ints([-1]))
    if add:
        ctx.require_opset(SCATTER_ADD_OPSET)
    scattered = ctx.op("ScatterElements", zeros, flat_i, flat_g, axis=0, reduction="add" if add else None)
    return ctx.reshape_like(scattered, x)


@rule("MaxPool")
def max_pool(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    attrs = node_attrs(node)
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    win = window(ctx, node, x, kernel)
    if len(node.output) > 1 and node.output[1] and int(attrs.get("storage_order", 0)) == 0:
        indices = node.output[1]
    else:
        # Recompute a row-major pool with Indices: the forward node keeps its fast no-Indices kernel.
        attrs["storage_order"] = 0
        indices = ctx.emit("MaxPool", [x], 2, **attrs)[1]
    overlapping = any(s < dk for s, dk in zip(win.strides, win.extent, strict=True))
    add = overlapping or ctx.opset >= SCATTER_ADD_OPSET
    return [_scatter_flat(ctx, x, indices, gy, add)]


def pooled_sizes(
    sizes: tuple[int, ...],
    extent: tuple[int, ...],
    strides: tuple[int, ...],
    begin: tuple[int, ...],
    end: tuple[int, ...],
    ceil: bool,
) -> tuple[int, ...]:
    """Output sizes as onnxruntime computes them. With ceil_mode a last window that would start in the end
    padding is dropped (PyTorch's rule); ONNX shape inference does not drop it, so it is not trusted here."""
    out = []
    for size, dk, s, pb, pe in zip(sizes, extent, strides, begin, end, strict=True):
        span = size + pb + pe - dk
        n = (-(-span // s) if ceil else span // s) + 1
        if ceil and (n - 1) * s >= size + pb:
            n -= 1
        out.append(n)
    return tuple(out)


def _explicit_pool_attrs(attrs: dict, begin: tuple[int, ...], end: tuple[int, ...]) -> dict:
    out = {k: v for k, v in attrs.items() if k != "auto_pad"}
    out["pads"] = [*begin, *end]
    return out


@rule("AveragePool")
def average_pool(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    attrs = node_attrs(node)
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    win = window(ctx, node, x, kernel)
    if win.begin is None or win.end is None:
        raise ctx.unsupported(node, "auto_pad SAME with stride > 1 needs static spatial sizes")
    n = len(kernel)
    volume = int(np.prod(kernel))
    padded = any(win.begin) or any(win.end)
    ceil = bool(int(attrs.get("ceil_mode", 0)))
    # Only the spatial sizes must be static; batch and channels may be symbolic (folded into one axis).
    full_shape = ctx.shape(x)
    xs = None
    if full_shape is not None and all(isinstance(d, int) for d in full_shape[2:]):
        xs = (0, 0, *(int(d) for d in full_shape[2:]))  # type: ignore[arg-type]
    ys = (
        None
        if xs is None
        else (0, 0, *pooled_sizes(xs[2:], win.extent, win.strides, win.begin, win.end, ceil))
    )
    # r = 1/divisor per output position; uniform 1/∏k unless pads or ceil_mode clip some windows.
    if not padded and not ceil:
        g = gy
        uniform = True
    else:
        if xs is None or ys is None:
            raise ctx.unsupported(node, "pads/ceil_mode with dynamic spatial sizes are not handled")
        uniform = False
        ones = ctx.const(np.ones((1, 1, *xs[2:]), dtype=ctx.np_dtype(x)), hint="pool_ones")
        kern = ctx.const(np.ones((1, 1, *kernel), dtype=ctx.np_dtype(x)), hint="pool_kernel")
        mean_of_ones = ctx.op("AveragePool", ones, **_explicit_pool_attrs(attrs, win.begin, win.end))  # V/D
        valid = ctx.op(
            "Conv", ones, kern, kernel_shape=list(kernel), strides=list(win.strides),
            dilations=list(win.dilations),
            pads=[*win.begin, *(pe + s - 1 for pe, s in zip(win.end, win.strides, strict=True))],
        )  # fmt: skip  # count of non-pad elements per window (extra end pad covers ceil_mode windows)
        valid = ctx.op("Slice", valid, ctx.ints([0] * n), ctx.ints(ys[2:]), ctx.ints(list(range(2, n + 2))))
        recip = ctx.op("Div", mean_of_ones, ctx.op("Max", valid, ctx.scalar_like(1.0, x)))
        g = ctx.op("Mul", gy, recip)
    fast = (
        all(s == 1 for s in win.strides)
        and all(d == 1 for d in win.dilations)
        and all(p <= k - 1 for p, k in zip(win.begin + win.end, kernel * 2, strict=True))
    )
    if fast:
        mirrored = [k - 1 - p for p, k in zip(win.begin + win.end, kernel * 2, strict=True)]
        pooled = ctx.op("AveragePool", g, kernel_shape=list(kernel), pads=mirrored, count_include_pad=1)
        # AveragePool divides by ∏k; the uniform case also needs 1/∏k, so the two cancel.
        return [pooled if uniform else ctx.op("Mul", pooled, ctx.scalar_like(float(volume), x))]
    if uniform:
        g = ctx.op("Mul", gy, ctx.scalar_like(1.0 / volume, x))
    if xs is None or ys is None:
        raise ctx.unsupported(node, "strided AveragePool with dynamic spatial sizes is not handled")
    kern = ctx.const(np.ones((1, 1, *kernel), dtype=ctx.np_dtype(x)), hint="pool_kernel")
    folded = ctx.op("Reshape", g, ctx.ints([-1, 1, *ys[2:]]))  # channels into batch: one ones-kernel
    full = [s * (o - 1) + dk for s, o, dk in zip(win.strides, ys[2:], win.extent, strict=True)]
    pad_end = [max(f - pb - size, 0) for f, pb, size in zip(full, win.begin, xs[2:], strict=True)]
    out_pad = [max(size + pb - f, 0) for f, pb, size in zip(full, win.begin, xs[2:], strict=True)]
    spread = ctx.op(
        "ConvTranspose", folded, kern, kernel_shape=list(kernel), strides=list(win.strides),
        dilations=list(win.dilations), pads=[*win.begin, *pad_end],
        output_padding=out_pad if any(out_pad) else None,
    )  # fmt: skip
    return [ctx.reshape_like(spread, x)]


@rule("GlobalAveragePool")
def global_average_pool(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    xs = ctx.shape(x)
    spatial = xs[2:] if xs is not None else None
    if spatial is not None and all(isinstance(d, int) for d in spatial):
        scale = ctx.scalar_like(1.0 / float(np.prod(spatial)), x)  # type: ignore[arg-type]
        return [ctx.op("Expand", ctx.op("Mul", gy, scale), ctx.shape_of(x))]
    rank = ctx.rank(x)
    if rank is None:
        raise ctx.unsupported(node, "the rank of its input is unknown")
    count = ctx.op(
        "ReduceProd", ctx.op("Slice", ctx.op("Shape", x), ctx.ints([2]), ctx.ints([rank])), keepdims=0
    )
    mean_g = ctx.op("Div", gy, ctx.op("Cast", count, to=ctx.dtype(x)))
    return [ctx.op("Expand", mean_g, ctx.shape_of(x))]


@rule("GlobalMaxPool")
def global_max_pool(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    x = node.input[0]
    flat = ctx.op("Reshape", x, ctx.ints([0, 0, -1]))
    winner = ctx.op("ArgMax", flat, axis=2, keepdims=1)  # ties: the first maximum, as PyTorch
    zero = numpy_helper.from_array(np.zeros(1, dtype=ctx.np_dtype(x)))
    zeros = ctx.op("ConstantOfShape", ctx.op("Shape", flat), value=zero)
    scattered = ctx.op("ScatterElements", zeros, winner, ctx.op("Reshape", gy, ctx.ints([0, 0, 1])), axis=2)
    return [ctx.reshape_like(scattered, x)]
