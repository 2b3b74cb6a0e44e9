"""Synthetic action clips with exact ground truth (see ``onnxcfp.datasets.synthetic``)."""

from onnxcfp.datasets.synthetic import (
    CLASS_NAMES,
    SHAPE_NAMES,
    SceneParams,
    SyntheticClips,
    action_frames,
    make_clips,
    render_scenes,
    sample_scenes,
    shape_support,
)

__all__ = [
    "CLASS_NAMES",
    "SHAPE_NAMES",
    "SceneParams",
    "SyntheticClips",
    "action_frames",
    "make_clips",
    "render_scenes",
    "sample_scenes",
    "shape_support",
]
