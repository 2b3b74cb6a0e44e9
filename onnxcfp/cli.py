"""The ``onnxcfp`` command line. Thin: parse options, call the library, print. Every ``OnnxcfpError`` is
caught here and printed as one line ``error: ...`` on stderr with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxcfp.datasets import make_clips
from onnxcfp.errors import ConfigError, OnnxcfpError
from onnxcfp.explain import Explainer, ExplainOptions, Explanation
from onnxcfp.gradients import check_differentiable
from onnxcfp.graph import ModelGraph, load_graph
from onnxcfp.regress import Tolerances
from onnxcfp.regress import regress as run_regress
from onnxcfp.render import FORMATS
from onnxcfp.render.writers import atomic_path, write_json, write_mp4
from onnxcfp.zoo import find_model, list_models, load_card

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Class Feature Pyramids for ONNX video models."
)


@app.callback()
def _main() -> None:
    """Class Feature Pyramids for video action-recognition networks, straight from ONNX files."""


def fail(err: OnnxcfpError) -> typer.Exit:
    """Print the error as one line on stderr; the caller raises the returned Exit (code 2)."""
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    return typer.Exit(code=err.exit_code)


def describe(graph: ModelGraph) -> dict[str, Any]:
    """The ``inspect --json`` object (schema "onnxcfp.inspect/1"):
    {"schema", "source", "input": {"name", "layout", "shape"}, "layers": [{"name", "index", "kind",
    "kernel", "strides", "groups", "in_channels", "out_channels", "input", "output", "output_shape",
    "conv_depth"}], "residual_adds": [node names], "channel_concats": [node names], "channel_splits":
    [tensor names], "head": {"kind", "nodes", "features", "logits", "num_classes", "feature_channels",
    "linear", "softmax_output"} | null, "explainable": bool, "problems": [str],
    "gradient_problems": [str]}. Symbolic dims are names."""
    structure = graph.structure
    head = graph.head
    return {
        "schema": "onnxcfp.inspect/1",
        "source": graph.source,
        "input": {
            "name": graph.video_input.name,
            "layout": graph.video_input.layout,
            "shape": list(graph.video_input.shape),
        },
        "layers": [
            {
                "name": layer.name,
                "index": layer.index,
                "kind": layer.kind.value,
                "kernel": list(layer.kernel),
                "strides": list(layer.strides),
                "groups": layer.groups,
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "input": layer.input,
                "output": layer.output,
                "output_shape": list(layer.output_shape),
                "conv_depth": layer.conv_depth,
            }
            for layer in graph.layers
        ],
        "residual_adds": list(structure.residual_adds),
        "channel_concats": list(structure.channel_concats),
        "channel_splits": list(structure.channel_splits),
        "head": None
        if head is None
        else {
            "kind": head.kind,
            "nodes": list(head.nodes),
            "features": head.features,
            "logits": head.logits,
            "num_classes": head.num_classes,
            "feature_channels": graph.channel_map(head.features).num_channels
            if graph.explainable
            else (None if head.weight is None else int(head.weight.shape[1])),
            "linear": head.linear,
            "softmax_output": head.softmax_output,
        },
        "explainable": graph.explainable,
        "problems": list(graph.problems),
        "gradient_problems": gradient_problems(graph),
    }


def gradient_problems(graph: ModelGraph) -> list[str]:
    """Why no backward graph can be built from the logits to F and the clip (empty: the gradients method
    works; otherwise explanations fall back to the weights method)."""
    if graph.head is None:
        return ["no classifier head"]
    return check_differentiable(graph.model, graph.head.logits, [graph.head.features, graph.video_input.name])


def _dims(dims: list[Any]) -> str:
    return "×".join("?" if d is None else str(d) for d in dims)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="The .onnx model file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
) -> None:
    """Show a model's video input, conv layers, merges, classifier, and whether it can be explained."""
    try:
        graph = load_graph(model)
        info = describe(graph)
    except OnnxcfpError as err:
        raise fail(err) from None
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console = Console()
    inp = info["input"]
    console.print(
        f"[bold]{escape(info['source'])}[/bold]  input [cyan]{escape(inp['name'])}[/cyan]"
        f" {inp['layout']} {_dims(inp['shape'])}"
    )
    table = Table(title="Conv layers (topological order)")
    for col in ("#", "name", "kind", "kernel", "groups", "channels", "output shape", "depth"):
        table.add_column(col)
    for layer in info["layers"]:
        table.add_row(
            str(layer["index"]),
            escape(layer["name"]),
            layer["kind"],
            _dims(layer["kernel"]),
            str(layer["groups"]),
            f"{layer['in_channels']}→{layer['out_channels']}",
            _dims(layer["output_shape"]),
            str(layer["conv_depth"]),
        )
    console.print(table)
    console.print(
        f"residual merges: {len(info['residual_adds'])}   channel concats (branches):"
        f" {len(info['channel_concats'])}   channel splits: {len(info['channel_splits'])}"
    )
    head = info["head"]
    if head is None:
        console.print("classifier: [red]not found[/red]")
    else:
        console.print(
            f"classifier: {head['kind']} ({'linear' if head['linear'] else 'several layers'}), "
            f"{head['num_classes']} classes over {head['feature_channels']} channels of"
            f" {escape(repr(head['features']))};"
            f" logits {escape(repr(head['logits']))}"
        )
    if info["gradient_problems"]:
        console.print("differentiable: [yellow]no[/yellow] (the weights method is used)")
        for problem in info["gradient_problems"]:
            console.print(f"  - {problem}", markup=False, highlight=False)
    else:
        console.print("differentiable: [green]yes[/green] (the gradients method is available)")
    if info["explainable"]:
        console.print("explainable: [green]yes[/green]")
    else:
        console.print("explainable: [red]no[/red]")
        for problem in info["problems"]:
            console.print(f"  - {problem}", markup=False, highlight=False)


