"""The ``onnxcfp`` command line. Thin: parse options, call the library, print. Every ``OnnxcfpError`` is
caught here and printed as one line ``error: ...`` on stderr with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxcfp.errors import OnnxcfpError
from onnxcfp.graph import ModelGraph, load_graph

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
    "linear", "softmax_output"} | null, "explainable": bool, "problems": [str]}. Symbolic dims are names."""
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
    }


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
    if info["explainable"]:
        console.print("explainable: [green]yes[/green]")
    else:
        console.print("explainable: [red]no[/red]")
        for problem in info["problems"]:
            console.print(f"  - {problem}", markup=False, highlight=False)
