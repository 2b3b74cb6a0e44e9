"""Whole-model gradients: a small 3D CNN with every construct of the design note's end-to-end check, the
three score kinds, batching, error reporting, and every zoo model under models/.

Oracle: the gradient onnxruntime computes in float32 through the backward section, projected on a random
unit direction v, against central differences (step 1e-5) of the same score on a float64 copy of the model
run by onnx's reference evaluator (no onnxruntime, no backward graph). Error measure:
|⟨g, v⟩ − FD| / rms⟨g, v⟩, required ≤ 1e-3; measured: ≤ 8e-7 on every zoo model but X3D (7.7e-5).

v is restricted to entries whose value is unique in the tensor: where equal entries later meet in a max (ReLU
zeros in one MaxPool window; the copies an overlapping MaxPool makes of one input, when its output feeds
another overlapping MaxPool as in I3D/S3D) the score has no derivative, FD averages the one-sided slopes and
the gradient follows the first maximum (PyTorch's convention). On I3D's max_pool3d_1, for instance, a
direction over all nonzero entries misses by 7.7e-3·‖g‖ at steps 1e-3 and 1e-5 alike, while the tie-free
direction agrees to 9e-12·‖g‖."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _gradcheck import Float64Oracle, session, tie_free
from onnx import TensorProto, helper, numpy_helper

from onnxcfp.errors import ConfigError, UnsupportedOpError
from onnxcfp.gradients import add_gradients, check_differentiable

ROOT = Path(__file__).resolve().parents[1]


def small_cnn(opset: int = 17, dynamic_batch: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """stem conv s(1,2,2) → BN → ReLU → MaxPool → depthwise conv → HardSwish → squeeze-excite → residual
    → two branches → Concat → LeakyReLU → GAP → Reshape via a Shape path → Gemm (logits)."""
    rng = np.random.default_rng(0)
    inits = []

    def w(name, shape, scale=0.4):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    n = helper.make_node
    nodes = [
        n("Conv", ["x", w("w0", (8, 3, 3, 3, 3))], ["c0"], strides=[1, 2, 2], pads=[1] * 6),
        n("BatchNormalization", ["c0", w("g", (8,)), w("b", (8,)), w("m", (8,)), "v"], ["bn"]),
        n("Relu", ["bn"], ["r0"]),
        n("MaxPool", ["r0"], ["p0"], kernel_shape=[1, 3, 3], strides=[1, 2, 2], pads=[0, 1, 1, 0, 1, 1]),
        n("Conv", ["p0", w("w1", (8, 1, 3, 3, 3))], ["c1"], pads=[1] * 6, group=8),
        *(
            [n("HardSwish", ["c1"], ["h1"])]
            if opset >= 14  # HardSwish is an opset-14 op; older exports emit x·HardSigmoid(x)
            else [n("HardSigmoid", ["c1"], ["hs"], alpha=1 / 6, beta=0.5), n("Mul", ["c1", "hs"], ["h1"])]
        ),
        n("GlobalAveragePool", ["h1"], ["se0"]),
        n("Conv", ["se0", w("w2", (4, 8, 1, 1, 1))], ["se1"]),
        n("Relu", ["se1"], ["se2"]),
        n("Conv", ["se2", w("w3", (8, 4, 1, 1, 1))], ["se3"]),
        n("Sigmoid", ["se3"], ["se4"]),
        n("Mul", ["h1", "se4"], ["se"]),
        n("Add", ["se", "p0"], ["res"]),
        n("Conv", ["res", w("wa", (6, 8, 1, 1, 1))], ["ba"]),
        n("Conv", ["res", w("wb", (6, 8, 3, 3, 3))], ["bb"], strides=[2, 1, 1], pads=[1] * 6),
        n("AveragePool", ["ba"], ["pa"], kernel_shape=[2, 1, 1], strides=[2, 1, 1]),
        n("Concat", ["pa", "bb"], ["cat"], axis=1),
        n("LeakyRelu", ["cat"], ["lr"], alpha=0.1),
        n("GlobalAveragePool", ["lr"], ["gap"]),
        n("Shape", ["gap"], ["shp"]),
        n("Gather", ["shp", "zero"], ["n0"], axis=0),
        n("Unsqueeze", ["n0", "zero1"], ["n1"]),
        n("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        n("Reshape", ["gap", "newshape"], ["feat"]),
        n("Gemm", ["feat", w("wf", (5, 12)), w("bf", (5,))], ["logits"], transB=1),
    ]
    inits += [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "v"),
        numpy_helper.from_array(np.int64(0), "zero"),
        numpy_helper.from_array(np.int64([0]), "zero1"),
        numpy_helper.from_array(np.int64([-1]), "minus1"),
    ]
    batch = "N" if dynamic_batch else 2
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    wrt = ["x", "c0", "r0", "p0", "h1", "se4", "res", "cat", "gap", "feat"]
    return model, wrt


def directional_errors(
    model: onnx.ModelProto,
    logits: str,
    input_name: str,
    x: np.ndarray,
    wrt: list[str],
    score: str,
    target: np.ndarray,
    seed: int = 0,
    eps: float = 1e-5,
    chunk: int = 4,
) -> dict[str, float]:
    """Per wrt tensor t: |⟨g_t, v⟩ − FD_v| / rms_v⟨g_t, v⟩ for one random unit direction v (see module doc).

    g_t is the float32 gradient onnxruntime computes with the backward section; FD_v is the float64 central
    difference of the same score from the reference evaluator. v lives on t's tie-free entries (``tie_free``).
    The denominator ‖g_t ⊙ mask‖/√(#mask) is the root-mean-square of ⟨g_t, v⟩ over such directions, so an
    error of 1e-3 of the gradient's own size anywhere on the mask shows up as about 1e-3."""
    gg = add_gradients(model, logits, wrt, score=score)
    names = [gg.score_output, *gg.grad_outputs.values()]
    if gg.class_output is not None:
        names.append(gg.class_output)
    outs = session(gg.model).run(names, {input_name: x, gg.target_input: target})
    grads = dict(zip(wrt, outs[1 : 1 + len(wrt)], strict=True))
    n = len(x)

    def score_of(z: np.ndarray) -> float:
        z = z.reshape(n, -1)
        if score == "weights":
            return float(np.sum(z * target))
        if score == "probability":
            z = np.exp(z - z.max(1, keepdims=True))
            z /= z.sum(1, keepdims=True)
        return float(z[np.arange(n), outs[-1]].sum())  # the class each clip's score used

    inner = [t for t in wrt if t != input_name]
    oracle = Float64Oracle(model, input_name, logits, inner)
    values = oracle.values(x, [logits, *inner])
    values[input_name] = x.astype(np.float64)
    np.testing.assert_allclose(score_of(values[logits]), float(np.sum(outs[0])), rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(seed)
    directions: dict[str, np.ndarray] = {}
    for t in wrt:
        mask = tie_free(values[t])
        assert mask.any(), f"{t}: no entry is tie-free, nothing to check"
        v = rng.standard_normal(mask.shape) * mask
        directions[t] = v / np.linalg.norm(v)
    worst = {}
    for i in range(0, len(wrt), chunk):
        part = wrt[i : i + chunk]
        perturbations = [(t, sign * eps * directions[t]) for t in part for sign in (1.0, -1.0)]
        logits_pm = oracle.logits_at(x, perturbations)
        for j, t in enumerate(part):
            fd = (score_of(logits_pm[2 * j]) - score_of(logits_pm[2 * j + 1])) / (2 * eps)
            g = grads[t].astype(np.float64)
            mask = directions[t] != 0
            rms = float(np.linalg.norm(g[mask])) / np.sqrt(mask.sum())
            worst[t] = abs(float(np.sum(g * directions[t])) - fd) / max(rms, 1e-30)
    return worst


@pytest.mark.parametrize(
    "opset,score,dynamic",
    [(17, "logit", False), (13, "probability", False), (18, "weights", True), (18, "logit", True)],
)
def test_small_cnn_matches_fd(opset, score, dynamic):
    model, wrt = small_cnn(opset, dynamic)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 12, 12)).astype(np.float32)
    target = (
        np.float32(np.random.default_rng(2).standard_normal((2, 5)))
        if score == "weights"
        else np.int64([3, -1])
    )
    worst = directional_errors(model, "logits", "x", x, wrt, score, target)
    assert max(worst.values()) <= 1e-3, worst


