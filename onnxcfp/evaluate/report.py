"""Presenting an ``EvaluationResult``: a rich table (method × metric, mean ± std), CSV files and a PNG
bar chart drawn with PIL. Every file is written atomically (``onnxcfp.render.writers``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.table import Table

from onnxcfp.evaluate.evaluation import HIGHER_IS_BETTER, METRICS, EvaluationResult, MethodSummary
from onnxcfp.render.writers import write_csv, write_json, write_png

METRIC_TITLES = {
    "energy": "energy in mask",
    "pointing": "pointing game",
    "temporal_auroc": "temporal AUROC",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
}
# One colour per method family (RGB), so levels of one family read as a group in the chart.
FAMILY_COLOURS = {
    "pyramid-gradients": (31, 119, 180),
    "pyramid-weights": (23, 190, 207),
    "random-channels": (150, 150, 150),
    "gradcam": (214, 39, 40),
    "gradcam-frames": (255, 127, 14),
    "occlusion": (148, 103, 189),
    "random-tube": (90, 90, 90),
    "centre-prior": (188, 189, 34),
}


def _fmt(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f}±{std:.3f}"


def score_note(result: EvaluationResult) -> str:
    """One line saying which scores the numbers are of (they change the kept sets and the curves)."""
    acc = "" if math.isnan(result.accuracy) else f"; top-1 accuracy on these clips {result.accuracy:.2f}"
    return (
        f"target: {result.target_rule}; pyramid/Grad-CAM gradients of the target's {result.gradient_score}; "
        f"deletion/insertion/occlusion on the target's softmax {result.curve_score} "
        f"({result.options.steps} steps, fill={result.options.fill}){acc}"
    )


def results_table(result: EvaluationResult) -> Table:
    """Method × metric, mean ± std over clips; ↑/↓ say which direction is better."""
    n_clips = len({r.clip for r in result.rows})
    table = Table(
        title=f"{Path(result.model).name}: {n_clips} clip(s) of {result.data}", caption=score_note(result)
    )
    table.add_column("method", no_wrap=True)
    table.add_column("n", justify="right")
    for metric in METRICS:
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        table.add_column(f"{METRIC_TITLES[metric]} {arrow}", justify="right")
    for s in result.summary():
        table.add_row(s.method, str(s.n), *(_fmt(s.mean[m], s.std[m]) for m in METRICS))
    return table


def summary_rows(result: EvaluationResult) -> tuple[list[str], list[list[object]]]:
    header = ["method", "family", "n"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]
    rows: list[list[object]] = []
    for s in result.summary():
        row: list[object] = [s.method, s.family, s.n]
        for m in METRICS:
            row += [_csv_number(s.mean[m]), _csv_number(s.std[m])]
        rows.append(row)
    return header, rows


def _csv_number(v: float | int | None) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def clip_csv_rows(result: EvaluationResult) -> tuple[list[str], list[list[object]]]:
    dicts = result.clip_rows()
    header = list(dicts[0]) if dicts else []
    return header, [[_csv_number(d[k]) for k in header] for d in dicts]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ bar chart

_ROW = 18  # px per method row
_PANEL = 200  # px per metric panel
_NAME = 170  # px for the method names
_TOP = 46
_BOTTOM = 26


def _px(value: float, x0: int, top: float, plot_w: int) -> int:
    """x pixel of ``value`` on a panel whose axis runs 0..top over ``plot_w`` pixels from ``x0``."""
    return x0 + round(min(max(value, 0.0), top) / top * plot_w)


def bar_chart(result: EvaluationResult, summary: tuple[MethodSummary, ...] | None = None) -> np.ndarray:
    """uint8 RGB image ``[H, W, 3]``: one panel per metric, one horizontal bar per method (its mean over
    clips; the whisker is ± one standard deviation), each panel on its own 0..top axis (top ≤ 1: every
    metric is in [0, 1]). Bars are coloured by method family."""
    from PIL import Image, ImageDraw, ImageFont

    summary = summary if summary is not None else result.summary()
    width = _NAME + _PANEL * len(METRICS) + 10
    height = _TOP + _ROW * len(summary) + _BOTTOM
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text(
        (6, 4),
        f"{Path(result.model).name} - {len({r.clip for r in result.rows})} clips",
        fill=(0, 0, 0),
        font=font,
    )
    draw.text(
        (6, 18),
        f"gradients of the {result.gradient_score}, curves on the softmax {result.curve_score}",
        fill=(80, 80, 80),
        font=font,
    )
    for i, s in enumerate(summary):
        y = _TOP + i * _ROW
        draw.text((6, y + 3), s.method[:26], fill=(0, 0, 0), font=font)
    for p, metric in enumerate(METRICS):
        x0 = _NAME + p * _PANEL + 6
        plot_w = _PANEL - 16
        arrow = "(higher better)" if HIGHER_IS_BETTER[metric] else "(lower better)"
        draw.text((x0, _TOP - 14), f"{METRIC_TITLES[metric]} {arrow}", fill=(0, 0, 0), font=font)
        # each panel's axis runs 0..top, top the largest mean + std rounded up to a tenth (energy in a
        # small mask stays far below 1, and would be invisible on a 0..1 axis)
        highs = [s.mean[metric] + s.std[metric] for s in summary if not math.isnan(s.mean[metric])]
        top = min(1.0, max(0.1, math.ceil(max(highs, default=1.0) * 10 - 1e-9) / 10))
        for tick in (0.0, top / 2, top):  # light grid and axis labels
            x = x0 + round(tick / top * plot_w)
            draw.line([(x, _TOP), (x, height - _BOTTOM)], fill=(225, 225, 225))
            label = f"{tick:.2g}"
            draw.text(
                (x - (0 if tick == 0 else 4 * len(label)), height - _BOTTOM + 4),
                label,
                fill=(80, 80, 80),
                font=font,
            )
        for i, s in enumerate(summary):
            mean, std = s.mean[metric], s.std[metric]
            if math.isnan(mean):
                continue
            y = _TOP + i * _ROW
            colour = FAMILY_COLOURS.get(s.family, (100, 100, 100))

            draw.rectangle([x0, y + 3, _px(mean, x0, top, plot_w), y + _ROW - 3], fill=colour)
            lo, hi = _px(mean - std, x0, top, plot_w), _px(mean + std, x0, top, plot_w)
            mid = y + _ROW // 2
            draw.line([(lo, mid), (hi, mid)], fill=(0, 0, 0))
            draw.line([(lo, mid - 3), (lo, mid + 3)], fill=(0, 0, 0))
            draw.line([(hi, mid - 3), (hi, mid + 3)], fill=(0, 0, 0))
    return np.asarray(img)


def write_results(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """``evaluation_summary.csv`` (method × metric mean/std), ``evaluation_clips.csv`` (one row per clip
    and method), ``evaluation.png`` (bar chart) and ``evaluation.json`` (summary + what was scored how)."""
    out = Path(out_dir)
    header, rows = summary_rows(result)
    clip_header, clip_rows = clip_csv_rows(result)
    opts = result.options
    meta = {
        "schema": "onnxcfp.evaluation/1",
        "model": result.model,
        "data": result.data,
        "clips": len({r.clip for r in result.rows}),
        "target": result.target_rule,
        "gradient_score": result.gradient_score,
        "curve_score": result.curve_score,
        "accuracy": None if math.isnan(result.accuracy) else result.accuracy,
        "options": {
            "methods": list(opts.methods),
            "theta": opts.theta,
            "depth": opts.depth,
            "residual": opts.residual,
            "tube": opts.tube,
            "steps": opts.steps,
            "fill": opts.fill,
            "occlusion_patch": list(opts.occlusion_patch),
            "occlusion_stride": list(opts.occlusion_stride),
            "seed": opts.seed,
        },
        "summary": [
            {
                "method": s.method,
                "family": s.family,
                "n": s.n,
                "mean": {k: (None if math.isnan(v) else v) for k, v in s.mean.items()},
                "std": {k: (None if math.isnan(v) else v) for k, v in s.std.items()},
            }
            for s in result.summary()
        ],
        "notices": list(result.notices),
        "seconds": round(result.seconds, 3),
    }
    return [
        write_csv(out / "evaluation_summary.csv", header, rows),
        write_csv(out / "evaluation_clips.csv", clip_header, clip_rows),
        write_png(out / "evaluation.png", bar_chart(result)),
        write_json(out / "evaluation.json", meta),
    ]


def markdown_summary(result: EvaluationResult) -> str:
    """The method × metric table as GitHub markdown (mean ± std; ↑/↓ = better direction)."""
    head = "| method | n | " + " | ".join(
        f"{METRIC_TITLES[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in METRICS
    )
    lines = [head + " |", "|---|---:|" + "---:|" * len(METRICS)]
    for s in result.summary():
        cells = " | ".join(_fmt(s.mean[m], s.std[m]) for m in METRICS)
        lines.append(f"| {s.method} | {s.n} | {cells} |")
    return "\n".join(lines) + "\n"
