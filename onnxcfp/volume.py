"""Resampling and normalising saliency volumes (shared by the pyramid's tubes and the renderers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, frac) of 1-D linear interpolation with half-pixel centres (align_corners=False), edges
    clamped: output sample i sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5`` and is
    ``(1 - frac[i]) * x[lo[i]] + frac[i] * x[hi[i]]``."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` matrix of 1-D linear interpolation with half-pixel centres (align_corners=False),
    edges clamped: output sample i sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5``."""
    lo, hi, frac = _linear_taps(n_in, n_out)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_volume(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Separable (tri)linear resize of an N-D volume to exactly ``size`` (no integer zoom factors).

    Each axis is resampled with two gathers and a lerp (the ``linear_resize_matrix`` product without
    its zeros): a matrix product here goes through BLAS, whose threads can stall for tens of
    milliseconds on a busy machine for these tiny products."""
    out = np.asarray(volume, dtype=np.float64)
    if out.ndim != len(size):
        raise ValueError(f"volume has {out.ndim} axes, size has {len(size)}")
    for axis, n_out in enumerate(size):
        if out.shape[axis] != n_out:
            lo, hi, frac = _linear_taps(out.shape[axis], int(n_out))
            weight = frac.reshape((-1,) + (1,) * (out.ndim - axis - 1))
            out = np.take(out, lo, axis=axis) * (1.0 - weight) + np.take(out, hi, axis=axis) * weight
    return out.astype(np.float32)


def normalise01(volume: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant (or non-finite-free empty) volume becomes zeros, never NaN."""
    v = np.asarray(volume, dtype=np.float32)
    if v.size == 0:
        return v
    lo, hi = float(v.min()), float(v.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)