def resolve_model(model: str) -> Path:
    """A path to an .onnx file, or the name of a bundled zoo model (``r3d_basic`` or ``r3d_basic_legacy``)."""
    path = Path(model)
    if path.is_file() or path.suffix == ".onnx" or len(path.parts) > 1:
        return path
    return find_model(model)


def parse_formats(formats: str | None) -> frozenset[str] | None:
    """``"mp4,gif,report"`` → a set (None keeps the defaults); "html" is accepted for "report"."""
    if formats is None:
        return None
    alias = {"html": "report"}
    chosen = {alias.get(f.strip(), f.strip()) for f in formats.split(",") if f.strip()}
    unknown = chosen - FORMATS
    if unknown:
        raise ConfigError(
            f"unknown format(s) {', '.join(sorted(unknown))}: choose from {', '.join(sorted(FORMATS))}"
        )
    return frozenset(chosen)


def print_explanation(console: Console, result: Explanation, out: Path | None) -> None:
    pred = result.prediction
    name = f" ({escape(pred.name)})" if pred.name else ""
    console.print(f"explained class {pred.index}{name}: {pred.score_kind} {pred.score:.4f}")
    console.print(
        "top-5: "
        + ", ".join(
            f"{t.index}{' ' + escape(t.name) if t.name else ''} {t.probability:.3f}" for t in pred.top5
        )
    )
    for notice in result.notices:
        console.print(f"note: {notice}", markup=False, highlight=False)
    sizes = " → ".join(str(level.size) for level in result.pyramid.levels)
    shapes = ", ".join("×".join(map(str, t.volume.shape)) for t in result.level_tubes)
    console.print(
        f"pyramid ({result.pyramid.params['method']}): kept kernels per level {sizes}; tubes {shapes}"
    )
    if out is not None:
        console.print(f"outputs: {escape(str(out))}")


