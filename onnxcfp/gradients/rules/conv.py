"""Conv (1-D/2-D/3-D, any stride/pad/dilation/group) and inference BatchNormalization.

Conv's input gradient is the adjoint of x ↦ Conv(x, W):
* Rule A (any stride): ConvTranspose(gy, W) with the same strides/dilations/group/pads and
  output_padding = (X + pb + pe − dk) mod s, which restores exactly the remainder the forward floor dropped.
* Rule B (stride 1, constant W, pads ≤ dk−1): a forward Conv with W regrouped and flipped at build time;
  it runs on the forward conv kernels, so it costs what the forward conv costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.registry import Grads, rule


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a Conv/Pool node with auto_pad resolved to explicit pads.

    ``begin``/``end`` are None when auto_pad=SAME with a stride > 1 meets a dynamic spatial size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...] | None
    end: tuple[int, ...] | None

    @property
    def extent(self) -> tuple[int, ...]:
        """dk = (k − 1)·d + 1 per axis: the span one window covers."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True))


def window(ctx: GradContext, node: onnx.NodeProto, x: str, kernel: tuple[int, ...]) -> Window:
    attrs = node_attrs(node)
    n = len(kernel)
    strides = tuple(attrs.get("strides", [1] * n))
    dilations = tuple(attrs.get("dilations", [1] * n))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * (2 * n)))
        return Window(kernel, strides, dilations, tuple(pads[:n]), tuple(pads[n:]))
    if auto_pad == "VALID":
        return Window(kernel, strides, dilations, (0,) * n, (0,) * n)
    shape = ctx.shape(x)
    spatial = shape[2:] if shape is not None and len(shape) == n + 2 else (None,) * n
    begin, end = [], []
    for size, s, dk in zip(spatial, strides, extent, strict=True):
        if s == 1:
            total = dk - 1  # independent of the size when the stride is 1
        elif isinstance(size, int):
            total = max((math.ceil(size / s) - 1) * s + dk - size, 0)
        else:
            return Window(kernel, strides, dilations, None, None)
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return Window(kernel, strides, dilations, tuple(begin), tuple(end))


