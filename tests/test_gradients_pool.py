"""MaxPool / AveragePool / global pools vs central finite differences.

MaxPool runs in float64 on tie-free data (distinct values 0.01 apart, step 1e-3, so no window changes its
winner): FD is exact and the tolerance is 1e-8. AveragePool has no float64 kernel in onnxruntime; it is
linear, so step 1.0 in float32 (tolerance 1e-4)."""

from __future__ import annotations

import numpy as np
import onnx
from _gradcheck import check_input_grad, make_model, session
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxcfp.gradients import add_gradients
from onnxcfp.gradients.rules.pool import pooled_sizes


@st.composite
def pool_configs(draw, allow_dilation: bool):
    dims = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [draw(st.integers(1, 3)) for _ in range(dims)]
    dil = [draw(st.integers(1, 2)) if allow_dilation else 1 for _ in range(dims)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]  # onnxruntime wants pads < kernel
    ceil = draw(st.integers(0, 1))
    max_side = {1: 9, 2: 6, 3: 5}[dims]
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    sizes = [draw(st.integers(e, max(max_side, e))) for e in extents]
    if ceil:
        # Where ceil_mode's last window would start in the end padding, onnxruntime drops it but ONNX shape
        # inference keeps it; onnxruntime then contradicts its own inferred shapes. Not a gradient question.
        extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True))
        ort_sizes = pooled_sizes(
            tuple(sizes), extent, tuple(strides), tuple(pads[:dims]), tuple(pads[dims:]), True
        )
        onnx_sizes = [
            -(-(n + pb + pe - e) // s) + 1
            for n, e, s, pb, pe in zip(sizes, extent, strides, pads[:dims], pads[dims:], strict=True)
        ]
        assume(list(ort_sizes) == onnx_sizes)
    return dims, kernel, strides, dil, pads, ceil, sizes


def _tie_free(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) * 0.01 - n * 0.005).reshape(shape)


@settings(max_examples=25, deadline=None)
@given(cfg=pool_configs(allow_dilation=True), opset=st.sampled_from([13, 17]), reuse_indices=st.booleans())
def test_maxpool_matches_fd(cfg, opset, reuse_indices):
    _dims, kernel, strides, dil, pads, ceil, sizes = cfg
    outs = ["y", "idx"] if reuse_indices else ["y"]
    node = helper.make_node(
        "MaxPool", ["x"], outs, kernel_shape=kernel, strides=strides, dilations=dil, pads=pads, ceil_mode=ceil
    )
    shape = [2, 2, *sizes]
    model = make_model([node], [("x", np.float64, shape)], "y", opset=opset)
    check_input_grad(model, _tie_free(shape, 0), eps=1e-3, tol=1e-8)


def test_maxpool_overlap_raises_opset_and_non_overlap_keeps_it():
    overlap = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[1, 1])
    model = make_model([overlap], [("x", np.float32, [1, 1, 5, 5])], "y", opset=13)
    version = add_gradients(model, "y", ["x"], "weights").model.opset_import[0].version
    assert version == 16
    tiles = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    model = make_model([tiles], [("x", np.float32, [1, 1, 4, 4])], "y", opset=13)
    assert add_gradients(model, "y", ["x"], "weights").model.opset_import[0].version == 13
    check_input_grad(model, _tie_free([1, 1, 4, 4], 1).astype(np.float32), eps=1e-3, tol=1e-3)


def test_maxpool_auto_pad_same_upper():
    node = helper.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"
    )
    model = make_model([node], [("x", np.float64, [1, 2, 5, 6])], "y")
    check_input_grad(model, _tie_free([1, 2, 5, 6], 2), eps=1e-3, tol=1e-8)


@settings(max_examples=25, deadline=None)
@given(cfg=pool_configs(allow_dilation=False), include_pad=st.integers(0, 1))
def test_averagepool_matches_fd(cfg, include_pad):
    _dims, kernel, strides, _dil, pads, ceil, sizes = cfg
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil,
        count_include_pad=include_pad,
    )  # fmt: skip
    shape = [2, 2, *sizes]
    model = make_model([node], [("x", np.float32, shape)], "y")
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    check_input_grad(model, x, eps=1.0, tol=1e-4)


def test_averagepool_dilation_opset19_and_same_lower():
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 1], dilations=[2, 1], pads=[1, 0, 0, 2]
    )
    model = make_model([node], [("x", np.float32, [1, 2, 7, 6])], "y", opset=19)
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 6)).astype(np.float32)
    check_input_grad(model, x, eps=1.0, tol=1e-4)
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"
    )
    model = make_model([node], [("x", np.float32, [1, 2, 6, 5])], "y")
    check_input_grad(model, x[:, :, :6, :5].copy(), eps=1.0, tol=1e-4)


def test_averagepool_stride1_fast_path_is_used_and_exact():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3, 3], pads=[1, 0, 1, 1, 2, 0])
    model = make_model([node], [("x", np.float32, [1, 2, 4, 5, 5])], "y")
    ops = [n.op_type for n in add_gradients(model, "y", ["x"], "weights").model.graph.node]
    assert "ConvTranspose" not in ops
    x = np.random.default_rng(5).standard_normal((1, 2, 4, 5, 5)).astype(np.float32)
    check_input_grad(model, x, eps=1.0, tol=1e-4)