Label = Annotated[str | None, typer.Option("--label", help="Class index, class name, or top1 (default).")]
Theta = Annotated[float, typer.Option("--theta", help="Keep kernels whose normalised score is ≥ θ.")]
Depth = Annotated[int, typer.Option("--depth", help="Pyramid depth (conv levels).")]
TopN = Annotated[int | None, typer.Option("--top-n", help="Keep at most N children per parent.")]
Method = Annotated[str, typer.Option("--method", help="gradients (default) or weights (the paper's).")]
Residual = Annotated[
    str, typer.Option("--residual", help="branch (default) or all addends at residual Adds.")
]
Tube = Annotated[str, typer.Option("--tube", help="relevance (default), sum (the paper's) or gradcam.")]
Score = Annotated[str, typer.Option("--score", help="logit (default) or probability.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Formats = Annotated[
    str | None, typer.Option("--formats", help=f"Comma list of {','.join(sorted(FORMATS))} (html = report).")
]


def explain_options(
    label: str | None,
    theta: float,
    depth: int,
    top_n: int | None,
    method: str,
    residual: str,
    tube: str,
    score: str,
    device: str,
    formats: str | None,
    **extra: Any,
) -> ExplainOptions:
    chosen = parse_formats(formats)
    return ExplainOptions(
        label=label,
        theta=theta,
        depth=depth,
        top_n=top_n,
        method=method,
        residual=residual,
        tube=tube,
        score=score,
        device=device,
        **({"formats": chosen} if chosen is not None else {}),
        **extra,
    )


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="The .onnx model file, or a bundled zoo model's name.")],
    clip: Annotated[Path, typer.Argument(help="A video file, a folder of frames, or an .npy array.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("onnxcfp-out"),
    label: Label = None,
    theta: Theta = 0.6,
    depth: Depth = 3,
    top_n: TopN = None,
    method: Method = "gradients",
    residual: Residual = "branch",
    tube: Tube = "relevance",
    score: Score = "logit",
    device: Device = "auto",
    formats: Formats = None,
    loop: Annotated[bool, typer.Option("--loop", help="Loop a clip shorter than the model needs.")] = False,
    pad: Annotated[bool, typer.Option("--pad", help="Repeat the last frame of a short clip.")] = False,
    compat_json: Annotated[
        bool, typer.Option("--compat-json", help="Also write the original's nested tree.")
    ] = False,
) -> None:
    """Explain one clip: prediction, top-5, the pyramid, and its tubes as videos, pictures and a report."""
    console = Console()
    try:
        if loop and pad:
            raise ConfigError("--loop and --pad are exclusive: pick one way to fill a short clip")
        fill = "loop" if loop else "pad" if pad else "none"
        options = explain_options(
            label, theta, depth, top_n, method, residual, tube, score, device, formats, fill=fill
        )
        result = Explainer(resolve_model(model), options).explain(clip)
        result.save(out, compat_json=compat_json)
    except OnnxcfpError as err:
        raise fail(err) from None
    print_explanation(console, result, out)


@app.command()
def zoo() -> None:
    """List the bundled models with their cards."""
    try:
        cards = list_models()
    except OnnxcfpError as err:
        raise fail(err) from None
    table = Table(title=f"onnxcfp model zoo ({len(cards)} models)")
    for col in ("name", "architecture", "exporter", "input", "classes", "held-out acc.", "trained"):
        table.add_column(col)
    for card in cards:
        acc = card.accuracy.held_out
        table.add_row(
            card.name,
            card.architecture,
            card.exporter,
            f"{card.input.layout} {_dims(list(card.input.shape))}",
            str(len(card.classes)),
            "—" if acc is None else f"{acc:.1%} (n={card.accuracy.n})",
            "yes" if card.trained else "no",
        )
    Console().print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Output folder.")] = Path("onnxcfp-demo"),
    model: Annotated[str, typer.Option("--model", help="Bundled model to explain with.")] = "r3d_basic",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated clip.")] = 7,
    method: Method = "gradients",
    depth: Depth = 3,
    theta: Theta = 0.6,
) -> None:
    """Generate a synthetic action clip, explain it with a bundled model, and write every output."""
    console = Console()
    try:
        path = find_model(model)
        card = load_card(path)
        shape = dict(zip(card.input.layout, card.input.shape, strict=True))
        data = make_clips(1, seed, frames=int(shape["T"]), size=int(shape["H"]))
        # The clip is kept beside its explanation: losslessly (what is explained) and as a video to watch.
        clip_file = out / "clip.npy"
        with atomic_path(clip_file) as tmp, tmp.open("wb") as f:
            np.save(f, data.frames[0])
        write_mp4(out / "clip.mp4", data.frames[0], fps=8.0)
        options = ExplainOptions(method=method, depth=depth, theta=theta)
        result = Explainer(path, options).explain(clip_file)
        result.save(out)
    except OnnxcfpError as err:
        raise fail(err) from None
    truth = data.class_names[int(data.labels[0])]
    start, stop = (int(v) for v in data.intervals[0])
    console.print(f"model {escape(card.name)}; generated clip: {truth}, action in frames {start}..{stop - 1}")
    print_explanation(console, result, out)
    console.print(f"open {escape(str(out / 'report.html'))} in a browser")


