"""Localisation scores of a saliency volume against a ground-truth actor mask (both at clip resolution).

Conventions shared by every score here:
- saliency is ``[T, H, W]`` and is read as non-negative evidence: negative values count as 0;
- a map with no positive mass carries no preference, so it is scored as the uniform map would be (never
  NaN): energy = the mask's volume fraction, pointing = the mask's area fraction per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onnxcfp.errors import ConfigError


def _check_pair(saliency: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(saliency, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if s.ndim != 3 or s.shape != m.shape:
        raise ConfigError(
            f"saliency {s.shape} and mask {m.shape} must both be [T, H, W] of the same size; "
            "resize the saliency to the clip first (SaliencyTube.to_clip or onnxcfp.volume.resize_volume)"
        )
    if not np.all(np.isfinite(s)):
        raise ConfigError("saliency contains NaN or infinite values; fix the map before scoring it")
    return np.maximum(s, 0.0), m


def energy_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the saliency mass (over the whole clip) that lies inside the ground-truth tube."""
    s, m = _check_pair(saliency, mask)
    total = s.sum()
    if total <= 0.0:
        return float(m.mean())
    return float(s[m].sum() / total)


@dataclass(frozen=True)
class PointingResult:
    """Per-frame pointing game: ``frames`` are the frame indices with a non-empty mask, ``hits[i]`` the
    hit score of ``frames[i]`` (1/0 for a unique maximum; the fraction of tied maxima inside the mask
    otherwise, i.e. the expected hit under random tie-breaking); ``rate`` their mean."""

    frames: np.ndarray  # [F] int64
    hits: np.ndarray  # [F] float64 in [0, 1]

    @property
    def rate(self) -> float:
        return float(self.hits.mean())


def pointing_game(
    saliency: np.ndarray, mask: np.ndarray, tolerance: int = 0, rtol: float = 1e-6
) -> PointingResult:
    """Does each frame's saliency maximum fall inside that frame's mask? Frames with an empty mask are not
    scored. ``tolerance`` grows the mask by a disk of that many pixels first (TorchRay's pointing game uses
    15 px on ImageNet-sized images); values within ``rtol`` of the frame's maximum count as tied maxima."""
    s, m = _check_pair(saliency, mask)
    if tolerance < 0:
        raise ConfigError(f"pointing-game tolerance must be >= 0 pixels, got {tolerance}")
    frames = np.flatnonzero(m.any(axis=(1, 2)))
    if frames.size == 0:
        raise ConfigError("the mask is empty on every frame; the pointing game needs a ground-truth region")
    if tolerance > 0:
        yy, xx = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
        disk = xx**2 + yy**2 <= tolerance**2
        m = np.stack([ndimage.binary_dilation(frame, structure=disk) for frame in m])
    hits = np.empty(frames.size)
    for i, t in enumerate(frames):
        frame = s[t]
        top = frame.max()
        at_max = frame >= top - rtol * abs(top) if top > 0 else np.ones_like(m[t])
        hits[i] = np.count_nonzero(at_max & m[t]) / np.count_nonzero(at_max)
    return PointingResult(frames=frames, hits=hits)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` items from the rest: the
    probability that a random positive outscores a random negative, ties counting one half
    (Mann-Whitney U / (n_pos * n_neg), with mid-ranks)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ConfigError(f"scores {x.shape} and labels {y.shape} must have the same length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("AUROC needs both positive and negative items (e.g. action and rest frames)")
    ranks = _mid_ranks(x)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _mid_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.size]])
    ranks = np.empty(x.size)
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + 1 + b) / 2
    return ranks


def frame_mass(saliency: np.ndarray) -> np.ndarray:
    """Per-frame importance used for temporal scoring: the frame's non-negative saliency mass. (Any
    per-frame score that is monotone in it gives the same AUROC; pass your own to temporal_auroc.)"""
    s = np.maximum(np.asarray(saliency, dtype=np.float64), 0.0)
    return s.reshape(s.shape[0], -1).sum(axis=1)


def temporal_auroc(frame_importance: np.ndarray, interval: tuple[int, int] | np.ndarray) -> float:
    """AUROC of per-frame importance ``[T]`` for picking out the action frames ``[start, stop)``."""
    imp = np.asarray(frame_importance, dtype=np.float64).ravel()
    start, stop = (int(v) for v in interval)
    if not 0 <= start < stop <= imp.size:
        raise ConfigError(f"action interval [{start}, {stop}) does not fit a clip of {imp.size} frames")
    action = np.zeros(imp.size, dtype=bool)
    action[start:stop] = True
    return auroc(imp, action)
