"""Class Feature Pyramids: select the DAG of kernels that drive a class, and their saliency tubes."""

from onnxcfp.pyramid.select import build_pyramid, pyramid_tensors
from onnxcfp.pyramid.tubes import frame_importance, kernel_tube, level_tubes
from onnxcfp.pyramid.types import SCHEMA, Edge, LayerInfo, Level, Node, Pyramid, SaliencyTube, TensorRequest

__all__ = [
    "SCHEMA",
    "Edge",
    "LayerInfo",
    "Level",
    "Node",
    "Pyramid",
    "SaliencyTube",
    "TensorRequest",
    "build_pyramid",
    "frame_importance",
    "kernel_tube",
    "level_tubes",
    "pyramid_tensors",
]
