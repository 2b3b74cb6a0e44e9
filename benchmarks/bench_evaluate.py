"""Evaluation speed: batched deletion+insertion curves vs one model call per step, and the synthetic
dataset's generation rate. Prints ratios measured in this process (no absolute thresholds).

    python benchmarks/bench_evaluate.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxcfp.datasets import make_clips
from onnxcfp.evaluate import saliency_curves, saliency_order

SHAPE = (3, 16, 64, 64)


def tiny_model() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.2, size=(8, 3, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 6, strides=[1, 2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 8])],
        [w, fc],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    ).SerializeToString()


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(tiny_model(), options, providers=["CPUExecutionProvider"])

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(["p"], {"x": batch})[0]

    rng = np.random.default_rng(1)
    clip = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    sal = rng.random(SHAPE[1:])
    steps = 20

    def per_step() -> None:
        x = clip[0]
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        order = saliency_order(sal)
        for i in range(steps + 1):
            k = round(i * sal.size / steps)
            drop = np.zeros(sal.size, dtype=bool)
            drop[order[:k]] = True
            y = np.where(drop.reshape(sal.shape)[None], mean, x)
            predict(y[None].astype(np.float32))
            z = np.where(drop.reshape(sal.shape)[None], x, mean)
            predict(z[None].astype(np.float32))

    batched = best_of(lambda: saliency_curves(predict, clip, sal, target=0, steps=steps))
    looped = best_of(per_step)
    print(
        f"deletion+insertion, {steps} steps, 3x16x64x64: batched {batched * 1e3:.0f} ms, "
        f"per-step {looped * 1e3:.0f} ms, per-step/batched = {looped / batched:.2f}x"
    )
    gen = best_of(lambda: make_clips(1000, seed=0), repeats=1)
    one = best_of(lambda: make_clips(1, seed=0), repeats=3)
    print(
        f"make_clips(1000) 16x64x64: {gen:.2f} s ({1000 / gen:.0f} clips/s); "
        f"1000 x make_clips(1) would take ~{1000 * one:.1f} s (ratio {1000 * one / gen:.1f}x)"
    )


if __name__ == "__main__":
    main()
