"""The graph layer: load an ONNX video model and find its input, conv layers, channel flow and head."""

from onnxcfp.graph.channels import ChannelFlow, ChannelMap, ChannelSource
from onnxcfp.graph.head import ClassifierHead, find_head
from onnxcfp.graph.layers import ConvKind, ConvLayer, classify_kind, conv_depths, extract_layers
from onnxcfp.graph.model import GraphIndex, load_model, max_ir_version_supported
from onnxcfp.graph.modelgraph import Dim, ModelGraph, VideoInput, detect_video_input, load_graph

__all__ = [
    "ChannelFlow",
    "ChannelMap",
    "ChannelSource",
    "ClassifierHead",
    "ConvKind",
    "ConvLayer",
    "Dim",
    "GraphIndex",
    "ModelGraph",
    "VideoInput",
    "classify_kind",
    "conv_depths",
    "detect_video_input",
    "extract_layers",
    "find_head",
    "load_graph",
    "load_model",
    "max_ir_version_supported",
]
