"""The one registry of gradient rules, keyed by ONNX op type (default domain).

A rule is ``rule(ctx, node, gys, need) -> list[str | None]``: ``gys[i]`` is d score/d ``node.output[i]``
(None where that output gets no gradient), ``need[i]`` says whether ``node.input[i]`` needs one; it returns
one entry per input, the name of the gradient tensor it emitted or None. Rules emit only standard ops in
forms valid for opsets 13–21 (16–21 for ScatterElements with a reduction, which the driver arranges).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxcfp.gradients.context import GradContext

Grads = list[str | None]
Rule = Callable[[GradContext, onnx.NodeProto, Grads, list[bool]], Grads]

RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a rule for one or more op types (each op type may be registered once)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            if op in RULES:
                raise RuntimeError(f"two gradient rules registered for {op}")
            RULES[op] = fn
        return fn

    return register
