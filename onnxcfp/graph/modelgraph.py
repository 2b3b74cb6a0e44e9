"""``ModelGraph``: everything the later stages need to know about a loaded model, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxcfp.graph.channels import ChannelMap
from onnxcfp.graph.head import ClassifierHead
from onnxcfp.graph.layers import ConvLayer

Dim = int | str | None  # a static size, a symbolic name, or unknown


@dataclass(frozen=True)
class VideoInput:
    """The model's 5-D clip input. ``layout`` is "NCTHW" (PyTorch-style) or "NTHWC" (TensorFlow-style,
    where a Transpose precedes the first Conv). Sizes are ints when static, names when symbolic."""

    name: str
    layout: str
    shape: tuple[Dim, ...]
    elem_type: int  # onnx.TensorProto data type

    def dim(self, axis: str) -> Dim:
        """Size along "N", "C", "T", "H" or "W"."""
        return self.shape[self.layout.index(axis)]


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """A loaded model and what onnxcfp found in it.

    ``model`` is the checked model with shapes inferred and its IR version lowered to what the installed
    onnxruntime accepts; ``layers`` are its Conv nodes in topological order; ``shapes`` maps every tensor
    name with an inferred shape to it; ``problems`` says why the model cannot be explained (empty when
    it can).
    """

    model: onnx.ModelProto
    source: str
    video_input: VideoInput
    layers: tuple[ConvLayer, ...]
    head: ClassifierHead | None
    shapes: dict[str, tuple[Dim, ...]]
    problems: tuple[str, ...] = ()
    _channel_maps: dict[tuple[str, str], ChannelMap] = field(default_factory=dict, repr=False)

    @property
    def explainable(self) -> bool:
        return not self.problems and self.head is not None

    def layer(self, name: str) -> ConvLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no conv layer named {name!r}")
