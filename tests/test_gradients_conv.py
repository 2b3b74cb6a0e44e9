"""Conv and BatchNormalization gradient rules vs central finite differences (onnxruntime, float32).

Conv is linear in x, so a step of 1.0 gives the exact derivative up to float32 rounding of the score:
tolerance 1e-4 relative to max|FD|."""

from __future__ import annotations

import math

import numpy as np
from _gradcheck import check_input_grad, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxcfp.gradients.rules.conv import flipped_kernel


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    group_kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if group_kind == "dense":
        group, cin, cout = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif group_kind == "grouped":
        group = 2
        cin, cout = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    else:
        cin = draw(st.integers(2, 3))
        group, cout = cin, cin * draw(st.integers(1, 2))  # depthwise, with a channel multiplier
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [draw(st.integers(1, 3)) for _ in range(dims)]
    dil = [draw(st.integers(1, 2)) for _ in range(dims)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * dims)]
    if auto_pad.startswith("SAME"):
        dil = [1] * dims  # onnxruntime's forward Conv rejects dilation with SAME_*
    max_side = {1: 9, 2: 7, 3: 5}[dims]
    sizes = []
    for k, d in zip(kernel, dil, strict=True):
        dk = (k - 1) * d + 1
        sizes.append(draw(st.integers(max(dk, 1), max(dk, max_side))))
    batch = draw(st.integers(1, 2))
    return dims, group, cin, cout, kernel, strides, dil, auto_pad, pads, sizes, batch


def _conv_model(cfg, seed: int, symbolic: str = "none"):
    """symbolic: "none" (static shape), "batch" (symbolic N, as exporters write), "spatial" (N, sizes)."""
    dims, group, cin, cout, kernel, strides, dil, auto_pad, pads, sizes, batch = cfg
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dil, "group": group}
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    shape = [batch, cin, *sizes]
    decl = {
        "none": shape,
        "batch": ["N", *shape[1:]],
        "spatial": ["N", cin, *[f"s{i}" for i in range(dims)]],
    }[symbolic]
    model = make_model(
        [helper.make_node("Conv", ["x", "W"], ["y"], **attrs)],
        [("x", np.float32, decl)], "y", [numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    return model, rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(cfg=conv_configs(), rule=st.sampled_from(["auto", "transpose"]))
def test_conv_matches_fd(cfg, rule):
    model, x = _conv_model(cfg, seed=1)
    check_input_grad(model, x, eps=1.0, tol=1e-4, conv_backward=rule)


@settings(max_examples=10, deadline=None)
@given(cfg=conv_configs(), symbolic=st.sampled_from(["batch", "spatial"]))
def test_conv_symbolic_dims_matches_fd(cfg, symbolic):
    if symbolic == "spatial" and cfg[7] in ("SAME_UPPER", "SAME_LOWER") and any(s > 1 for s in cfg[5]):
        cfg = (*cfg[:7], "NOTSET", *cfg[8:])  # SAME with stride > 1 needs static sizes (refused)
    model, x = _conv_model(cfg, seed=2, symbolic=symbolic)
    check_input_grad(model, x, eps=1.0, tol=1e-4, conv_backward="transpose")


def test_flipped_kernel_is_the_adjoint_for_grouped_weights():
    # Independent statement of the regrouping: W'[g·Cg + c, m, k] = W[g·Mg + m, c, flip(k)].
    rng = np.random.default_rng(3)
    g, mg, cg, k = 2, 3, 2, 3
    w = rng.standard_normal((g * mg, cg, k, k))
    wf = flipped_kernel(w, g)
    assert wf.shape == (g * cg, mg, k, k)
    for gi in range(g):
        for c in range(cg):
            for m in range(mg):
                np.testing.assert_array_equal(wf[gi * cg + c, m], w[gi * mg + m, c, ::-1, ::-1])


def test_stride1_constant_weights_use_forward_conv_and_strided_use_convtranspose():
    from onnxcfp.gradients import add_gradients

    cfg1 = (3, 1, 2, 2, [3, 3, 3], [1, 1, 1], [1, 1, 1], "NOTSET", [1] * 6, [4, 5, 5], 1)
    cfg2 = (3, 1, 2, 2, [3, 3, 3], [1, 2, 2], [1, 1, 1], "NOTSET", [1] * 6, [4, 5, 5], 1)
    ops1 = [n.op_type for n in add_gradients(_conv_model(cfg1, 0)[0], "y", ["x"], "weights").model.graph.node]
    ops2 = [n.op_type for n in add_gradients(_conv_model(cfg2, 0)[0], "y", ["x"], "weights").model.graph.node]
    assert ops1.count("Conv") == 2 and "ConvTranspose" not in ops1
    assert ops2.count("ConvTranspose") == 1
    # a symbolic batch still gets the exact-size ConvTranspose (static spatial sizes decide output_padding),
    # not the dynamic full transpose + Pad + Slice
    gg = add_gradients(_conv_model(cfg2, 0, symbolic="batch")[0], "y", ["x"], "weights")
    backward = [n.op_type for n in gg.model.graph.node if n.name.startswith("grad/")]
    assert backward.count("ConvTranspose") == 1 and "Slice" not in backward and "Pad" not in backward


def test_batchnorm_inference_matches_fd():
    rng = np.random.default_rng(4)
    c = 3
    params = {
        "scale": rng.standard_normal(c), "bias": rng.standard_normal(c),
        "mean": rng.standard_normal(c), "var": rng.uniform(0.5, 2.0, c),
    }  # fmt: skip
    for dtype, shape in ((np.float64, [2, c, 3, 2, 2]), (np.float32, [2, c])):
        inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in params.items()]
        bn = helper.make_node(
            "BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3
        )
        model = make_model([bn], [("x", dtype, shape)], "y", inits, opset=15)
        x = rng.standard_normal(shape).astype(dtype)
        check_input_grad(model, x, eps=1.0, tol=1e-5 if dtype == np.float64 else 1e-4)
    # statistics as graph inputs (not constants): the factor is computed in-graph
    scale = rng.standard_normal(c).astype(np.float32)
    bn = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"])
    model = make_model(
        [bn], [("x", np.float32, [1, c, 4]), ("scale", np.float32, [c])], "y",
        [numpy_helper.from_array(params[k].astype(np.float32), k) for k in ("bias", "mean", "var")],
    )  # fmt: skip
    from _gradcheck import analytic, fd_full, rel_err, score_fn

    x = rng.standard_normal((1, c, 4)).astype(np.float32)
    r = rng.standard_normal((1, c, 4)).astype(np.float32)
    feeds = {"x": x, "scale": scale}
    grads, _ = analytic(model, "y", ["x"], feeds, r)
    fd = fd_full(score_fn(model, "y", r), feeds, "x", 1.0)
    assert rel_err(grads["x"], fd) < 1e-4
    assert math.isfinite(float(grads["x"].sum()))
