"""Per-op gradient rules (activations, arithmetic with broadcasting, reductions, Gemm/MatMul, data
movement, Resize) vs central finite differences of Σ R ⊙ Y, computed with onnxruntime.

float64 with step 1e-6 (tolerance 1e-6) where onnxruntime has float64 kernels; float32 otherwise, with
step 1e-2 on data kept ≥ 0.1 away from kinks (tolerance 1e-3), or step 1.0 for ops linear in x."""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import analytic, fd_full, make_model, rel_err, score_fn, session
from onnx import helper, numpy_helper

F64, F32 = np.float64, np.float32
rng0 = np.random.default_rng(0)


def away(shape, dtype=F64, margin=0.15, scale=2.0):
    """Random values with |x − kink| ≥ margin for kinks at 0, ±1, ±3 (ReLU, Clip, HardSwish...)."""
    x = np.random.default_rng(abs(hash(tuple(shape))) % 2**32).uniform(-scale, scale, shape)
    for kink in (0.0, 1.0, -1.0, 3.0, -3.0, 0.5, -0.5, 2.5, -2.5):
        near = np.abs(x - kink) < margin
        x[near] = kink + margin * np.sign(x[near] - kink + 1e-12)
    return x.astype(dtype)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


S = (2, 3, 4)
# fmt: off
CASES = {
    # activations
    "relu": ([node("Relu", ["x"])], S, F64, [], 13),
    "leakyrelu": ([node("LeakyRelu", ["x"], alpha=0.1)], S, F64, [], 16),
    "leakyrelu_neg_alpha": ([node("LeakyRelu", ["x"], alpha=-0.3)], S, F64, [], 16),
    "prelu": ([node("PRelu", ["x", "s"])], S, F32, [init("s", np.float32([0.1, -0.2, 0.3, 0.4]))], 16),
    "clip_both": (
        [node("Clip", ["x", "lo", "hi"])], S, F64, [init("lo", F64(-1.0)), init("hi", F64(1.0))], 13,
    ),
    "clip_max_only": ([node("Clip", ["x", "", "hi"])], S, F64, [init("hi", F64(0.5))], 13),
    "sigmoid": ([node("Sigmoid", ["x"])], S, F64, [], 13),
    "tanh": ([node("Tanh", ["x"])], S, F64, [], 13),
    "hardsigmoid": ([node("HardSigmoid", ["x"], alpha=0.25, beta=0.4)], S, F32, [], 13),
    "hardswish": ([node("HardSwish", ["x"])], S, F32, [], 14),
    "swish_pattern": ([node("Sigmoid", ["x"], ["s"]), node("Mul", ["x", "s"])], S, F64, [], 13),
    "softmax_axis1": ([node("Softmax", ["x"], axis=1)], S, F64, [], 13),
    "softmax_default": ([node("Softmax", ["x"])], S, F64, [], 13),
    "logsoftmax": ([node("LogSoftmax", ["x"], axis=-1)], S, F64, [], 13),
    "exp_log_sqrt_chain": (
        [node("Exp", ["x"], ["e"]), node("Sqrt", ["e"], ["q"]), node("Log", ["q"], ["l"]),
         node("Neg", ["l"], ["n"]),
         node("Abs", ["n"], ["a"]), node("Reciprocal", ["e"], ["r"]), node("Add", ["a", "r"])],
        S, F64, [], 13,
    ),
    "softplus_erf_elu": (
        [node("Softplus", ["x"], ["p"]), node("Erf", ["p"], ["f"]), node("Elu", ["x"], ["u"], alpha=0.7),
         node("Softsign", ["u"], ["v"]), node("Add", ["f", "v"])],
        S, F32, [], 13,
    ),
    "gelu": ([node("Gelu", ["x"])], S, F32, [], 20),
    # arithmetic with broadcasting
    "add_bcast": ([node("Add", ["x", "b"])], S, F64, [init("b", rng0.standard_normal((3, 1)))], 13),
    "sub_scalar": ([node("Sub", ["b", "x"])], S, F64, [init("b", F64(0.3))], 13),
    "mul_self": ([node("Mul", ["x", "x"])], S, F64, [], 13),
    "mul_bcast_both": (
        [node("Reshape", ["x", "shp"], ["xr"]), node("Mul", ["xr", "b"])], S, F64,
        [init("shp", np.int64([2, 1, 12])), init("b", rng0.standard_normal((5, 1)))], 13,
    ),
    "div_both": ([node("Exp", ["x"], ["e"]), node("Div", ["x", "e"])], S, F64, [], 13),
    "pow_both": ([node("Exp", ["x"], ["e"]), node("Pow", ["e", "x"])], S, F64, [], 15),
    "sum_mean_max_min": (
        [node("Sigmoid", ["x"], ["s"]), node("Sum", ["x", "s", "x"], ["a"]), node("Mean", ["a", "s"], ["m"]),
         node("Max", ["m", "x"], ["mx"]), node("Min", ["mx", "s"])],
        S, F32, [], 13,
    ),
    "where_expand": (
        [node("Greater", ["x", "z"], ["c"]), node("Expand", ["x", "shp"], ["ex"]),
         node("Where", ["c", "ex", "x"])],
        (3, 1, 4), F64, [init("z", F64(0.0)), init("shp", np.int64([2, 3, 5, 4]))], 13,
    ),
    "cast_chain": (
        [node("Cast", ["x"], ["d"], to=11), node("Cast", ["d"], ["f"], to=1), node("Mul", ["f", "f"])],
        S, F32, [], 13,
    ),
    # reductions (attribute axes < 18, input axes ≥ 18)
    "reducemean_attr": ([node("ReduceMean", ["x"], axes=[-1], keepdims=0)], S, F64, [], 13),
    "reducemean_input": (
        [node("ReduceMean", ["x", "ax"], keepdims=1)], S, F64, [init("ax", np.int64([0, 2]))], 18,
    ),
    "reducemean_all": ([node("ReduceMean", ["x"], keepdims=0)], S, F64, [], 18),
    "reducesum_input": (
        [node("ReduceSum", ["x", "ax"], keepdims=0)], S, F64, [init("ax", np.int64([-2]))], 13,
    ),
    "reducemax_attr": ([node("ReduceMax", ["x"], axes=[1])], S, F64, [], 13),
    "reducemin_input": (
        [node("ReduceMin", ["x", "ax"], keepdims=0)], S, F64, [init("ax", np.int64([2]))], 18,
    ),
    "reducel2": ([node("ReduceL2", ["x"], axes=[2])], S, F64, [], 13),
    # linear algebra
    "matmul_bcast": ([node("MatMul", ["x", "b"])], S, F64, [init("b", rng0.standard_normal((4, 5)))], 13),
    "matmul_left": ([node("MatMul", ["b", "x"])], S, F64, [init("b", rng0.standard_normal((2, 5, 3)))], 13),
    "matmul_vec": ([node("MatMul", ["x", "b"])], S, F64, [init("b", rng0.standard_normal(4))], 13),
    "matmul_vec_left": (
        [node("MatMul", ["b", "x"])], (2, 4, 3), F64, [init("b", rng0.standard_normal(4))], 13,
    ),
    # data movement
    "concat_split": (
        [node("Exp", ["x"], ["e"]), node("Concat", ["x", "e", "c"], ["cat"], axis=-1),
         node("Split", ["cat", "sp"], ["s1", "s2"], axis=2), node("Mul", ["s1", "s2"])],
        S, F64, [init("c", rng0.standard_normal((2, 3, 2))), init("sp", np.int64([5, 5]))], 13,
    ),
    "split18_unused_output": (
        [node("Split", ["x"], ["a", "b"], axis=2, num_outputs=2), node("Relu", ["b"])], S, F64, [], 18,
    ),
    "slice_static": (
        [node("Slice", ["x", "st", "en", "ax"])], S, F64,
        [init("st", np.int64([1, -3])), init("en", np.int64([100, -1])), init("ax", np.int64([1, 2]))], 13,
    ),
    "slice_steps": (
        [node("Slice", ["x", "st", "en", "ax", "sp"])], S, F64,
        [init("st", np.int64([-1, 0])), init("en", np.int64([-100, 4])), init("ax", np.int64([2, 1])),
         init("sp", np.int64([-2, 2]))], 13,
    ),
    "reshape_flatten_squeeze": (
        [node("Unsqueeze", ["x", "a0"], ["u"]), node("Reshape", ["u", "shp"], ["r"]),
         node("Squeeze", ["r", "a0"], ["q"]), node("Flatten", ["q"], ["f"], axis=1),
         node("Transpose", ["f"], ["t"], perm=[1, 0]), node("Transpose", ["t"])],
        S, F64, [init("a0", np.int64([0])), init("shp", np.int64([1, 6, 4]))], 13,
    ),
    "identity_dropout": ([node("Identity", ["x"], ["i"]), node("Dropout", ["i"])], S, F64, [], 13),
    "pad_constant_mixed": (
        [node("Pad", ["x", "p"])], S, F64, [init("p", np.int64([0, 1, -1, 1, 0, 2]))], 13,
    ),
    "pad_axes18": (
        [node("Pad", ["x", "p", "", "ax"])], S, F64,
        [init("p", np.int64([2, 1])), init("ax", np.int64([2]))], 18,
    ),
    "pad_reflect": (
        [node("Pad", ["x", "p"], mode="reflect")], S, F64, [init("p", np.int64([0, 0, 2, 0, 0, 1]))], 16,
    ),
    "gather_dup": ([node("Gather", ["x", "i"], axis=2)], S, F64, [init("i", np.int64([[0, 3], [3, 3]]))], 13),
    "tile": ([node("Tile", ["x", "r"])], S, F64, [init("r", np.int64([1, 2, 2]))], 13),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_matches_fd(case):
    nodes, shape, dtype, inits, opset = CASES[case]
    model = make_model(nodes, [("x", dtype, shape)], "y", inits, opset=opset)
    x = away(shape, dtype)
    y = session(model).run(["y"], {"x": x})[0]
    r = np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype)
    grads, _ = analytic(model, "y", ["x"], {"x": x}, r.reshape(1, -1) if y.ndim < 2 else r)
    eps, tol = (1e-6, 1e-6) if dtype == F64 else (1e-2, 1e-3)
    fd = fd_full(score_fn(model, "y", r), {"x": x}, "x", eps)
    assert grads["x"].shape == x.shape
    assert rel_err(grads["x"], fd) <= tol


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_matches_fd_wrt_a_b_c(trans_a, trans_b):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 3) if trans_a else (3, 4))
    b = rng.standard_normal((5, 4) if trans_b else (4, 5))
    c = rng.standard_normal((1, 5))
    g = node("Gemm", ["a", "b", "c"], alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)
    model = make_model([g], [("a", F64, a.shape), ("b", F64, b.shape), ("c", F64, c.shape)], "y")
    feeds = {"a": a, "b": b, "c": c}
    r = rng.standard_normal((3, 5))
    grads, _ = analytic(model, "y", ["a", "b", "c"], feeds, r)
    f = score_fn(model, "y", r)
    for name in feeds:
        assert rel_err(grads[name], fd_full(f, feeds, name, 1e-6)) <= 1e-6


