"""What the backward section costs: forward+backward in one onnxruntime run, as ratios to the plain forward.

For a full-size torchvision-layout r3d_18 (1x3x16x112x112, random weights, built with onnx.helper by
benchmarks/r3d.py) and every zoo model (models/*.onnx at its card's input shape), three sessions:
  forward    - the model as it is (logits only),
  all_convs  - forward + d(top-1 logit)/d(input and every Conv input), one run (add_gradients),
  last_block - forward + d(top-1 logit)/d(F), F = the last conv block's output the head pools (Grad-CAM).
Time: min and median of --rounds interleaved runs in this process after two warm-ups (CPU EP,
--threads intra-op threads). Memory: each configuration in a fresh subprocess; "build" is the peak RSS
(VmHWM) while loading the model, adding the backward section and building the session, "run" the peak RSS
over two runs after that (VmHWM reset), "run+" what the runs add to the built session (ORT's arena: saved
activations, gradients, conv workspaces).
Targets (issue 4): all_convs <= 2.3x forward, last_block <= 1.2x.
--profile NAME writes onnxruntime profiles of the gradient sessions of the models whose name contains
NAME and prints where their time goes, by op type, forward vs backward section.

    python benchmarks/bench_gradients.py [--rounds 5] [--threads 1] [--only r3d_18] [--no-zoo] [--profile x]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import child_json, interleaved_times, reset_peak_rss, status_kib  # noqa: E402

from onnxcfp.gradients import add_gradients  # noqa: E402
from onnxcfp.graph import load_graph  # noqa: E402

CONFIGS = ("forward", "all_convs", "last_block")
TARGETS = {"all_convs": 2.3, "last_block": 1.2}


def model_for(model: onnx.ModelProto, config: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], int]:
    """The model to run for ``config``, the extra feeds it needs, and how many gradients it returns."""
    if config == "forward":
        return model, {}, 0
    graph = load_graph(model)
    assert graph.head is not None, graph.problems
    input_name = model.graph.input[0].name
    if config == "all_convs":
        wrt = [input_name, *(n.input[0] for n in model.graph.node if n.op_type == "Conv")]
    else:
        wrt = [graph.head.features]
    wrt = list(dict.fromkeys(wrt))
    gg = add_gradients(model, graph.head.logits, wrt, score="logit")
    return gg.model, {gg.target_input: np.int64([-1])}, len(wrt)  # -1: each clip's top-1 class


def clip_for(model: onnx.ModelProto) -> tuple[str, np.ndarray]:
    inp = model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim]
    return inp.name, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def session(model: onnx.ModelProto, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def child(path: Path, config: str, threads: int) -> None:
    """Runs in a fresh process: build one configuration's session, run it twice, print RSS figures."""
    model = onnx.load(str(path))
    name, x = clip_for(model)
    run_model, extra, _ = model_for(model, config)
    sess = session(run_model, threads)
    del model, run_model
    build_peak = status_kib("VmHWM")
    before = reset_peak_rss()
    for _ in range(2):
        sess.run(None, {name: x, **extra})
    run_peak = status_kib("VmHWM")
    figures = {"build_peak_kib": build_peak, "run_peak_kib": run_peak, "run_growth_kib": run_peak - before}
    print(json.dumps(figures))


def measure_memory(path: Path, config: str, threads: int) -> dict:
    return child_json(__file__, ["--child", str(path), "--config", config, "--threads", str(threads)])


