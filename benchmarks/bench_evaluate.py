"""Evaluation speed: batched deletion+insertion curves vs one model call per step, the synthetic
dataset's generation rate, and one end-to-end ``evaluate_model`` clip against one explanation of it.
Prints ratios measured in this process (no absolute thresholds).

    python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --zoo 24 --steps 10   # the acceptance measurement: every
        # trained zoo model on 24 synthetic clips -> docs/evaluation-results.md (+ CSV/PNG per model)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_times

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
    return min(run_times(fn, repeats))


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


def end_to_end(model: Path, n: int = 2) -> None:
    from onnxcfp.evaluate import EvaluationOptions, evaluate_model
    from onnxcfp.explain import Explainer, ExplainOptions
    from onnxcfp.runtime import RuntimeConfig

    data = make_clips(n, seed=0)
    config = RuntimeConfig(provider="cpu", intra_threads=1)
    explainer = Explainer(model, ExplainOptions(kernel_tubes=False, device="cpu"))
    explainer.explain(data.frames[0])  # session built once, outside the timing
    one = best_of(lambda: [explainer.explain(f) for f in data.frames]) / n
    evaluate_model(model, make_clips(1, seed=1), options=EvaluationOptions(runtime=config))
    full = best_of(lambda: evaluate_model(model, data, options=EvaluationOptions(runtime=config)), 1) / n
    print(
        f"{model.stem}: evaluate_model {full:.2f} s/clip (all methods, 20 steps) vs one explanation "
        f"{one * 1e3:.0f} ms/clip: ratio {full / one:.0f}x"
    )


VERDICT_METHODS = ("cfp-gradients L1", "cfp-gradients L2", "cfp-gradients L3", "gradcam")
VERDICT_BASELINES = ("random-tube", "centre-prior")
VERDICT_METRICS = ("energy", "deletion_auc")


def zoo_results(n: int, steps: int, out: Path, docs: Path, seed: int, only: list[str] | None = None) -> None:
    """Evaluate every trained zoo model on ``n`` synthetic clips and write the markdown report."""
    from onnxcfp.evaluate import EvaluationOptions, evaluate_model
    from onnxcfp.evaluate.report import markdown_summary, score_note, write_results
    from onnxcfp.runtime import RuntimeConfig
    from onnxcfp.zoo import list_models

    cards = [c for c in list_models() if c.trained and (not only or c.name in only)]
    options = EvaluationOptions(
        steps=steps, seed=seed, runtime=RuntimeConfig(provider="cpu", intra_threads=1)
    )
    parts = [
        "# Evaluation of the trained zoo\n\n",
        f"Generated by `python benchmarks/bench_evaluate.py --zoo {n} --steps {steps} --seed {seed}"
        f"{' --models ' + ' '.join(only) if only else ''}`: "
        f"each trained model on `make_clips({n}, seed={seed})` (clips never trained on). "
        "Rows: `cfp-<method> Lk` = pyramid level-k tube (relevance-weighted, θ=0.6, depth 3); "
        "`random-ch/<method> Lk` = the same number of channels of the same tensor(s) drawn at random, "
        "with the level's weights shuffled onto them; `gradcam` = Grad-CAM of F (the classifier's "
        "features); `gradcam-frames` = per-frame Grad-CAM of F; `occlusion` = 4x16x16 patches; "
        "`random-tube` = smoothed noise; `centre-prior` = a centred Gaussian. Mean ± sample std over "
        "clips. The verdict table pairs methods and baselines by clip: mean difference (method − "
        "baseline; for deletion AUC lower is better), the fraction of clips the method wins, and a "
        'two-sided sign test; "yes" = better on average, on most clips, p < 0.05.\n',
    ]
    if not cards:
        parts.append('\nNo zoo model is trained yet (every card has `"trained": false`).\n')
    for card in cards:
        t0 = time.perf_counter()
        result = evaluate_model(card.path, make_clips(n, seed=seed), options=options)
        write_results(result, out / card.name)
        held = card.accuracy.held_out
        parts.append(
            f"\n## {card.name}\n\nHeld-out accuracy (card) {held if held is None else f'{held:.3f}'}; "
            f"{score_note(result)}. {time.perf_counter() - t0:.0f} s.\n\n"
        )
        parts.append(markdown_summary(result))
        parts.append(
            "\n| method | baseline | metric | mean diff | wins | sign-test p | better? |\n"
            "|---|---|---|---:|---:|---:|---|\n"
        )
        for method in VERDICT_METHODS:
            if method not in result.methods:
                continue
            for baseline in VERDICT_BASELINES:
                for metric in VERDICT_METRICS:
                    c = result.compare(method, baseline, metric)
                    if c.n == 0 or math.isnan(c.mean_difference):
                        continue
                    verdict = (
                        "yes"
                        if c.better and c.wins > 0.5 and c.p_sign < 0.05
                        else "not significant"
                        if c.better
                        else "**no**"
                    )
                    parts.append(
                        f"| {method} | {baseline} | {metric} | {c.mean_difference:+.3f} | {c.wins:.2f} | "
                        f"{c.p_sign:.2g} | "
                        f"{verdict} |\n"
                    )
        for notice in result.notices:
            parts.append(f"\nNotice: {notice}\n")
        print(f"{card.name}: {time.perf_counter() - t0:.0f} s, accuracy on these clips {result.accuracy:.2f}")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("".join(parts))
    print(f"wrote {docs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=int, default=0, help="evaluate every trained zoo model on N clips")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("eval-out"))
    parser.add_argument("--docs", type=Path, default=Path("docs/evaluation-results.md"))
    parser.add_argument("--models", nargs="*", help="only these zoo models (default: every trained one)")
    args = parser.parse_args()
    if args.zoo:
        zoo_results(args.zoo, args.steps, args.out, args.docs, args.seed, args.models)
    else:
        main()
        end_to_end(Path(__file__).resolve().parent.parent / "models" / "r3d_basic_legacy.onnx")
