"""Resampling and normalising saliency volumes (shared by the pyramid's tubes and the renderers)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` matrix of 1-D linear interpolation with half-pixel centres (align_corners=False),
    edges clamped: output sample i sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5``."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_volume(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Separable (tri)linear resize of an N-D volume to exactly ``size`` (no integer zoom factors)."""
    out = np.asarray(volume, dtype=np.float64)
    if out.ndim != len(size):
        raise ValueError(f"volume has {out.ndim} axes, size has {len(size)}")
    for axis, n_out in enumerate(size):
        if out.shape[axis] != n_out:
            m = linear_resize_matrix(out.shape[axis], int(n_out))
            out = np.moveaxis(np.tensordot(m, np.moveaxis(out, axis, 0), axes=1), 0, axis)
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
