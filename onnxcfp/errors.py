"""Typed errors. Every error a user can cause is an ``OnnxcfpError``: the CLI prints its message as one
line and exits with code 2; Python callers catch the specific subclass."""

from __future__ import annotations


class OnnxcfpError(Exception):
    """Base of every user-facing error: ``str(err)`` is one line saying what is wrong and what to do."""

    exit_code = 2


class ModelLoadError(OnnxcfpError):
    """The file is missing, not ONNX, truncated, or fails the checker."""


class UnsafeExternalDataError(ModelLoadError):
    """An external-data location points outside the model's folder."""


class NoVideoInputError(OnnxcfpError):
    """The model has no 5-D (video) input."""


class NoConvError(OnnxcfpError):
    """The model has no Conv node to explain."""


class ChannelFlowError(OnnxcfpError):
    """A node on a conv's channel path rearranges channels in a way onnxcfp cannot follow."""


class HeadNotFoundError(OnnxcfpError):
    """No classifier head could be found after the last conv features."""


class UnsupportedOpError(OnnxcfpError):
    """An op on a path that matters has no gradient rule."""


class InputShapeError(OnnxcfpError):
    """The clip tensor does not fit the model's input (shape or dtype)."""


class MemoryBudgetError(OnnxcfpError):
    """Exposing the requested tensors would exceed the user's memory budget."""


class VideoReadError(OnnxcfpError):
    """A clip could not be read: unreadable, empty, too short, or frames of mixed sizes."""


class ConfigError(OnnxcfpError):
    """An option value is out of range or inconsistent (theta, depth, label, formats...)."""


class GradientCheckError(OnnxcfpError):
    """The gradients do not reach the classifier features, or fail the linear-head self-check."""