@app.command()
def regress(
    zoo_dir: Annotated[Path, typer.Argument(help="Folder of .onnx models with their .json cards.")],
    golden: Annotated[Path, typer.Option("--golden", help="Folder of golden explanations.")],
    update: Annotated[bool, typer.Option("--update", help="Rewrite the golden files.")] = False,
    tol_jaccard: Annotated[float, typer.Option("--tol-jaccard", help="Least Jaccard of kept kernels.")] = 0.9,
    tol_corr: Annotated[float, typer.Option("--tol-corr", help="Least tube correlation.")] = 0.99,
    tol_diff: Annotated[float, typer.Option("--tol-diff", help="Largest tube voxel difference.")] = 0.05,
    report: Annotated[Path, typer.Option("--report", help="Where to write the JSON report.")] = Path(
        "regress-report.json"
    ),
) -> None:
    """Recompute every zoo model's explanation of fixed clips; compare with golden files (exit 1 on drift)."""
    console = Console()
    try:
        result = run_regress(zoo_dir, golden, update, Tolerances(tol_jaccard, tol_corr, tol_diff))
        write_json(report, result.to_json())
    except OnnxcfpError as err:
        raise fail(err) from None
    table = Table(title=f"regression vs {escape(str(golden))}")
    for col in ("model", "clips", "min Jaccard", "min tube corr.", "max tube diff", "status"):
        table.add_column(col)
    for check in result.models:
        status = (
            "updated"
            if check.updated
            else (f"[red]{len(check.drifts)} drift(s)[/red]" if check.drifts else "[green]ok[/green]")
        )
        table.add_row(
            escape(check.model),
            str(check.clips),
            *(
                "—" if v is None else f"{v:.4f}"
                for v in (check.worst_jaccard, check.worst_correlation, check.worst_max_diff)
            ),
            status,
        )
    console.print(table)
    for check in result.models:
        for d in check.drifts:
            where = f"clip {d.clip}" + (f" level {d.level}" if d.level is not None else "")
            console.print(
                f"drift: {check.model} {where}: {d.what} = {d.value} (limit {d.limit})",
                markup=False,
                highlight=False,
            )
    console.print(f"report: {escape(str(report))}")
    if result.drifted:
        raise typer.Exit(code=1)


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="The .onnx model file, or a bundled zoo model's name.")],
    synthetic: Annotated[
        int | None, typer.Option("--synthetic", help="Evaluate on N generated clips with exact masks.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Folder of clips (videos, frame folders, .npy).")
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option("--masks", help="Folder with one folder of per-frame PNG masks per clip stem."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the synthetic clips and random baselines.")
    ] = 0,
    theta: Theta = 0.6,
    depth: Depth = 3,
    steps: Annotated[int, typer.Option("--steps", help="Steps of the deletion/insertion curves.")] = 20,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma list of method families (default: all).")
    ] = None,
    score: Score = "logit",
    device: Device = "cpu",
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("onnxcfp-eval"),
) -> None:
    """Score pyramid tubes, Grad-CAM, occlusion, random and centre-prior maps against ground-truth masks
    (energy, pointing game, temporal AUROC) and by deletion/insertion; print a table, write CSV + PNG."""
    from onnxcfp.evaluate.data import read_masked_clips
    from onnxcfp.evaluate.evaluation import EvaluationOptions, evaluate_model
    from onnxcfp.evaluate.report import results_table, write_results
    from onnxcfp.runtime import RuntimeConfig

    console = Console()
    try:
        if (synthetic is None) == (data is None):
            raise ConfigError("give either --synthetic N or --data DIR --masks DIR (one of them)")
        if (data is None) != (masks is None):
            raise ConfigError("--data and --masks go together: a folder of clips and a folder of their masks")
        path = resolve_model(model)
        chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
        options = EvaluationOptions(
            theta=theta,
            depth=depth,
            steps=steps,
            gradient_score=score,
            seed=seed,
            runtime=RuntimeConfig(provider=device),
            **({"methods": chosen} if chosen else {}),
        )
        # the model's own clip size and class names (from its card, else its input shape)
        probe = Explainer(path, ExplainOptions(kernel_tubes=False))
        if synthetic is not None:
            if synthetic < 1:
                raise ConfigError(f"--synthetic needs at least 1 clip, got {synthetic}")
            frames, size = probe.preprocessing.frames, probe.preprocessing.size
            clips: Any = make_clips(synthetic, seed, frames=frames or 16, size=size[0] if size else 64)
        else:
            assert data is not None and masks is not None
            clips = read_masked_clips(data, masks, probe.class_names)
        status = Console(stderr=True)
        result = evaluate_model(
            path, clips, options=options, progress=lambda done, total: status.print(f"clip {done}/{total}")
        )
        files = write_results(result, out)
    except OnnxcfpError as err:
        raise fail(err) from None
    console.print(results_table(result))
    for notice in result.notices:
        console.print(f"notice: {notice}", markup=False, highlight=False)
    console.print(f"wrote {', '.join(escape(str(f)) for f in files)}")


