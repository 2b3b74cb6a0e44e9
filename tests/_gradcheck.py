"""Finite-difference oracles for the gradient tests.

* Per-op tests: score = Σ R ⊙ Y with a fixed random R, evaluated with onnxruntime on the *original* model
  (no backward section involved), compared with add_gradients output element by element.
* Whole models: ``Float64Oracle`` evaluates a float64 copy of the model with onnx's reference evaluator
  (numpy, independent of onnxruntime and of the backward graph) for directional central differences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

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


def with_deltas(
    model: onnx.ModelProto, tensors: Sequence[str], dtype: np.dtype
) -> tuple[onnx.ModelProto, dict]:
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
    model: onnx.ModelProto,
    logits: str,
    wrt: Sequence[str],
    feeds: dict[str, np.ndarray],
    r: np.ndarray,
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
    model: onnx.ModelProto,
    x: np.ndarray,
    eps: float,
    tol: float,
    seed: int = 0,
    x_name: str = "x",
    out: str = "y",
    **kw: object,
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


# ---- float64 whole-model oracle ---------------------------------------------------------------------
# BatchNormalization-9 in the reference evaluator mixes batch statistics into inference (design note §6.11):
# oracle copies of older models are evaluated as opset 15, where every op used here means the same.
_ORACLE_MIN_OPSET = 15


class MaxPool(OpRun):  # the reference evaluator replaces the op of the class's name
    """MaxPool restated as a max over shifted strided views of a −inf-padded input (explicit pads, no
    ceil_mode): the reference evaluator's own pooling indexes past the end on some padded 3-D windows."""

    op_domain = ""

    def _run(  # the evaluator passes every attribute by name
        self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
        storage_order=None, strides=None,
    ):  # fmt: skip
        n = len(kernel_shape)
        if auto_pad not in (None, "", "NOTSET") or ceil_mode:
            raise ValueError("the oracle MaxPool handles explicit pads without ceil_mode only")
        strides = list(strides or [1] * n)
        dilations = list(dilations or [1] * n)
        pads = list(pads or [0] * (2 * n))
        padded = np.pad(x, [(0, 0), (0, 0), *zip(pads[:n], pads[n:], strict=True)], constant_values=-np.inf)
        extent = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations, strict=True)]
        sizes = [(padded.shape[2 + i] - extent[i]) // strides[i] + 1 for i in range(n)]
        y = np.full((*x.shape[:2], *sizes), -np.inf, dtype=x.dtype)
        for offsets in np.ndindex(*kernel_shape):
            view = tuple(
                slice(o * d, o * d + s * (m - 1) + 1, s)
                for o, d, s, m in zip(offsets, dilations, strides, sizes, strict=True)
            )
            y = np.maximum(y, padded[(slice(None), slice(None), *view)])
        return (y,)


def float64_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every float32 weight, constant, cast target and declared type made float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    for info in [*g.input, *g.output, *g.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < _ORACLE_MIN_OPSET:
            imp.version = _ORACLE_MIN_OPSET
    return m


def tie_free(values: np.ndarray) -> np.ndarray:
    """Mask of the entries whose value occurs once in the tensor.

    A tensor holding equal entries (zeros after ReLU; copies a MaxPool with overlapping windows makes of one
    input) has no derivative where those entries meet in a later max: moving them apart by different amounts
    decides the winner, so central differences return the mean of the one-sided slopes while the gradient
    follows the first maximum (PyTorch's convention). Along directions that leave the tied entries alone the
    score is differentiable and FD must agree with the gradient."""
    uniq, counts = np.unique(values, return_counts=True)
    return ~np.isin(values, uniq[counts > 1])


class Float64Oracle:
    """Directional central differences of a score in float64 with onnx's reference evaluator.

    ``tensors`` are intermediates that get an additive delta input (``with_deltas``), so the score can be
    differentiated w.r.t. them as well as w.r.t. the graph input. When the batch axis is symbolic, all
    perturbed copies of the clip(s) run as one stacked batch."""

    def __init__(self, model: onnx.ModelProto, input_name: str, logits: str, tensors: Sequence[str]) -> None:
        probe, self.deltas = with_deltas(model, list(tensors), np.float64)
        self.evaluator = ReferenceEvaluator(float64_copy(probe), new_ops=[MaxPool])
        self.input_name = input_name
        self.logits = logits
        dim0 = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.shape.dim[0]
        self.stackable = not dim0.HasField("dim_value")

    def _feeds(self, x: np.ndarray, perturbed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {self.input_name: perturbed.get(self.input_name, x)}
        for t, d in self.deltas.items():
            # Add(orig, delta) broadcasts, so an unperturbed tensor needs only a 0-d zero.
            feeds[d] = perturbed.get(t, np.zeros(()))
        return feeds

    def values(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        x64 = x.astype(np.float64)
        outs = self.evaluator.run(list(names), self._feeds(x64, {}))
        return dict(zip(names, outs, strict=True))

    def logits_at(self, x: np.ndarray, perturbations: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """Logits (float64, one array per perturbation) with tensor t replaced by t + dt for each (t, dt)."""
        x64 = x.astype(np.float64)
        n = len(x64)
        if not self.stackable:
            runs = [{t: x64 + dt if t == self.input_name else dt} for t, dt in perturbations]
            return [self.evaluator.run([self.logits], self._feeds(x64, p))[0] for p in runs]
        copies = len(perturbations)
        stacked: dict[str, np.ndarray] = {}
        for i, (t, dt) in enumerate(perturbations):
            if t not in stacked:
                base = x64 if t == self.input_name else np.zeros(dt.shape)
                stacked[t] = np.concatenate([base] * copies)
            stacked[t][i * n : (i + 1) * n] += dt
        logits = self.evaluator.run([self.logits], self._feeds(np.concatenate([x64] * copies), stacked))[0]
        return [logits[i * n : (i + 1) * n] for i in range(copies)]
