"""3D ResNets built directly with ``onnx.helper`` and random weights (no torch), for benchmarks and tests.

``build_r3d18`` follows torchvision's ``r3d_18`` layout (VideoResNet, BasicBlock [2, 2, 2, 2], stem
Conv3d(3, 64, (3, 7, 7), stride (1, 2, 2)), 1x1x1 strided projection shortcuts, global average pool,
Linear 512 -> classes). ``build_r3d50`` is the bottleneck variant (Hara et al.'s 3D ResNet-50: stem, 3x3x3
max-pool, bottleneck blocks [3, 4, 6, 3] with expansion 4, so the last stage has 2048 channels).
BatchNormalization nodes are kept (as the dynamo exporter writes them); ``fold_bn=True`` folds them into
the convs (as torch's legacy exporter does in eval mode).

Import from elsewhere with ``sys.path.insert(0, "benchmarks")`` or importlib; run as a script to write
``r3d18.onnx`` / ``r3d50.onnx`` into a folder: ``python benchmarks/r3d.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self, seed: int, fold_bn: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.fold_bn = fold_bn
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def conv_bn(
        self, name: str, x: str, c_in: int, c_out: int, kernel: tuple, stride: tuple, relu: bool
    ) -> str:
        """Conv3d (no bias) + BatchNorm (+ ReLU); He-initialised so random activations stay O(1)."""
        fan_in = c_in * int(np.prod(kernel))
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(c_out, c_in, *kernel)).astype(np.float32)
        gamma = self.rng.uniform(0.5, 1.0, c_out).astype(np.float32)
        beta = self.rng.normal(0.0, 0.1, c_out).astype(np.float32)
        mean = self.rng.normal(0.0, 0.1, c_out).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, c_out).astype(np.float32)
        pads = [k // 2 for k in kernel] * 2
        conv_out = f"{name}.conv"
        if self.fold_bn:
            scale = gamma / np.sqrt(var + 1e-5)
            w = w * scale[:, None, None, None, None]
            b = beta - mean * scale
            self.nodes.append(
                helper.make_node(
                    "Conv", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)], [conv_out],
                    name=f"{name}.conv", kernel_shape=list(kernel), strides=list(stride), pads=pads,
                )
            )
            out = conv_out
        else:
            self.nodes.append(
                helper.make_node(
                    "Conv", [x, self.const(f"{name}.weight", w)], [conv_out], name=f"{name}.conv",
                    kernel_shape=list(kernel), strides=list(stride), pads=pads,
                )
            )
            out = f"{name}.bn"
            self.nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    [conv_out, self.const(f"{name}.bn.scale", gamma), self.const(f"{name}.bn.B", beta),
                     self.const(f"{name}.bn.mean", mean), self.const(f"{name}.bn.var", var)],
                    [out], name=f"{name}.bn", epsilon=1e-5,
                )
            )
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}.relu"))
            out = f"{name}.relu"
        return out

    def add_relu(self, name: str, a: str, b: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}.add"], name=f"{name}.add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}.out"))
        return f"{name}.out"


def _finish(
    b: _Builder, x: str, channels: int, num_classes: int, frames: int, size: int, batch: int | str,
    opset: int, name: str,
) -> onnx.ModelProto:
    # x is F, the last stage's output that the classifier pools and reads
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["avgpool"], ["pooled"], name="flatten", axis=1))
    w = b.rng.normal(0.0, np.sqrt(1.0 / channels), size=(num_classes, channels))
    bias = b.rng.normal(0.0, 0.01, size=num_classes)
    b.nodes.append(
        helper.make_node(
            "Gemm", ["pooled", b.const("fc.weight", w), b.const("fc.bias", bias)], ["logits"],
            name="fc", transB=1,
        )
    )
    video = helper.make_tensor_value_info("video", TensorProto.FLOAT, [batch, 3, frames, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])
    graph = helper.make_graph(b.nodes, name, [video], [logits], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    model.producer_name = "onnxcfp-benchmarks-r3d"
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def build_r3d18(
    num_classes: int = 400, frames: int = 16, size: int = 112, batch: int | str = 1, width: int = 64,
    blocks: tuple[int, ...] = (2, 2, 2, 2), seed: int = 0, fold_bn: bool = False, opset: int = 17,
) -> onnx.ModelProto:
    """torchvision r3d_18 layout with random weights; ``width``/``blocks`` shrink it for tests."""
    b = _Builder(seed, fold_bn)
    x = b.conv_bn("stem", "video", 3, width, (3, 7, 7), (1, 2, 2), relu=True)
    c_in = width
    for stage, n_blocks in enumerate(blocks):
        c_out = width * 2**stage
        for block in range(n_blocks):
            name = f"layer{stage + 1}.{block}"
            stride = (2, 2, 2) if stage > 0 and block == 0 else (1, 1, 1)
            h = b.conv_bn(f"{name}.conv1", x, c_in, c_out, (3, 3, 3), stride, relu=True)
            h = b.conv_bn(f"{name}.conv2", h, c_out, c_out, (3, 3, 3), (1, 1, 1), relu=False)
            shortcut = x
            if stride != (1, 1, 1) or c_in != c_out:
                shortcut = b.conv_bn(f"{name}.downsample", x, c_in, c_out, (1, 1, 1), stride, relu=False)
            x = b.add_relu(name, h, shortcut)
            c_in = c_out
    return _finish(b, x, c_in, num_classes, frames, size, batch, opset, "r3d_18")


def build_r3d50(
    num_classes: int = 400, frames: int = 16, size: int = 112, batch: int | str = 1, width: int = 64,
    blocks: tuple[int, ...] = (3, 4, 6, 3), seed: int = 0, fold_bn: bool = False, opset: int = 17,
) -> onnx.ModelProto:
    """Bottleneck 3D ResNet-50 (last stage 32 x ``width`` = 2048 channels) with random weights."""
    expansion = 4
    b = _Builder(seed, fold_bn)
    x = b.conv_bn("stem", "video", 3, width, (3, 7, 7), (1, 2, 2), relu=True)
    b.nodes.append(
        helper.make_node("MaxPool", [x], ["stem.pool"], name="stem.pool", kernel_shape=[3, 3, 3],
                         strides=[2, 2, 2], pads=[1, 1, 1, 1, 1, 1])
    )
    x = "stem.pool"
    c_in = width
    for stage, n_blocks in enumerate(blocks):
        planes = width * 2**stage
        c_out = planes * expansion
        for block in range(n_blocks):
            name = f"layer{stage + 1}.{block}"
            stride = (2, 2, 2) if stage > 0 and block == 0 else (1, 1, 1)
            h = b.conv_bn(f"{name}.conv1", x, c_in, planes, (1, 1, 1), (1, 1, 1), relu=True)
            h = b.conv_bn(f"{name}.conv2", h, planes, planes, (3, 3, 3), stride, relu=True)
            h = b.conv_bn(f"{name}.conv3", h, planes, c_out, (1, 1, 1), (1, 1, 1), relu=False)
            shortcut = x
            if stride != (1, 1, 1) or c_in != c_out:
                shortcut = b.conv_bn(f"{name}.downsample", x, c_in, c_out, (1, 1, 1), stride, relu=False)
            x = b.add_relu(name, h, shortcut)
            c_in = c_out
    return _finish(b, x, c_in, num_classes, frames, size, batch, opset, "r3d_50")


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    for fname, builder in (("r3d18.onnx", build_r3d18), ("r3d50.onnx", build_r3d50)):
        onnx.save(builder(), out_dir / fname)
        print(out_dir / fname)
