"""Finite-difference oracle for the gradient tests: score = Σ R ⊙ Y with a fixed random R, evaluated with
onnxruntime on the *original* model (no backward section involved), compared with add_gradients output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxcfp.gradients import add_gradients

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, np.dtype, Sequence[int | str]]],
    output: str,
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, NP_TO_ONNX[np.dtype(d)], list(s)) for n, d, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.UNDEFINED, None)],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model


def with_deltas(model: onnx.ModelProto, tensors: Sequence[str], dtype: np.dtype) -> tuple[onnx.ModelProto, dict]:
    """A copy where each intermediate ``tensor`` becomes tensor_orig + delta, delta a new input: the handle
    for finite differences w.r.t. an intermediate (feed zeros for the deltas not being perturbed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    deltas = {}
    nodes = list(m.graph.node)
    for tensor in tensors:
        orig, delta = tensor + "__orig", tensor + "__delta"
        producer = next(i for i, n in enumerate(nodes) if tensor in n.output)
        outs = nodes[producer].output
        outs[list(outs).index(tensor)] = orig
        nodes.insert(producer + 1, helper.make_node("Add", [orig, delta], [tensor]))
        m.graph.input.append(helper.make_tensor_value_info(delta, NP_TO_ONNX[np.dtype(dtype)], None))
        deltas[tensor] = delta
        m.graph.output.append(helper.make_tensor_value_info(tensor, NP_TO_ONNX[np.dtype(dtype)], None))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.value_info[:]
    return m, deltas


def analytic(
    model: onnx.ModelProto, logits: str, wrt: Sequence[str], feeds: dict[str, np.ndarray], r: np.ndarray,
    **kw: object,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    gg = add_gradients(model, logits, wrt, score="weights", **kw)  # type: ignore[arg-type]
    sess = session(gg.model)
    names = [gg.score_output, *gg.grad_outputs.values()]
    n = r.shape[0]
    outs = sess.run(names, {**feeds, gg.target_input: r.reshape(n, -1)})
    return dict(zip(wrt, outs[1:], strict=True)), outs[0]


def score_fn(model: onnx.ModelProto, logits: str, r: np.ndarray):
    sess = session(model)

    def f(feeds: dict[str, np.ndarray]) -> float:
        y = sess.run([logits], feeds)[0]
        return float(np.sum(y.astype(np.float64) * r.astype(np.float64).reshape(y.shape)))

    return f


def fd_full(f, feeds: dict[str, np.ndarray], name: str, eps: float) -> np.ndarray:
    """Central differences for every element of input ``name``."""
    base = feeds[name]
    grad = np.zeros(base.shape, dtype=np.float64)
    for idx in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (f({**feeds, name: plus}) - f({**feeds, name: minus})) / (2 * eps)
    return grad


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a − b| / max|b| (the design note's measure)."""
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a.astype(np.float64) - b))) / (scale if scale > 0 else 1.0)


def check_input_grad(
    model: onnx.ModelProto, x: np.ndarray, eps: float, tol: float, seed: int = 0, x_name: str = "x",
    out: str = "y", **kw: object,
) -> float:
    """Gradient of Σ R ⊙ out w.r.t. input ``x_name`` vs central FD on every element; returns rel err."""
    rng = np.random.default_rng(seed)
    y = session(model).run([out], {x_name: x})[0]
    r = rng.standard_normal(y.shape).astype(y.dtype)
    grads, _ = analytic(model, out, [x_name], {x_name: x}, r, **kw)
    fd = fd_full(score_fn(model, out, r), {x_name: x}, x_name, eps)
    err = rel_err(grads[x_name], fd)
    assert grads[x_name].shape == x.shape
    assert err <= tol, f"rel err {err:.3g} > {tol}"
    return err
