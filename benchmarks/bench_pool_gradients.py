"""MaxPool gradient: the separable-argmax rule vs the Indices rule, as a ratio, both in this process.

For each pooled map (the i3d/s3d zoo pools, the design note's 1x64x8x56x56 maps, a 2-D stem pool) it builds
one session per rule holding the forward MaxPool plus d(Σ r⊙y)/dx, and times the gradient run (min of
--rounds runs after 3 warm-ups, CPU EP, --threads intra-op threads); the plain pool is timed for scale.
The Indices rule is reached by making onnxcfp.gradients.rules.pool.separable_argmax_sizes decline.

    python benchmarks/bench_pool_gradients.py [--rounds 30] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import onnxruntime as ort
from _timing import run_times
from onnx import TensorProto, helper

import onnxcfp.gradients.rules.pool as pool
from onnxcfp.gradients import add_gradients

CASES: list[tuple[list[int], dict]] = [
    ([1, 16, 8, 16, 16], dict(kernel_shape=[3, 3, 3], pads=[1] * 6)),  # i3d/s3d
    ([1, 32, 8, 16, 16], dict(kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1], strides=[1, 2, 2])),  # i3d/s3d
    ([1, 32, 8, 8, 8], dict(kernel_shape=[3, 3, 3], pads=[1] * 6)),  # i3d/s3d
    ([1, 64, 8, 16, 16], dict(kernel_shape=[3, 3, 3], pads=[1] * 6)),
    ([1, 64, 8, 56, 56], dict(kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1], strides=[1, 2, 2])),
    ([1, 64, 8, 56, 56], dict(kernel_shape=[3, 3, 3], pads=[1] * 6, strides=[2, 2, 2])),
    ([1, 64, 8, 56, 56], dict(kernel_shape=[3, 3, 3], pads=[1] * 6)),
    ([1, 64, 112, 112], dict(kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2])),
]


def pool_model(shape: list[int], attrs: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def min_ms(sess: ort.InferenceSession, feeds: dict, names: list[str], rounds: int) -> float:
    return min(run_times(lambda: sess.run(names, feeds), rounds, warmup=3)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    separable_sizes = pool.separable_argmax_sizes
    print(f"threads={args.threads} rounds={args.rounds}; ms = min gradient-run time; x = indices / separable")
    print(f"{'input':22s} {'pool':40s} {'forward':>8s} {'separable':>10s} {'indices':>8s} {'x':>6s}")
    rng = np.random.default_rng(0)
    for shape, attrs in CASES:
        model = pool_model(shape, attrs)
        x = rng.standard_normal(shape).astype(np.float32)
        y = session(model).run(["y"], {"x": x})[0]
        r = rng.standard_normal((1, y.size)).astype(np.float32)
        times = [min_ms(session(model), {"x": x}, ["y"], args.rounds)]
        grads = []
        for use_separable in (True, False):
            pool.separable_argmax_sizes = separable_sizes if use_separable else (lambda *_: None)
            try:
                gg = add_gradients(model, "y", ["x"], "weights")
            finally:
                pool.separable_argmax_sizes = separable_sizes
            sess = session(gg.model)
            feeds = {"x": x, gg.target_input: r}
            names = [gg.grad_outputs["x"]]
            grads.append(sess.run(names, feeds)[0])
            times.append(min_ms(sess, feeds, names, args.rounds))
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)  # same winners, same sums
        desc = " ".join(f"{k[0]}{v}" for k, v in attrs.items()).replace(" ", "")
        fwd, sep, ind = times
        print(f"{shape!s:22s} {desc:40s} {fwd:8.3f} {sep:10.3f} {ind:8.3f} {ind / sep:6.2f}")


if __name__ == "__main__":
    main()
