"""Faithfulness without ground truth: deletion and insertion curves over space-time.

A voxel is one (t, h, w) position of the model's input, all channels together. Deletion starts from the
clip and replaces the most salient voxels first with a *baseline* (the clip's per-channel mean, or a
blurred copy of the clip); insertion starts from the baseline and puts the original voxels back, most
salient first. The target class probability is recorded after each step; a faithful map makes the
deletion curve fall fast (low AUC) and the insertion curve rise fast (high AUC).

Every model call goes through ``predict_batched``: one call for the whole stack, or calls of exactly
``batch_size`` rows (the last one padded) for models with a fixed batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onnxcfp.errors import ConfigError

Predict = Callable[[np.ndarray], np.ndarray]  # [B, ...model input] -> [B, K] class probabilities
LAYOUTS = ("NCTHW", "NTHWC")


@dataclass(frozen=True)
class Curve:
    """``fractions[i]`` of the voxels removed (deletion) or restored (insertion) → ``scores[i]``, the
    target class probability; ``auc`` is the trapezoidal area over fractions in [0, 1]."""

    kind: str  # "deletion" | "insertion"
    fractions: np.ndarray  # [S+1] float64, 0 .. 1
    voxels: np.ndarray  # [S+1] int64, voxels changed at each step
    scores: np.ndarray  # [S+1] float64

    @property
    def auc(self) -> float:
        return float(np.trapezoid(self.scores, self.fractions))


def to_cthw(clip: np.ndarray, layout: str) -> np.ndarray:
    """Model input ``[1, ...]`` in ``layout`` → ``[C, T, H, W]`` (a view)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    x = np.asarray(clip)
    if x.ndim != 5 or x.shape[0] != 1:
        raise ConfigError(f"expected one clip as a [1, ...] 5-D model input, got shape {x.shape}")
    return x[0] if layout == "NCTHW" else np.moveaxis(x[0], -1, 0)


def from_cthw(stack: np.ndarray, layout: str) -> np.ndarray:
    """``[B, C, T, H, W]`` → ``[B, ...]`` in ``layout`` (contiguous, ready for a session)."""
    out = stack if layout == "NCTHW" else np.moveaxis(stack, 1, -1)
    return np.ascontiguousarray(out)


def predict_batched(
    predict: Predict, batches: Iterator[np.ndarray] | np.ndarray, batch_size: int | None = None
) -> np.ndarray:
    """Run ``predict`` over a stack (or an iterator of stacks) of model inputs and concatenate.

    ``batch_size=None``: one call per given stack. Otherwise every call gets exactly ``batch_size`` rows
    (the final rows are padded by repeating the last input and the padding's outputs dropped), which is
    what a model exported with a fixed batch dimension needs."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    stacks = [batches] if isinstance(batches, np.ndarray) else batches
    outputs: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    pending_rows = 0

    def call(rows: np.ndarray) -> None:
        n = rows.shape[0]
        if batch_size is not None and n < batch_size:
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - n, axis=0)])
        out = np.asarray(predict(rows))
        if out.ndim != 2 or out.shape[0] != rows.shape[0]:
            raise ConfigError(
                f"predict must return [batch, classes] probabilities; got {out.shape} "
                f"for {rows.shape[0]} inputs (fix the predict callable)"
            )
        outputs.append(out[:n])

    for stack in stacks:
        if batch_size is None:
            call(stack)
            continue
        pending.append(stack)
        pending_rows += stack.shape[0]
        while pending_rows >= batch_size:
            joined = np.concatenate(pending)
            call(joined[:batch_size])
            pending, pending_rows = [joined[batch_size:]], joined.shape[0] - batch_size
    if batch_size is not None and pending_rows > 0:
        call(np.concatenate(pending))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def baseline_clip(x_cthw: np.ndarray, fill: str, blur_sigma: tuple[float, float, float]) -> np.ndarray:
    """What a removed voxel becomes: ``"mean"`` the clip's per-channel mean, ``"blur"`` a Gaussian blur
    of the clip over (T, H, W) with ``blur_sigma`` voxels, per channel."""
    x = np.asarray(x_cthw, dtype=np.float32)
    if fill == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64), x.shape).astype(
            np.float32
        )
    if fill == "blur":
        return np.stack([ndimage.gaussian_filter(c, sigma=blur_sigma, mode="nearest") for c in x])
    raise ConfigError(f"fill must be 'mean' or 'blur', got {fill!r}")


def saliency_order(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat voxel indices, most salient first; ties broken by a seeded random order (not raster order,
    which would favour the top of the frame for flat maps)."""
    s = np.asarray(saliency, dtype=np.float64).ravel()
    tie_break = np.random.default_rng(seed).permutation(s.size)
    return np.lexsort((tie_break, -s))


def saliency_curves(
    predict: Predict,
    clip: np.ndarray,
    saliency: np.ndarray,
    target: int,
    kinds: tuple[str, ...] = ("deletion", "insertion"),
    layout: str = "NCTHW",
    steps: int = 20,
    fill: str = "mean",
    blur_sigma: tuple[float, float, float] = (1.0, 4.0, 4.0),
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, Curve]:
    """Deletion and/or insertion curves of ``saliency`` ``[T, H, W]`` (clip resolution) on one model
    input ``clip`` ``[1, ...]``: ``steps + 1`` points each, from no voxel to every voxel changed. All
    points of all requested curves go through ONE ``predict_batched`` (see ``batch_size`` there)."""
    for kind in kinds:
        if kind not in ("deletion", "insertion"):
            raise ConfigError(f"curve kind must be 'deletion' or 'insertion', got {kind!r}")
    if steps < 1:
        raise ConfigError(f"a curve needs at least 1 step, got {steps}")
    x = np.asarray(to_cthw(clip, layout), dtype=np.float32)
    sal = np.asarray(saliency)
    if sal.shape != x.shape[1:]:
        raise ConfigError(
            f"saliency {sal.shape} must match the clip's [T, H, W] {x.shape[1:]}; resize it first "
            "(SaliencyTube.to_clip or onnxcfp.volume.resize_volume)"
        )
    base = baseline_clip(x, fill, blur_sigma)
    n_vox = sal.size
    counts = np.rint(np.linspace(0, n_vox, steps + 1)).astype(np.int64)
    # rank[v] = position of voxel v in the order; step i has changed the voxels with rank < counts[i].
    rank = np.empty(n_vox, dtype=np.int64)
    rank[saliency_order(sal, seed)] = np.arange(n_vox)
    changed = rank.reshape(sal.shape)[None] < counts[:, None, None, None]  # [S+1, T, H, W]
    # Filled in place (no temporaries of the stack's size): the stack is the memory peak here.
    stack = np.empty((len(kinds), steps + 1, *x.shape), dtype=np.float32)
    for part, kind in zip(stack, kinds, strict=True):
        start, end = (x, base) if kind == "deletion" else (base, x)
        part[...] = start
        np.copyto(part, end, where=changed[:, None])
    probs = predict_batched(predict, from_cthw(stack.reshape(-1, *x.shape), layout), batch_size)
    scores = probs[:, target].astype(np.float64).reshape(len(kinds), steps + 1)
    return {
        kind: Curve(kind=kind, fractions=counts / n_vox, voxels=counts, scores=scores[i])
        for i, kind in enumerate(kinds)
    }
