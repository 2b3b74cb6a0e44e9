"""``Trace``: what one session run returns — class scores plus the exposed activations and gradients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the graph layer does not need the trace; avoid importing it at run time for a hint
    from onnxcfp.graph.modelgraph import ModelGraph


@dataclass(frozen=True, eq=False)
class Trace:
    """Results of one run over a batch of N clips.

    ``activations`` and ``gradients`` are keyed by tensor name, each ``[N, ...]`` float32;
    ``layer_inputs(graph)`` gives the activations keyed by conv layer instead.
    ``gradients[t]`` is d(score)/d(t) where the score is ``score_kind`` ("logit" or "probability") of
    class ``target[n]`` for clip n; both are empty/None when no backward graph was run.
    """

    logits: np.ndarray  # [N, K]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    target: np.ndarray | None = None  # [N] int64, the class each clip's gradients are for
    score_kind: str = "logit"

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    def layer_inputs(self, graph: ModelGraph) -> dict[str, np.ndarray]:
        """Activations keyed by conv layer: ``{layer name: the input tensor that conv reads}``, in the
        graph's topological layer order, for the layers whose input was exposed in this run. Convs that
        read the same tensor (Inception branches) share one array; nothing is copied."""
        return {
            layer.name: self.activations[layer.input]
            for layer in graph.layers
            if layer.input in self.activations
        }