def test_global_pools_match_fd():
    gap = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    for decl in ([2, 3, 2, 3, 4], ["N", 3, "T", "H", "W"]):  # static, and dynamic sizes
        model = make_model([gap], [("x", np.float32, decl)], "y")
        x = np.random.default_rng(6).standard_normal((2, 3, 2, 3, 4)).astype(np.float32)
        check_input_grad(model, x, eps=1.0, tol=1e-4)
    gmp = helper.make_node("GlobalMaxPool", ["x"], ["y"])
    model = make_model([gmp], [("x", np.float32, [2, 3, 2, 3, 4])], "y", opset=13)
    check_input_grad(model, _tie_free([2, 3, 2, 3, 4], 7).astype(np.float32), eps=1e-3, tol=1e-3)


# ---- the separable-argmax MaxPool gradient: tie-break and shapes ------------------------------------------


def _naive_first_max_grad(x: np.ndarray, gy: np.ndarray, kernel, strides, dil, pads) -> np.ndarray:
    """Independent restatement: every output adds its gradient to its window's first maximum in raster order
    (strict '>' while scanning the window's real elements; padding is skipped, so it never wins)."""
    n = len(kernel)
    gx = np.zeros_like(x, dtype=np.float64)
    for nc in np.ndindex(*x.shape[:2]):
        for out in np.ndindex(*gy.shape[2:]):
            best, where = -np.inf, None
            for offs in np.ndindex(*kernel):
                at = tuple(
                    o * s - pads[i] + f * d
                    for i, (o, s, f, d) in enumerate(zip(out, strides, offs, dil, strict=True))
                )
                if all(0 <= a < x.shape[2 + i] for i, a in enumerate(at)) and (
                    where is None or x[nc + at] > best
                ):
                    best, where = x[nc + at], at
            assert where is not None and len(where) == n
            gx[nc + where] += gy[nc + out]
    return gx


def _pool_grad(model, x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, int]:
    """d Σ r⊙y / dx from add_gradients, and how many MaxPool nodes the augmented model holds."""
    gg = add_gradients(model, "y", ["x"], "weights")
    sess = session(gg.model)
    grad = sess.run([gg.grad_outputs["x"]], {"x": x, gg.target_input: r.reshape(r.shape[0], -1)})[0]
    return grad, sum(n.op_type == "MaxPool" for n in gg.model.graph.node)


@settings(max_examples=25, deadline=None)
@given(
    cfg=pool_configs(allow_dilation=True),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 9),
)
def test_maxpool_ties_match_indices_rule_exactly(cfg, dtype, seed):
    """Data drawn from 3 values (ties in nearly every window); gradients of integer weights are exact sums,
    so the separable path, the Indices path and the naive restatement must agree bit for bit."""
    _dims, kernel, strides, dil, pads, ceil, sizes = cfg
    shape = [2, 2, *sizes]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=shape).astype(dtype)
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dil, pads=pads, ceil_mode=ceil)
    separable = make_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [("x", dtype, shape)], "y")
    indexed = make_model(
        [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], [("x", dtype, shape)], "y"
    )
    y = session(separable).run(["y"], {"x": x})[0]
    r = (rng.integers(1, 4, size=y.shape) * rng.choice([-1, 1], size=y.shape)).astype(dtype)  # never 0
    g_sep, pools_sep = _pool_grad(separable, x, r)
    g_idx, pools_idx = _pool_grad(indexed, x, r)
    assert pools_sep == 1 and pools_idx == 1  # neither recomputed the pool with Indices
    np.testing.assert_array_equal(g_sep, g_idx)
    if not ceil:  # the restatement has no ceil_mode windows
        np.testing.assert_array_equal(g_sep, _naive_first_max_grad(x, r, kernel, strides, dil, pads))


def test_maxpool_separable_dynamic_batch_and_channels():
    node = helper.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=[3, 2, 3], strides=[1, 2, 2], pads=[1, 0, 1, 1, 1, 0]
    )
    model = make_model([node], [("x", np.float64, ["N", "C", 4, 5, 6])], "y")
    ops = [n.op_type for n in add_gradients(model, "y", ["x"], "weights").model.graph.node]
    assert ops.count("MaxPool") == 1 and "ScatterElements" in ops
    check_input_grad(model, _tie_free([2, 3, 4, 5, 6], 8), eps=1e-3, tol=1e-8)


def test_maxpool_dynamic_spatial_falls_back_to_indices():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = make_model([node], [("x", np.float64, [1, 2, "H", "W"])], "y")
    assert [n.op_type for n in add_gradients(model, "y", ["x"], "weights").model.graph.node].count(
        "MaxPool"
    ) == 2
    check_input_grad(model, _tie_free([1, 2, 5, 4], 9), eps=1e-3, tol=1e-8)


def test_maxpool_ceil_mode_window_past_the_pads_and_kernel_one():
    # ceil_mode adds a last window that reaches one element past the input: the rule widens the -inf padding.
    ceil = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3, 2], strides=[2, 2, 2], ceil_mode=1)
    model = make_model([ceil], [("x", np.float64, [1, 2, 5, 5, 3])], "y")
    assert session(model).run(["y"], {"x": _tie_free([1, 2, 5, 5, 3], 10)})[0].shape == (1, 2, 3, 2, 2)
    check_input_grad(model, _tie_free([1, 2, 5, 5, 3], 10), eps=1e-3, tol=1e-8)
    # A 1-element window with a stride is a strided pick: its positions never leave build-time constants.
    pick = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1, 1], strides=[2, 3])
    model = make_model([pick], [("x", np.float64, [2, 2, 5, 7])], "y")
    check_input_grad(model, _tie_free([2, 2, 5, 7], 11), eps=1e-3, tol=1e-8)


def test_maxpool_half_precision_keeps_the_indices_rule():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, None)],
    )  # fmt: skip
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    )
    assert [n.op_type for n in add_gradients(model, "y", ["x"], "weights").model.graph.node].count(
        "MaxPool"
    ) == 2
