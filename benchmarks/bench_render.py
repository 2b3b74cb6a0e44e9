"""Rendering cost vs model cost: render a 16-frame 112x112 explanation with 3 level tubes (+ kernel
tubes for the report) and compare with a plain forward pass of a zoo model, measured in this process.

The forward pass is a lower bound on an explanation (which also runs a backward pass and builds the
pyramid), so "render / forward" overstates the renderer's share. Run: python benchmarks/bench_render.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from onnxcfp.render import LayerTube, Prediction, RenderOptions, render_explanation

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:112]
    frames = np.stack([np.dstack([(xx + 4 * t) % 256, yy * 2, 128 + 0 * xx]) for t in range(16)]).astype(
        np.uint8
    )
    shapes = {1: (2, 4, 4), 2: (4, 7, 7), 3: (8, 14, 14)}
    tubes = [
        LayerTube(f"level {lv}", lv, rng.random(s).astype(np.float32), (f"t{lv}",))
        for lv, s in shapes.items()
    ]
    levels, prev = [], []
    for lv, s in shapes.items():
        nodes = [
            {
                "id": f"c{lv}:{c}",
                "layer": f"c{lv}",
                "channel": c,
                "score": 1 - c / 10,
                "relevance": 1 - c / 10,
                "parents": [{"node": p, "score": 0.5} for p in prev[:2]],
            }
            for c in range(8)
        ]
        levels.append({"level": lv, "shape": list(s), "nodes": nodes})
        prev = [n["id"] for n in nodes]
        tubes += [LayerTube("k", lv, rng.random(s).astype(np.float32), (), (f"c{lv}", c)) for c in range(8)]
    pyramid = {"levels": levels}
    pred = Prediction.from_logits(rng.normal(size=10), None, [f"class{i}" for i in range(10)])

    with tempfile.TemporaryDirectory() as d:
        render_s = _best(lambda: render_explanation(d, frames, tubes, pyramid, pred, options=RenderOptions()))

    model = ROOT / "models" / "r3d_basic_legacy.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = rng.standard_normal([d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
    sess.run(None, {inp.name: x})  # warm-up
    forward_s = _best(lambda: sess.run(None, {inp.name: x}), repeat=5)

    print(f"render (16x112x112, 3 levels + 24 kernel tubes, all formats but png): {render_s * 1e3:.0f} ms")
    print(f"forward of {model.name} {list(x.shape)}: {forward_s * 1e3:.0f} ms")
    print(f"ratio render / forward = {render_s / forward_s:.2f}")


if __name__ == "__main__":
    main()
