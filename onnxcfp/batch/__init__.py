"""Batch runs: explain many clips into one folder each, locally on worker processes or on Dask.

``batch_explain(model, inputs, out, options, workers=..., resume=..., fail_fast=..., client=...)``."""

from onnxcfp.batch.api import BatchReport, batch_explain
from onnxcfp.batch.jobs import ClipJob, ClipSummary, discover_clips, folder_name, read_labels
from onnxcfp.batch.pipeline import ClipPipeline, ExplainerPipeline, explain_one, worker_state
from onnxcfp.batch.store import MANIFEST, verify_clip_folder

__all__ = [
    "MANIFEST",
    "BatchReport",
    "ClipJob",
    "ClipPipeline",
    "ClipSummary",
    "ExplainerPipeline",
    "batch_explain",
    "discover_clips",
    "explain_one",
    "folder_name",
    "read_labels",
    "verify_clip_folder",
    "worker_state",
]
