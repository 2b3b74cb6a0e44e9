"""Batch throughput: clips/s for 1 and 2 local workers and a Dask LocalCluster of 2, on generated clips
explained by a zoo model; the fraction of time workers waited (and waited on decoding); Dask's per-task
overhead. Ratios are against the 1-worker local run measured in the same process.

    python benchmarks/bench_batch.py [--clips 32] [--model models/r3d_basic_legacy.onnx] [--formats json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from onnxcfp.batch import batch_explain
from onnxcfp.datasets import make_clips
from onnxcfp.explain import ExplainOptions

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--model", default=str(ROOT / "models" / "r3d_basic_legacy.onnx"))
    ap.add_argument("--formats", default="json", help="comma-separated output formats per clip")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()

    options = ExplainOptions(formats=frozenset(args.formats.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "clips"
        inputs.mkdir()
        data = make_clips(args.clips, seed=0)
        for i, frames in enumerate(data.frames):
            np.save(inputs / f"clip{i:03d}.npy", frames)

        rows = []
        for workers in (1, 2):
            report = batch_explain(args.model, inputs, Path(tmp) / f"local{workers}", options,
                                   workers=workers, progress=False)
            assert report.count("ok") == args.clips, report.failed[:1]
            s = report.stats
            rows.append((f"local, {workers} worker(s)", report.wall_seconds, s["worker_wait_fraction"],
                         s["decode_starved_fraction"], None))
            rate = s["steady_clips_per_second"]
            steady = args.clips / rate if rate else float("inf")
            rows.append(("  same, after startup", steady, None, None, None))
        if not args.no_dask:
            try:
                import distributed
            except ImportError:
                distributed = None
                print("dask not installed: pip install 'onnxcfp[dask]' to measure the LocalCluster")
            if distributed is not None:
                cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                   dashboard_address=None, silence_logs=40)
                with cluster, distributed.Client(cluster) as client:
                    # warm-up batch: workers import onnxcfp and build their Explainer once (cached)
                    batch_explain(args.model, inputs, Path(tmp) / "warm", options, client=client,
                                  progress=False)
                    report = batch_explain(args.model, inputs, Path(tmp) / "dask", options, client=client,
                                           progress=False)
                assert report.count("ok") == args.clips, report.failed[:1]
                rows.append(("dask LocalCluster(2)", report.wall_seconds, None, None,
                             report.stats["task_overhead_ms"]))

    base = args.clips / rows[0][1]
    print(f"{args.clips} clips, model {Path(args.model).name}, formats {args.formats}")
    print(f"{'mode':26} {'clips/s':>8} {'x base':>7} {'wait':>6} {'decode-starved':>15} {'dask ms/task':>13}")
    for name, wall, wait, starved, overhead in rows:
        rate = args.clips / wall
        print(
            f"{name:26} {rate:8.2f} {rate / base:7.2f} "
            f"{'' if wait is None else f'{wait:.3f}':>6} {'' if starved is None else f'{starved:.3f}':>15} "
            f"{'' if overhead is None else f'{overhead:.1f}':>13}"
        )
    print("'local' includes spawning the workers and building their Explainer; 'after startup' counts only")
    print("the clips finished after every worker was ready; the dask cluster was started and warmed up first")


if __name__ == "__main__":
    main()
