"""Gradient rules, one small function per op type, all registered in ``RULES``."""

from onnxcfp.gradients.rules import (  # noqa: F401  (imported for their registrations)
    activation,
    conv,
    elementwise,
    linalg,
    pool,
    reduce,
    resize,
    shape,
)
from onnxcfp.gradients.rules.registry import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]
