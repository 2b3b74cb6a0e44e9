"""Small ONNX video models written with onnx.helper, for tests of every stage (no torch needed).

``Net`` is a tiny builder: each method adds one node and returns its output name. The model functions
below cover the structures the graph layer must follow: grouped and depthwise convs, (2+1)D, Concat
branches, Split fibres, residual Adds with identity and projection shortcuts, channel shuffle, squeeze-
excite gates, NTHWC inputs with Transposes, Gemm / MatMul+Add / 1x1x1-conv / MLP heads, and weights that
arrive as Constant nodes or through DequantizeLinear. Also ``expose`` and ``run`` for onnxruntime oracles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10
CLIP_SHAPE = (1, 3, 4, 8, 8)  # N, C, T, H, W


class Net:
    """Builds a graph node by node. ``weights`` picks how conv weights are stored: "init" (initializer),
    "constant" (a Constant node, then Identity), "dq" (int8 initializer through DequantizeLinear), or
    "cast" (float16 initializer through Cast)."""

    def __init__(self, seed: int = 0, weights: str = "init", layout: str = "NCTHW") -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.weights = weights
        self.layout = layout
        self.count = 0

    def _name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None, **attrs) -> str:
        name = name or self._name(op)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs  # type: ignore[return-value]

    def _weight(self, w: np.ndarray, name: str) -> str:
        if self.weights == "constant":
            c = self.node(
                "Constant", [], name=f"{name}_wconst", value=numpy_helper.from_array(w, f"{name}_w")
            )
            return self.node("Identity", [c], name=f"{name}_wid")
        if self.weights == "dq":
            scale = np.float32(np.abs(w).max() / 127.0 or 1.0)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            return self.node("DequantizeLinear", [self.const(q), self.const(scale)], name=f"{name}_dq")
        if self.weights == "cast":
            return self.node(
                "Cast", [self.const(w.astype(np.float16))], name=f"{name}_cast", to=TensorProto.FLOAT
            )
        return self.const(w, f"{name}_w")

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        kernel=(3, 3, 3),
        groups: int = 1,
        stride=(1, 1, 1),
        bias: bool = True,
        name: str | None = None,
    ) -> str:
        name = name or self._name("conv")
        w = self.rng.normal(0, 0.5, (c_out, c_in // groups, *kernel)).astype(np.float32)
        inputs = [x, self._weight(w, name)]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), f"{name}_b"))
        pads = [k // 2 for k in kernel] * 2
        return self.node(
            "Conv",
            inputs,
            name=name,
            kernel_shape=list(kernel),
            group=groups,
            strides=list(stride),
            pads=pads,
        )

    def bn(self, x: str, c: int) -> str:
        params = [
            np.abs(self.rng.normal(1, 0.1, c)),
            self.rng.normal(0, 0.1, c),
            self.rng.normal(0, 0.1, c),
            np.abs(self.rng.normal(1, 0.1, c)),
        ]
        return self.node("BatchNormalization", [x, *(self.const(p.astype(np.float32)) for p in params)])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def cbr(self, x: str, c_in: int, c_out: int, kernel=(3, 3, 3), groups: int = 1, stride=(1, 1, 1)) -> str:
        return self.relu(self.bn(self.conv(x, c_in, c_out, kernel, groups, stride), c_out))

    def gap_flatten(self, x: str) -> str:
        return self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)

    def gemm(self, x: str, c_in: int, k: int) -> str:
        w = self.rng.normal(0, 0.5, (k, c_in)).astype(np.float32)
        return self.node(
            "Gemm", [x, self.const(w), self.const(self.rng.normal(0, 0.1, k).astype(np.float32))], transB=1
        )

    def model(
        self, x_shape: Sequence[int | str], output: str, out_name: str = "probs", softmax: bool = True
    ) -> onnx.ModelProto:
        last = self.node("Softmax", [output], axis=1) if softmax else output
        self.nodes.append(helper.make_node("Identity", [last], [out_name], name="final_identity"))
        graph = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info("clip", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [None, None])],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
        )
        onnx.checker.check_model(model)
        return model


def plain_chain(weights: str = "init", batch: int | str = 1) -> onnx.ModelProto:
    """conv3d-BN-ReLU-MaxPool, pointwise conv, GAP, Gemm, Softmax."""
    n = Net(weights=weights)
    x = n.cbr("clip", 3, 6)
    x = n.node("MaxPool", [x], kernel_shape=[1, 2, 2], strides=[1, 2, 2])
    x = n.cbr(x, 6, 8, kernel=(1, 1, 1))
    return n.model([batch, 3, 4, 8, 8], n.gemm(n.gap_flatten(x), 8, 5))


def resnet_blocks(grouped: bool = False) -> onnx.ModelProto:
    """Stem, one identity-shortcut block, one projection-shortcut block (projection written AFTER the
    branch, as exporters do). ``grouped`` makes the middle convs grouped (ResNeXt)."""
    n = Net(seed=1)
    stem = n.cbr("clip", 3, 8)
    g = 4 if grouped else 1
    a = n.cbr(stem, 8, 8, groups=g)
    b = n.bn(n.conv(a, 8, 8, kernel=(1, 1, 1)), 8)
    x = n.relu(n.node("Add", [b, stem], name="add_identity"))
    a = n.cbr(x, 8, 12, stride=(1, 2, 2), groups=g)
    b = n.bn(n.conv(a, 12, 12, kernel=(1, 1, 1)), 12)
    proj = n.bn(n.conv(x, 8, 12, kernel=(1, 1, 1), stride=(1, 2, 2), name="proj"), 12)
    x = n.relu(n.node("Add", [b, proj], name="add_projection"))
    return n.model([1, 3, 4, 8, 8], n.gemm(n.gap_flatten(x), 12, 5))


def inception() -> onnx.ModelProto:
    """Stem, then three branches (1x1x1; 1x1x1->3x3x3; maxpool->1x1x1) concatenated on channels, then a
    1x1x1 conv head followed by pooling (I3D-style)."""
    n = Net(seed=2)
    stem = n.cbr("clip", 3, 6)
    b1 = n.cbr(stem, 6, 2, kernel=(1, 1, 1))
    b2 = n.cbr(n.cbr(stem, 6, 3, kernel=(1, 1, 1)), 3, 4)
    b3 = n.cbr(
        n.node("MaxPool", [stem], kernel_shape=[3, 3, 3], strides=[1, 1, 1], pads=[1] * 6),
        6,
        3,
        kernel=(1, 1, 1),
    )
    cat = n.node("Concat", [b1, b2, b3], axis=1, name="concat")
    logits = n.conv(cat, 9, 5, kernel=(1, 1, 1), name="logits_conv")
    return n.model([1, 3, 4, 8, 8], n.gap_flatten(logits), softmax=False, out_name="logits")


def fibres() -> onnx.ModelProto:
    """Split into 2 fibres of 4 channels, a conv per fibre, Concat back, a grouped conv, channel shuffle
    (Reshape-Transpose-Reshape), a Slice of channels, residual Add, MatMul+Add head."""
    n = Net(seed=3)
    stem = n.cbr("clip", 3, 8)
    s0, s1 = n.node("Split", [stem, n.const(np.array([4, 4], np.int64))], n_out=2, axis=1, name="split")
    f0 = n.cbr(s0, 4, 4, kernel=(1, 3, 3))
    f1 = n.cbr(s1, 4, 4, kernel=(3, 1, 1))
    cat = n.node("Concat", [f0, f1], axis=1, name="concat")
    g = n.cbr(cat, 8, 8, groups=2)
    r = n.node("Reshape", [g, n.const(np.array([0, 2, 4, 4, 8, 8], np.int64))], name="shuffle_reshape1")
    t = n.node("Transpose", [r], perm=[0, 2, 1, 3, 4, 5], name="shuffle_transpose")
    sh = n.node("Reshape", [t, n.const(np.array([0, 8, 4, 8, 8], np.int64))], name="shuffle_reshape2")
    sl = n.node(
        "Slice",
        [
            sh,
            n.const(np.array([2], np.int64)),
            n.const(np.array([7], np.int64)),
            n.const(np.array([1], np.int64)),
        ],
        name="slice",
    )
    c = n.cbr(sl, 5, 5, kernel=(1, 1, 1))
    d = n.cbr(c, 5, 5, kernel=(3, 3, 3))
    x = n.relu(n.node("Add", [d, c], name="add_identity"))
    pooled = n.node("ReduceMean", [x], axes=[2, 3, 4], keepdims=0)
    w = n.rng.normal(0, 0.5, (5, 5)).astype(np.float32)
    mm = n.node("MatMul", [pooled, n.const(w)])
    logits = n.node("Add", [mm, n.const(n.rng.normal(0, 0.1, 5).astype(np.float32))], name="head_bias")
    return n.model([1, 3, 4, 8, 8], logits)


def x3d_like() -> onnx.ModelProto:
    """(2+1)D stem, depthwise conv with a squeeze-excite gate (Mul by a [N,C,1,1,1] sigmoid), residual Add,
    and an MLP head (Gemm-ReLU-Gemm)."""
    n = Net(seed=4)
    s = n.cbr(n.cbr("clip", 3, 6, kernel=(1, 3, 3)), 6, 6, kernel=(3, 1, 1))
    e = n.cbr(s, 6, 12, kernel=(1, 1, 1))
    dw = n.cbr(e, 12, 12, groups=12)
    gate = n.node(
        "Sigmoid",
        [
            n.conv(
                n.relu(n.conv(n.node("GlobalAveragePool", [dw]), 12, 4, kernel=(1, 1, 1))),
                4,
                12,
                kernel=(1, 1, 1),
            )
        ],
    )
    se = n.node("Mul", [dw, gate], name="se_mul")
    p = n.bn(n.conv(se, 12, 6, kernel=(1, 1, 1)), 6)
    x = n.node("Add", [p, s], name="add_identity")
    h = n.relu(n.gemm(n.gap_flatten(x), 6, 10))
    return n.model([1, 3, 4, 8, 8], n.gemm(h, 10, 5))


def nthwc_tf_style() -> onnx.ModelProto:
    """tf2onnx-style: an N,T,H,W,C input; each conv wrapped in Transposes; BN-free ReLU/Add in NTHWC;
    ReduceMean over T,H,W; MatMul + Add head."""
    n = Net(seed=5)
    to_ncthw, to_nthwc = [0, 4, 1, 2, 3], [0, 2, 3, 4, 1]

    def conv_nthwc(x: str, c_in: int, c_out: int, kernel=(3, 3, 3)) -> str:
        t = n.node("Transpose", [x], perm=to_ncthw)
        return n.node("Transpose", [n.conv(t, c_in, c_out, kernel)], perm=to_nthwc)

    a = n.relu(conv_nthwc("clip", 3, 6))
    b = n.relu(conv_nthwc(a, 6, 6, kernel=(1, 1, 1)))
    x = n.relu(n.node("Add", [b, a], name="add_identity"))
    pooled = n.node("ReduceMean", [x], axes=[1, 2, 3], keepdims=0)
    mm = n.node("MatMul", [pooled, n.const(n.rng.normal(0, 0.5, (6, 5)).astype(np.float32))])
    logits = n.node("Add", [mm, n.const(n.rng.normal(0, 0.1, 5).astype(np.float32))])
    return n.model(["N", 4, 8, 8, 3], logits)


def model_with_op(op: str = "Tile") -> onnx.ModelProto:
    """A chain with an op the channel flow does not know (Tile over channels) between two convs."""
    n = Net(seed=6)
    a = n.cbr("clip", 3, 4)
    t = n.node(op, [a, n.const(np.array([1, 2, 1, 1, 1], np.int64))], name="odd_op")
    b = n.cbr(t, 8, 4, kernel=(1, 1, 1))
    return n.model([1, 3, 4, 8, 8], n.gemm(n.gap_flatten(b), 4, 3))


ALL_BUILDERS = {
    "plain_chain": plain_chain,
    "plain_chain_constant": lambda: plain_chain(weights="constant"),
    "plain_chain_dq": lambda: plain_chain(weights="dq"),
    "plain_chain_cast": lambda: plain_chain(weights="cast"),
    "resnet_blocks": resnet_blocks,
    "resnext_blocks": lambda: resnet_blocks(grouped=True),
    "inception": inception,
    "fibres": fibres,
    "x3d_like": x3d_like,
    "nthwc_tf_style": nthwc_tf_style,
}


def expose(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``tensors`` added as graph outputs, typed by shape inference."""
    out = onnx.shape_inference.infer_shapes(model)
    typed = {vi.name: vi for vi in [*out.graph.value_info, *out.graph.input]}
    have = {o.name for o in out.graph.output}
    for t in tensors:
        if t not in have:
            out.graph.output.append(typed[t])
            have.add(t)
    return out


def run(model: onnx.ModelProto, clip: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Run ``model`` on CPU with one thread and return the named outputs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the oracle's replaced biases leave unused initializers: expected
    # no fusions: we perturb biases and read intermediate tensors exactly as the graph states them
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    values = sess.run(list(outputs), {name: clip})
    return dict(zip(outputs, values, strict=True))
