"""MaxPool / AveragePool / global pools vs central finite differences.

MaxPool runs in float64 on tie-free data (distinct values 0.01 apart, step 1e-3, so no window changes its
winner): FD is exact and the tolerance is 1e-8. AveragePool has no float64 kernel in onnxruntime; it is
linear, so step 1.0 in float32 (tolerance 1e-4)."""

from __future__ import annotations

import numpy as np
from _gradcheck import check_input_grad, make_model
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