@app.command()
def batch(
    model: Annotated[str, typer.Argument(help="The .onnx model file, or a bundled zoo model's name.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="Videos, .npy files, frame folders, or folders of them (recursive).")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (one folder per clip).")] = Path(
        "onnxcfp-batch"
    ),
    labels: Annotated[
        Path | None, typer.Option("--labels", help="CSV with columns clip,label (index or class name).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Local worker processes.")] = 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip clips whose outputs are complete (verified by sha256).")
    ] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failing clip.")] = False,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Run on Dask: a scheduler address, or local:N (N processes)."),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", help="Extra attempts for a clip whose worker died.")
    ] = 1,
    label: Label = None,
    theta: Theta = 0.6,
    depth: Depth = 3,
    top_n: TopN = None,
    method: Method = "gradients",
    residual: Residual = "branch",
    tube: Tube = "relevance",
    score: Score = "logit",
    device: Device = "auto",
    formats: Formats = None,
    loop: Annotated[bool, typer.Option("--loop", help="Loop a clip shorter than the model needs.")] = False,
    pad: Annotated[bool, typer.Option("--pad", help="Repeat the last frame of a short clip.")] = False,
) -> None:
    """Explain many clips: one output folder per clip plus summary.csv/summary.json; failures are recorded
    and the batch goes on. Exit 0 when every clip is explained, 1 when some failed, 130 on Ctrl-C."""
    from onnxcfp.batch import batch_explain

    console = Console(stderr=True)
    try:
        if loop and pad:
            raise ConfigError("--loop and --pad are exclusive: pick one way to fill a short clip")
        fill = "loop" if loop else "pad" if pad else "none"
        options = explain_options(
            label, theta, depth, top_n, method, residual, tube, score, device, formats, fill=fill
        )
        report = batch_explain(
            resolve_model(model), inputs, out, options, workers=workers, resume=resume,
            fail_fast=fail_fast, scheduler=scheduler, labels=labels, max_retries=retries,
        )
    except OnnxcfpError as err:
        raise fail(err) from None
    except KeyboardInterrupt:
        console.print(f"interrupted: finished clips are kept in {escape(str(out))}; rerun with --resume")
        raise typer.Exit(code=130) from None
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("ok", "skipped", "failed") if report.count(s))
    console.print(f"{report.total} clips: {counts} in {report.wall_seconds:.1f} s")
    for failed in report.failed:
        console.print(f"failed: {failed.clip}: {failed.error}", markup=False, highlight=False)
    if len(report.clips) < report.total:
        not_run = report.total - len(report.clips)
        console.print(f"stopped at the first failure (--fail-fast): {not_run} not run")
    console.print(f"summary: {escape(str(out / 'summary.csv'))}")
    raise typer.Exit(code=report.exit_code)
