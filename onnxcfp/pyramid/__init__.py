"""Class Feature Pyramids: select the DAG of kernels that drive a class, and their saliency tubes."""

from onnxcfp.pyramid.options import METHODS, NORMALISE, RESIDUALS, TUBES, check_pyramid_options
from onnxcfp.pyramid.select import build_pyramid, pyramid_tensors
from onnxcfp.pyramid.tubes import frame_importance, kernel_tube, level_tubes
from onnxcfp.pyramid.types import SCHEMA, Edge, LayerInfo, Level, Node, Pyramid, SaliencyTube, TensorRequest

__all__ = [
    "METHODS",
    "NORMALISE",
    "RESIDUALS",
    "SCHEMA",
    "TUBES",
    "Edge",
    "LayerInfo",
    "Level",
    "Node",
    "Pyramid",
    "SaliencyTube",
    "TensorRequest",
    "build_pyramid",
    "check_pyramid_options",
    "frame_importance",
    "kernel_tube",
    "level_tubes",
    "pyramid_tensors",
]
