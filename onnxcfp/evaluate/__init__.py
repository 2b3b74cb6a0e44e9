"""How good is an explanation? Localisation against ground-truth masks, faithfulness curves, and the
baselines to compare against. The metric and baseline functions are pure and work on NumPy arrays plus,
for faithfulness and occlusion, a ``predict(batch) -> probabilities`` callable; ``evaluate_model`` runs
them all on a model and a set of masked clips (``onnxcfp.evaluate.evaluation``), ``report`` prints and
writes the results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcfp.evaluate.baselines import (
    centre_prior,
    channel_sum_tube,
    gradcam,
    gradcam_per_frame,
    occlusion,
    random_channels,
    random_tube,
)
from onnxcfp.evaluate.data import MaskedClip, MaskedClips, from_synthetic, read_masked_clips
from onnxcfp.evaluate.evaluation import (
    FAMILIES,
    METRICS,
    ClipScore,
    Comparison,
    EvaluationOptions,
    EvaluationResult,
    MethodSummary,
    ModelEvaluator,
    PreparedClip,
    evaluate_model,
    random_subset_tube,
)
from onnxcfp.evaluate.faithfulness import (
    Curve,
    Predict,
    baseline_clip,
    predict_batched,
    saliency_curves,
    saliency_order,
)
from onnxcfp.evaluate.localisation import (
    PointingResult,
    auroc,
    energy_in_mask,
    frame_mass,
    pointing_game,
    temporal_auroc,
)


@dataclass(frozen=True)
class SaliencyScores:
    """All scores of one saliency volume on one clip. Faithfulness fields are None when no model was
    given. ``score_kind`` of the curves is always the target's softmax probability."""

    energy: float
    pointing: float
    temporal_auroc: float
    deletion_auc: float | None = None
    insertion_auc: float | None = None


def score_saliency(
    saliency: np.ndarray,
    mask: np.ndarray,
    interval: tuple[int, int] | np.ndarray,
    predict: Predict | None = None,
    clip: np.ndarray | None = None,
    target: int | None = None,
    layout: str = "NCTHW",
    steps: int = 20,
    fill: str = "mean",
    batch_size: int | None = None,
    seed: int = 0,
) -> SaliencyScores:
    """Localisation scores of ``saliency`` ``[T, H, W]`` (clip resolution) against ``mask`` and the action
    ``interval``; with ``predict``, ``clip`` (the model input ``[1, ...]``) and ``target`` also the
    deletion and insertion AUCs (both curves in one batched predict)."""
    energy = energy_in_mask(saliency, mask)
    pointing = pointing_game(saliency, mask).rate
    temporal = temporal_auroc(frame_mass(saliency), interval)
    if predict is None or clip is None or target is None:
        return SaliencyScores(energy, pointing, temporal)
    curves = saliency_curves(
        predict,
        clip,
        saliency,
        target,
        layout=layout,
        steps=steps,
        fill=fill,
        batch_size=batch_size,
        seed=seed,
    )
    return SaliencyScores(energy, pointing, temporal, curves["deletion"].auc, curves["insertion"].auc)


__all__ = [
    "FAMILIES",
    "METRICS",
    "ClipScore",
    "Comparison",
    "Curve",
    "EvaluationOptions",
    "EvaluationResult",
    "MaskedClip",
    "MaskedClips",
    "MethodSummary",
    "ModelEvaluator",
    "PointingResult",
    "Predict",
    "PreparedClip",
    "SaliencyScores",
    "auroc",
    "baseline_clip",
    "centre_prior",
    "channel_sum_tube",
    "energy_in_mask",
    "evaluate_model",
    "frame_mass",
    "from_synthetic",
    "gradcam",
    "gradcam_per_frame",
    "occlusion",
    "pointing_game",
    "predict_batched",
    "random_channels",
    "random_subset_tube",
    "random_tube",
    "read_masked_clips",
    "saliency_curves",
    "saliency_order",
    "score_saliency",
    "temporal_auroc",
]