def flipped_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """W (M, C/g, k…) → W' (C, M/g, k…) flipped spatially: the stride-1 conv adjoint as a forward conv."""
    m, cg = w.shape[:2]
    k = w.shape[2:]
    regrouped = w.reshape(group, m // group, cg, *k).swapaxes(1, 2).reshape(group * cg, m // group, *k)
    return np.ascontiguousarray(np.flip(regrouped, axis=tuple(range(2, w.ndim))))


def conv_transpose_adjoint(
    ctx: GradContext, node: onnx.NodeProto, gy: str, x: str, w: str, win: Window, group: int
) -> str:
    """Rule A: ConvTranspose(gy, w) whose output has exactly X's shape (static or dynamic)."""
    n = len(win.kernel)
    if win.begin is None or win.end is None:
        raise ctx.unsupported(node, "auto_pad SAME with stride > 1 needs static spatial sizes")
    # Only the spatial sizes decide output_padding: a symbolic batch (every exported video model has one)
    # keeps the single exact-size ConvTranspose instead of the larger transpose + Pad + Slice below.
    shape = ctx.shape(x)
    spatial = shape[2:] if shape is not None and len(shape) == n + 2 else None
    if spatial is not None and all(isinstance(d, int) for d in spatial):
        out_pad = [
            (int(size) + pb + pe - dk) % s  # type: ignore[arg-type]
            for size, pb, pe, dk, s in zip(spatial, win.begin, win.end, win.extent, win.strides, strict=True)
        ]
        return ctx.op(
            "ConvTranspose", gy, w, kernel_shape=list(win.kernel), strides=list(win.strides),
            dilations=list(win.dilations), group=group, pads=[*win.begin, *win.end],
            output_padding=out_pad if any(out_pad) else None,
        )  # fmt: skip
    # Dynamic spatial sizes: the full transpose (length s(out−1)+dk), padded by s−1 at the end, then
    # cropped to [pb, pb + X) per axis; pb + X ≤ s(out−1) + dk + s − 1 always holds.
    full = ctx.op(
        "ConvTranspose", gy, w, kernel_shape=list(win.kernel), strides=list(win.strides),
        dilations=list(win.dilations), group=group,
    )  # fmt: skip
    if any(s > 1 for s in win.strides):
        full = ctx.op("Pad", full, ctx.ints([0] * (n + 2) + [0, 0] + [s - 1 for s in win.strides]))
    rank = n + 2
    sizes = ctx.op("Slice", ctx.op("Shape", x), ctx.ints([2]), ctx.ints([rank]))
    ends = ctx.op("Add", sizes, ctx.ints(win.begin))
    return ctx.op("Slice", full, ctx.ints(win.begin), ends, ctx.ints(list(range(2, rank))))


@rule("Conv")
def conv(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    if any(need[1:]):
        raise ctx.unsupported(
            node, "its weights or bias depend on the gradient targets (weights get no gradient)"
        )
    x, w = node.input[0], node.input[1]
    attrs = node_attrs(node)
    group = int(attrs.get("group", 1))
    w_value = ctx.constant(w)
    w_shape = ctx.shape(w)
    if "kernel_shape" in attrs:
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
    elif w_shape is not None and all(isinstance(d, int) for d in w_shape[2:]):
        kernel = tuple(int(d) for d in w_shape[2:])  # type: ignore[arg-type]
    else:
        raise ctx.unsupported(node, "the kernel size is neither an attribute nor a static weight shape")
    win = window(ctx, node, x, kernel)
    none: Grads = [None] * (len(node.input) - 1)
    use_flip = (
        getattr(ctx, "conv_backward", "auto") == "auto"
        and w_value is not None
        and all(s == 1 for s in win.strides)
        and win.begin is not None
        and win.end is not None
        and all(p <= dk - 1 for p, dk in zip(win.begin + win.end, win.extent * 2, strict=True))
    )
    if use_flip:
        assert w_value is not None and win.begin is not None and win.end is not None
        w_flip = ctx.const(flipped_kernel(w_value, group), hint="conv_wflip")
        pads = [dk - 1 - p for p, dk in zip(win.begin + win.end, win.extent * 2, strict=True)]
        gx = ctx.op(
            "Conv",
            gy,
            w_flip,
            kernel_shape=list(kernel),
            dilations=list(win.dilations),
            group=group,
            pads=pads,
        )
        return [gx, *none]
    return [conv_transpose_adjoint(ctx, node, gy, x, w, win, group), *none]


@rule("BatchNormalization")
def batch_norm(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    attrs = node_attrs(node)
    if int(attrs.get("training_mode", 0)):
        raise ctx.unsupported(
            node, "training_mode=1 mixes batch statistics in; export the model in eval mode"
        )
    if any(need[1:]):
        raise ctx.unsupported(node, "its scale/bias/statistics depend on the gradient targets")
    x, scale, var = node.input[0], node.input[1], node.input[4]
    eps = float(attrs.get("epsilon", 1e-5))
    rank = ctx.rank(x)
    if rank is None:
        raise ctx.unsupported(node, "the rank of its input is unknown; run shape inference before exporting")
    scale_v, var_v = ctx.constant(scale), ctx.constant(var)
    bshape = [-1] + [1] * (rank - 2)
    if scale_v is not None and var_v is not None:
        # Fold gx = gy · scale/√(var+ε) into one constant, computed in float64.
        k = scale_v.astype(np.float64) / np.sqrt(var_v.astype(np.float64) + eps)
        factor = ctx.const(k.reshape(bshape).astype(ctx.np_dtype(x)), hint="bn_factor")
    else:
        denom = ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar_like(eps, var)))
        factor = ctx.op("Reshape", ctx.op("Div", scale, denom), ctx.ints(bshape))
    return [ctx.op("Mul", gy, factor), None, None, None, None]