def profile(model: onnx.ModelProto, config: str, threads: int, label: str) -> None:
    """Run the gradient session with ORT profiling and print its time by op type and section."""
    name, x = clip_for(model)
    run_model, extra, _ = model_for(model, config)
    forward_nodes = {n.name for n in model.graph.node}
    prefix = str(Path(tempfile.gettempdir()) / f"onnxcfp_grad_{label}_{config}")
    sess = session(run_model, threads, prefix)
    for _ in range(3):
        sess.run(None, {name: x, **extra})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        # ORT fuses and renames some nodes; names of the backward section all start with "grad/"
        section = "backward" if node.startswith("grad/") else "forward"
        if section == "forward" and node not in forward_nodes and not node.startswith(("Fused", "fused")):
            section = "other"
        by_op[(section, event["args"]["op_name"])] += event["dur"] / 3e3  # µs over 3 runs -> ms per run
    total = sum(by_op.values())
    print(f"  profile {config}: {total:.1f} ms of kernel time per run")
    for (section, op), ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {section:8} {op:20} {ms:8.1f} ms  {ms / total:6.1%}")


def bench(name: str, path: Path, rounds: int, threads: int, do_profile: bool) -> None:
    model = onnx.load(str(path))
    input_name, x = clip_for(model)
    sessions, feeds, n_grads, n_nodes = {}, {}, {}, {}
    for c in CONFIGS:
        run_model, extra, n_grads[c] = model_for(model, c)
        n_nodes[c] = len(run_model.graph.node)
        sessions[c] = session(run_model, threads)
        feeds[c] = {input_name: x, **extra}
    times = interleaved_times(
        {c: lambda c=c: sessions[c].run(None, feeds[c]) for c in CONFIGS}, rounds, warmup=2
    )
    sessions.clear()
    mem = {c: measure_memory(path, c, threads) for c in CONFIGS}
    print(f"\n{name}  input {list(x.shape)}")
    print(
        f"  {'config':10} {'grads':>5} {'nodes':>5} {'min ms':>8} {'x':>5} {'median ms':>9} {'x':>5}"
        f" {'build MiB':>9} {'run MiB':>7} {'x':>5} {'run+ MiB':>8} {'x':>5} {'target':>7}"
    )
    base_min, base_med = min(times["forward"]), statistics.median(times["forward"])
    base_run, base_growth = mem["forward"]["run_peak_kib"], mem["forward"]["run_growth_kib"]
    for c in CONFIGS:
        t_min, t_med, m = min(times[c]), statistics.median(times[c]), mem[c]
        target = TARGETS.get(c)
        verdict = "" if target is None else ("ok" if t_min / base_min <= target else "MISSED") + f" {target}"
        print(
            f"  {c:10} {n_grads[c]:5d} {n_nodes[c]:5d} {t_min * 1e3:8.1f} {t_min / base_min:5.2f}"
            f" {t_med * 1e3:9.1f} {t_med / base_med:5.2f} {m['build_peak_kib'] / 1024:9.0f}"
            f" {m['run_peak_kib'] / 1024:7.0f} {m['run_peak_kib'] / base_run:5.2f}"
            f" {m['run_growth_kib'] / 1024:8.1f} {m['run_growth_kib'] / max(base_growth, 1):5.2f}"
            f" {verdict:>7}"
        )
    if do_profile:
        for c in ("all_convs", "last_block"):
            profile(model, c, threads, name.split()[0])
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="substring of the model names to run")
    parser.add_argument("--no-zoo", action="store_true")
    parser.add_argument("--profile", default=None, help="substring of the model names to profile")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="forward", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.config, args.threads)
        return

    import r3d

    tmp = Path(tempfile.mkdtemp(prefix="onnxcfp_bench_grad_"))
    r3d18 = tmp / "r3d_18.onnx"
    onnx.save(r3d.build_r3d18(frames=16, size=112, batch=1), r3d18)
    models = [("r3d_18 (onnx.helper, random weights)", r3d18)]
    if not args.no_zoo:
        models += [(p.stem, p) for p in sorted((ROOT / "models").glob("*.onnx"))]
    print(f"threads={args.threads} rounds={args.rounds}; ratios are to 'forward' in the same process")
    for name, path in models:
        if args.only and args.only not in name:
            continue
        bench(name, path, args.rounds, args.threads, bool(args.profile and args.profile in name))


if __name__ == "__main__":
    main()
