"""Pyramid benchmark on a full-size 3D ResNet-50 (random weights, 2048-channel last stage, 16x112x112).

Prints (1) selection time of a depth-3 pyramid (build_pyramid on a finished Trace), and (2) the whole
explain without rendering — session run exposing pyramid_tensors + selection + level tubes — as a ratio
of a plain forward measured in the same process. Targets: weights <= 1.15x, gradients <= 2.4x.

    python benchmarks/bench_pyramid.py [--size 112] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_times
from r3d import build_r3d50

from onnxcfp.graph import load_graph
from onnxcfp.pyramid import build_pyramid, level_tubes, pyramid_tensors
from onnxcfp.runtime import RuntimeConfig, run


def best(fn, repeats: int) -> float:
    return min(run_times(fn, repeats, warmup=1))  # warm-up: session creation and caches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--theta", type=float, default=0.6)
    args = ap.parse_args()

    graph = load_graph(build_r3d50(frames=args.frames, size=args.size, fold_bn=True))
    config = RuntimeConfig(provider="cpu", intra_threads=args.threads)
    clip = (
        np.random.default_rng(0).standard_normal((1, 3, args.frames, args.size, args.size)).astype(np.float32)
    )
    forward = best(lambda: run(graph, clip, config=config), args.repeats)
    print(f"plain forward: {forward * 1e3:.1f} ms")
    for method in ("weights", "gradients"):
        req = pyramid_tensors(graph, 3, method, "branch")
        trace = run(graph, clip, req.activations, req.gradients, config=config)
        select = best(lambda: build_pyramid(graph, trace, depth=3, method=method, theta=args.theta), 20)  # noqa: B023
        p = build_pyramid(graph, trace, depth=3, method=method, theta=args.theta)

        def explain(method=method, req=req):
            tr = run(graph, clip, req.activations, req.gradients, config=config)
            pyr = build_pyramid(graph, tr, depth=3, method=method, theta=args.theta)
            level_tubes(pyr, tr)

        total = best(explain, args.repeats)
        target = 1.15 if method == "weights" else 2.4
        print(
            f"{method:9s}: selection {select * 1e3:.2f} ms (levels {[lv.size for lv in p.levels]}); "
            f"explain w/o render {total * 1e3:.1f} ms = {total / forward:.2f}x forward (target <= {target}x)"
        )


if __name__ == "__main__":
    main()
