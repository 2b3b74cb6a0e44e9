"""``python -m onnxcfp`` runs the command line."""

from onnxcfp.cli import app

app(prog_name="onnxcfp")