def test_target_class_and_batch_are_per_clip():
    model, _ = small_cnn()
    gg = add_gradients(model, "logits", ["x"], score="logit")
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 12, 12)).astype(np.float32)
    sess = session(gg.model)
    both = sess.run(None, {"x": x, gg.target_input: np.int64([1, -1])})
    names = [o.name for o in gg.model.graph.output]
    out = dict(zip(names, both, strict=True))
    assert out["logits"].shape == (2, 5)  # forward outputs are kept
    top1 = out["logits"].argmax(1)
    np.testing.assert_array_equal(out[gg.class_output], [1, top1[1]])
    np.testing.assert_allclose(out[gg.score_output], out["logits"][[0, 1], [1, top1[1]]], rtol=1e-6)
    # clip 1 alone with class 1 gives the same gradient as clip 0 of the batch (no cross-clip leakage)
    single = add_gradients(small_cnn(dynamic_batch=True)[0], "logits", ["x"], score="logit")
    g0 = session(single.model).run(
        [single.grad_outputs["x"]], {"x": x[:1], single.target_input: np.int64([1])}
    )[0]
    np.testing.assert_allclose(out[gg.grad_outputs["x"]][:1], g0, rtol=1e-4, atol=1e-6)


def test_unsupported_op_names_node_op_and_path():
    n = helper.make_node
    nodes = [
        n("Relu", ["x"], ["a"], name="first"),
        n("LpNormalization", ["a"], ["b"], name="the_norm"),
        n("ReduceSum", ["b", "ax"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.int64([1]), "ax")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    with pytest.raises(UnsupportedOpError) as err:
        add_gradients(model, "y", ["x"])
    msg = str(err.value)
    assert "the_norm" in msg and "LpNormalization" in msg and "x -> a -> [the_norm] -> b -> y" in msg
    assert "\n" not in msg
    problems = check_differentiable(model, "y", ["x"])
    assert len(problems) == 1 and "the_norm" in problems[0]
    # a target after the unsupported op is fine
    assert check_differentiable(model, "y", ["b"]) == []
    with pytest.raises(ConfigError):
        add_gradients(model, "y", ["nope"])


def test_unreached_tensor_gets_zero_gradient_and_roialign_blocks_opset_raise():
    model, _ = small_cnn(opset=13)
    gg = add_gradients(model, "logits", ["x", "shp"][:1], score="logit")
    assert gg.model.opset_import[0].version == 16  # overlapping MaxPool needs ScatterElements(add)


def _zoo_models() -> list[Path]:
    return sorted((ROOT / "models").glob("*.onnx"))


@pytest.mark.skipif(not _zoo_models(), reason="no models/*.onnx yet: the zoo builder has not produced them")
@pytest.mark.parametrize("path", _zoo_models(), ids=lambda p: p.stem)
def test_zoo_model_gradients_match_fd(path):
    model = onnx.load(str(path))
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    input_name = card.get("input", {}).get("name", model.graph.input[0].name)
    shape = card.get("input", {}).get("shape", [1, 3, 16, 64, 64])
    logits = model.graph.output[0].name
    try:  # the graph layer knows the head; fall back to the first output when it is not there yet
        from onnxcfp.graph import load_graph  # type: ignore[attr-defined]

        graph = load_graph(model)
        if graph.head is not None:
            logits = graph.head.logits
    except ImportError:
        pass
    convs = [nd.input[0] for nd in model.graph.node if nd.op_type == "Conv"]
    wrt = list(dict.fromkeys([input_name, *convs]))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    worst = directional_errors(model, logits, input_name, x, wrt, "logit", np.int64([-1]))
    assert max(worst.values()) <= 1e-3, {k: v for k, v in worst.items() if v > 1e-3}
