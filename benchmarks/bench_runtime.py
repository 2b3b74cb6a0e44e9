"""What exposing tensors costs: forward time and peak memory, as ratios to the plain forward.

For every zoo model (models/*.onnx at its card's input shape) and a full-size torchvision-layout r3d_18
(1x3x16x112x112, random weights, built with onnx.helper by benchmarks/r3d.py) it measures three sessions:
  plain   - logits only (the model as it is),
  depth3  - the activations a depth-3 pyramid reads (F and the inputs of the convs within two back-steps),
  allconv - every Conv output exposed,
  d3+grad - the depth-3 activations plus their gradients (forward + backward graph, for information),
Time: interleaved rounds in this process (min and median of --rounds runs after warm-up), each session
built once through onnxcfp.runtime. Memory: each configuration in a fresh subprocess; "peak" is the
peak RSS (VmHWM, reset after the session is built) while running, "run+" that peak minus the RSS just
before the first run (what the runs add: ORT's arena, conv workspaces, exposed outputs); ratios to plain.
Targets: depth3 <= 1.1x time and <= 1.5x memory.

    python benchmarks/bench_runtime.py [--rounds 7] [--threads 1] [--only r3d_18] [--r3d50] [--no-zoo]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import child_json, interleaved_times, reset_peak_rss, status_kib  # noqa: E402

from onnxcfp import runtime  # noqa: E402
from onnxcfp.graph import load_graph  # noqa: E402
from onnxcfp.graph.modelgraph import ModelGraph  # noqa: E402
from onnxcfp.pyramid import pyramid_tensors  # noqa: E402
from onnxcfp.runtime import RuntimeConfig  # noqa: E402

CONFIGS = ("plain", "depth3", "allconv", "d3+grad")


def depth_tensors(graph: ModelGraph, depth: int = 3) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(activations, gradients) a ``depth``-level gradients-method pyramid reads."""
    request = pyramid_tensors(graph, depth, "gradients", "branch")
    return tuple(request.activations), tuple(request.gradients)


Request = tuple[tuple[str, ...], tuple[str, ...]]  # (activations, gradients)


def config_tensors(graph: ModelGraph, config: str) -> Request:
    if config == "plain":
        return (), ()
    if config == "depth3":
        return depth_tensors(graph, 3)[0], ()
    if config == "d3+grad":
        return depth_tensors(graph, 3)
    return tuple(dict.fromkeys(layer.output for layer in graph.layers)), ()


def run_config(graph: ModelGraph, x: np.ndarray, request: Request, cfg: RuntimeConfig) -> None:
    runtime.run(graph, x, activations=request[0], gradients=request[1], config=cfg)


def clip_for(graph: ModelGraph) -> np.ndarray:
    shape = tuple(1 if not isinstance(d, int) else d for d in graph.video_input.shape)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def child(path: Path, config: str, threads: int) -> None:
    """Runs in a fresh process: build one session, run it, print peak RSS figures as JSON."""
    graph = load_graph(path)
    x = clip_for(graph)
    cfg = RuntimeConfig(provider="cpu", intra_threads=threads)
    request = config_tensors(graph, config)
    runtime.prepare_session(graph, request[0], request[1], config=cfg)
    build_peak = status_kib("VmHWM")
    before = reset_peak_rss()
    for _ in range(2):
        run_config(graph, x, request, cfg)
    run_peak = status_kib("VmHWM")
    print(json.dumps({"peak_kib": max(build_peak, run_peak), "run_peak_kib": run_peak,
                      "before_run_kib": before, "run_growth_kib": run_peak - before}))


def measure_memory(path: Path, config: str, threads: int) -> dict:
    return child_json(__file__, ["--child", str(path), "--config", config, "--threads", str(threads)])


def measure_time(graph: ModelGraph, rounds: int, threads: int) -> dict[str, list[float]]:
    cfg = RuntimeConfig(provider="cpu", intra_threads=threads)
    x = clip_for(graph)
    sets = {c: config_tensors(graph, c) for c in CONFIGS}
    return interleaved_times({c: lambda c=c: run_config(graph, x, sets[c], cfg) for c in CONFIGS}, rounds)


def bench(name: str, path: Path, rounds: int, threads: int) -> None:
    graph = load_graph(path)
    sets = {c: config_tensors(graph, c) for c in CONFIGS}
    shape = tuple(1 if not isinstance(d, int) else d for d in graph.video_input.shape)
    times = measure_time(graph, rounds, threads)
    runtime.SESSIONS.clear()
    mem = {c: measure_memory(path, c, threads) for c in CONFIGS}
    base_t = min(times["plain"])
    base_med = statistics.median(times["plain"])
    print(f"\n{name}  input {list(shape)}  convs {len(graph.layers)}")
    print(
        f"  {'config':8} {'tensors':>7} {'exposed MiB':>11} {'min ms':>8} {'x':>5} {'median ms':>9}"
        f" {'x':>5} {'peak MiB':>8} {'x':>5} {'run+ MiB':>8} {'x':>5}"
    )
    for c in CONFIGS:
        acts, grads = sets[c]
        exposed_bytes = runtime.exposed_bytes(graph, acts, shape) + runtime.exposed_bytes(graph, grads, shape)
        exposed = exposed_bytes / 2**20
        t_min, t_med = min(times[c]), statistics.median(times[c])
        peak, growth = mem[c]["run_peak_kib"] / 1024, mem[c]["run_growth_kib"] / 1024
        base_peak, base_growth = mem["plain"]["run_peak_kib"] / 1024, mem["plain"]["run_growth_kib"] / 1024
        print(
            f"  {c:8} {len(acts) + len(grads):7d} {exposed:11.1f} {t_min * 1e3:8.1f} {t_min / base_t:5.2f}"
            f" {t_med * 1e3:9.1f} {t_med / base_med:5.2f} {peak:8.0f} {peak / base_peak:5.2f}"
            f" {growth:8.1f} {growth / max(base_growth, 1e-9):5.2f}"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="substring of the model names to run")
    parser.add_argument("--r3d50", action="store_true", help="also the 2048-channel bottleneck r3d_50")
    parser.add_argument("--no-zoo", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.config, args.threads)
        return

    import onnx
    import r3d

    models: list[tuple[str, Path]] = []
    if not args.no_zoo:
        models += [(p.stem, p) for p in sorted((ROOT / "models").glob("*.onnx"))]
    tmp = Path(tempfile.mkdtemp(prefix="onnxcfp_bench_"))
    builders = [("r3d_18", r3d.build_r3d18)] + ([("r3d_50", r3d.build_r3d50)] if args.r3d50 else [])
    for name, build in builders:
        if args.only and args.only not in name:
            continue
        path = tmp / f"{name}.onnx"
        onnx.save(build(frames=16, size=112, batch=1), path)
        models.append((f"{name} (onnx.helper, random weights)", path))
    print(f"threads={args.threads} rounds={args.rounds}; ratios are to 'plain' in the same run")
    for name, path in models:
        if args.only and args.only not in name:
            continue
        bench(name, path, args.rounds, args.threads)


if __name__ == "__main__":
    main()
