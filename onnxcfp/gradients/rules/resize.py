"""Resize: a linear map separable per axis, y = ×_a M_a x, so its adjoint is one Einsum per resized axis
with M_aᵀ. Each M_a is read off by running the *same* Resize node (same mode, coordinate transform,
rounding, antialias) in onnxruntime on a basis probe at build time, so the matrix matches the runtime's
own interpolation exactly; this needs static sizes and constant scales/sizes."""

from __future__ import annotations

import string

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxcfp.gradients.context import GradContext, node_attrs
from onnxcfp.gradients.rules.registry import Grads, rule


def _probe_matrix(
    node: onnx.NodeProto,
    opset: int,
    rank: int,
    axis: int,
    size_in: int,
    size_out: int,
    roi: np.ndarray | None,
    scales: np.ndarray | None,
) -> np.ndarray:
    """Mᵀ [size_in, size_out] of the node's interpolation along ``axis`` (basis carried on axis 1)."""
    shape = [1] * rank
    shape[1] = size_in
    shape[axis] = size_in
    probe = np.zeros(shape, dtype=np.float32)
    for j in range(size_in):
        idx = [0] * rank
        idx[1] = j
        idx[axis] = j
        probe[tuple(idx)] = 1.0
    inits = []
    inputs = ["probe"]
    if roi is not None:
        roi_p = np.array([0.0] * rank + [1.0] * rank, dtype=np.float32)
        roi_p[axis], roi_p[rank + axis] = roi[axis], roi[rank + axis]
        inits.append(helper.make_tensor("roi", TensorProto.FLOAT, [2 * rank], roi_p.tolist()))
        inputs.append("roi")
    else:
        inputs.append("")
    if scales is not None:
        sc = np.ones(rank, dtype=np.float32)
        sc[axis] = scales[axis]
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [rank], sc.tolist()))
        inputs.append("scales")
    else:
        sizes = list(shape)
        sizes[axis] = size_out
        inputs += ["", "sizes"]
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [rank], sizes))
    attrs = node_attrs(node)
    resize = helper.make_node("Resize", inputs, ["out"], **attrs)
    graph = helper.make_graph(
        [resize], "resize_probe",
        [helper.make_tensor_value_info("probe", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"probe": probe})[0]
    take = [0] * rank
    take[1] = slice(None)
    take[axis] = slice(None)
    mt = np.asarray(out[tuple(take)], dtype=np.float64)
    if mt.shape != (size_in, size_out):
        raise ValueError(f"probe returned {mt.shape}, expected {(size_in, size_out)}")
    return mt


@rule("Resize")
def resize(ctx: GradContext, node: onnx.NodeProto, gys: Grads, need: list[bool]) -> Grads:
    gy = gys[0]
    assert gy is not None
    if any(need[1:]):
        raise ctx.unsupported(node, "its roi/scales/sizes depend on the gradient targets")
    attrs = node_attrs(node)
    if "axes" in attrs or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported(node, "the 'axes' attribute and keep_aspect_ratio_policy are not handled")
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.static_shape(x), ctx.static_shape(y)
    if xs is None or ys is None:
        raise ctx.unsupported(node, "Resize gradients need static input and output shapes")
    extra = [ctx.constant(i) if i else None for i in node.input[1:]]
    extra += [None] * (3 - len(extra))
    named = [bool(i) for i in node.input[1:]] + [False] * (4 - len(node.input))
    if any(n and v is None for n, v in zip(named, extra, strict=True)):
        raise ctx.unsupported(node, "its roi/scales/sizes are computed at run time")
    roi, scales = extra[0], extra[1]
    if scales is not None and scales.size == 0:
        scales = None
    if roi is not None and (
        roi.size == 0 or attrs.get("coordinate_transformation_mode") != "tf_crop_and_resize"
    ):
        roi = None
    rank = len(xs)
    if xs[0] != ys[0] or xs[1] != ys[1]:
        raise ctx.unsupported(node, "it resizes the batch or channel axis")
    letters = string.ascii_lowercase[:rank]
    gx = gy
    for axis in range(2, rank):
        mt = _probe_matrix(node, max(ctx.opset, 13), rank, axis, xs[axis], ys[axis], roi, scales)
        if mt.shape[0] == mt.shape[1] and np.array_equal(mt, np.eye(mt.shape[0])):
            continue  # this axis is not resized
        out_letters = letters[:axis] + "z" + letters[axis + 1 :]
        mt_const = ctx.const(mt.astype(ctx.np_dtype(x)), hint="resize_mt")
        gx = ctx.op("Einsum", gx, mt_const, equation=f"{letters},z{letters[axis]}->{out_letters}")
    return [gx, None, None, None][: len(node.input)]