RESIZES = {
    "nearest_2x_asym": (
        dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        [1, 1, 2, 2], None, (1, 2, 3, 4),
    ),
    "nearest_3d_1_2_2": (dict(mode="nearest"), [1, 1, 1, 2, 2], None, (1, 2, 2, 3, 3)),
    "nearest_1_5": (dict(mode="nearest"), [1, 1, 1.5, 1.5], None, (1, 1, 4, 3)),
    "linear_half_pixel": (dict(mode="linear"), [1, 1, 2, 2], None, (1, 2, 3, 4)),
    "linear_align_sizes": (dict(mode="linear", coordinate_transformation_mode="align_corners"), None,
                           [1, 2, 5, 7], (1, 2, 3, 4)),
    "trilinear_pytorch": (dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
                          [1, 1, 2, 2, 2], None, (1, 1, 2, 3, 2)),
    "cubic_2x": (dict(mode="cubic"), [1, 1, 2, 2], None, (1, 1, 3, 4)),
    "linear_down_antialias": (dict(mode="linear", antialias=1), [1, 1, 0.5, 0.5], None, (1, 1, 6, 8)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RESIZES))
def test_resize_matches_fd(case):
    attrs, scales, sizes, shape = RESIZES[case]
    inits = [init("roi", np.zeros(0, np.float32))]
    if scales is not None:
        inits.append(init("sc", np.float32(scales)))
        ins = ["x", "roi", "sc"]
    else:
        inits.append(init("sz", np.int64(sizes)))
        ins = ["x", "roi", "", "sz"]
    model = make_model([node("Resize", ins, **attrs)], [("x", F32, shape)], "y", inits, opset=18)
    x = np.random.default_rng(3).standard_normal(shape).astype(F32)
    y = session(model).run(["y"], {"x": x})[0]
    r = np.random.default_rng(4).standard_normal(y.shape).astype(F32)
    grads, _ = analytic(model, "y", ["x"], {"x": x}, r)
    fd = fd_full(score_fn(model, "y", r), {"x": x}, "x", 1.0)  # Resize is linear in x
    assert rel_err(grads["x"], fd) <= 1e-4
