"""Rendering cost vs explanation cost (issue 6: "rendering a 16-frame 112x112 explanation with 3 layers
takes less time than the explanation itself").

Two models, each explained on a generated 16-frame 112x112 clip with ``ExplainOptions(depth=3)`` (three
level tubes plus, by default, a tube per kept kernel):

* r3d_18 at full size (torchvision layout, 1x3x16x112x112, random weights, built by benchmarks/r3d.py);
* the zoo's r3d_basic_legacy (64x64 input; the overlay frames stay 112x112).

For each: the median of a few ``Explainer.explain`` calls, the median of a few ``Explanation.save`` calls
with the default formats, and the ratio save / explain (< 1 meets the acceptance). Both are measured in
this process, one after the other, so machine load affects them alike.

Run: python benchmarks/bench_render.py [--repeat N] [--profile] [--only r3d18|zoo]
``--profile`` prints the top of a cProfile of one save (cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import run_times

from onnxcfp.datasets import make_clips
from onnxcfp.explain import Explainer, ExplainOptions

ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(run_times(fn, repeat))


def _r3d18_path(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("bench_r3d", ROOT / "benchmarks" / "r3d.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = folder / "r3d18.onnx"
    onnx.save(module.build_r3d18(), path)
    return path


def _case(name: str, model: Path, clip: np.ndarray, repeat: int, profile: bool) -> float:
    explainer = Explainer(model, ExplainOptions(depth=3))
    explainer.explain(clip)  # warm-up: session creation, first-run allocations
    explain_s = _median_seconds(lambda: explainer.explain(clip), repeat)
    result = explainer.explain(clip)
    with tempfile.TemporaryDirectory() as out:
        result.save(out)  # warm-up: imports, codec start-up
        save_s = _median_seconds(lambda: result.save(out), repeat)
        files = [p for p in Path(out).rglob("*") if p.is_file()]
        size_kb = sum(p.stat().st_size for p in files) / 1024
        report_kb = (Path(out) / "report.html").stat().st_size / 1024
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            result.save(out)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
            print(text.getvalue())
    levels = len(result.level_tubes)
    kernels = len(result.tubes) - levels
    print(
        f"{name}: {levels} level tubes + {kernels} kernel tubes, "
        f"{len(files)} files, {size_kb:.0f} KiB (report.html {report_kb:.0f} KiB)"
    )
    print(f"  explain (median of {repeat}): {explain_s * 1e3:8.0f} ms")
    print(f"  save    (median of {repeat}): {save_s * 1e3:8.0f} ms")
    print(f"  ratio save / explain = {save_s / explain_s:.2f}")
    return save_s / explain_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", choices=("r3d18", "zoo"), default=None)
    args = parser.parse_args()
    clip = make_clips(1, seed=7, size=112).frames[0]  # uint8 [16, 112, 112, 3]
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "r3d18"):
            _case("r3d_18 1x3x16x112x112", _r3d18_path(Path(d)), clip, args.repeat, args.profile)
        if args.only in (None, "zoo"):
            zoo = ROOT / "models" / "r3d_basic_legacy.onnx"
            _case(f"zoo {zoo.stem} (64x64 input)", zoo, clip, args.repeat, args.profile)


if __name__ == "__main__":
    main()
