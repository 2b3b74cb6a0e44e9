"""onnxcfp: Class Feature Pyramids for video action-recognition networks, straight from ONNX files."""

__version__ = "0.1.0"
