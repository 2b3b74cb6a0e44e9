"""Gradients in plain ONNX: a backward section that onnxruntime's inference builds can run.

``add_gradients(model, logits, wrt, score)`` returns a ``GradientGraph``; ``check_differentiable`` lists
why a model cannot be differentiated (empty when it can).
"""

from onnxcfp.gradients.builder import NON_DIFF, GradientGraph, add_gradients, check_differentiable
from onnxcfp.gradients.rules import RULES

__all__ = ["NON_DIFF", "RULES", "GradientGraph", "add_gradients", "check_differentiable"]
