"""The pyramid's option values and their one validation, shared by ``build_pyramid``, ``pyramid_tensors``,
``level_tubes`` and ``ExplainOptions`` (which checks them before a model is loaded or a batch starts)."""

from __future__ import annotations

from collections.abc import Sequence

from onnxcfp.errors import ConfigError

METHODS = ("gradients", "weights")
RESIDUALS = ("branch", "all")
NORMALISE = ("max", "original")
TUBES = ("relevance", "sum", "gradcam")


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_pyramid_options(
    *,
    depth: int,
    method: str = "gradients",
    residual: str = "branch",
    tube: str = "relevance",
    normalise: str = "max",
    theta: float = 0.6,
    top_n: int | None = None,
    top_n_level: int | None = None,
) -> None:
    """Raise ConfigError, naming the option, for the first pyramid option out of range."""
    check_choice("method", method, METHODS)
    check_choice("residual", residual, RESIDUALS)
    check_choice("tube", tube, TUBES)
    check_choice("normalise", normalise, NORMALISE)
    if not _is_int(depth) or depth < 1:
        raise ConfigError(f"depth={depth!r} must be an integer >= 1")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0.0 <= float(theta) <= 1.0:
        raise ConfigError(f"theta={theta!r} must be a number in [0, 1]")
    if top_n is not None and (not _is_int(top_n) or top_n < 1):
        raise ConfigError(f"top_n={top_n!r} must be a positive integer or None")
    if top_n_level is not None and (not _is_int(top_n_level) or not 1 <= top_n_level <= depth):
        raise ConfigError(f"top_n_level={top_n_level!r} must be a level in 1..{depth} or None")
    if normalise == "original" and method != "weights":
        raise ConfigError("normalise='original' reproduces the authors' weights method; use method='weights'")
