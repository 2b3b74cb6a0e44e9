"""Baseline saliency volumes computed by onnxcfp itself, so every method is compared on the same model
and clip. Gradient-free: occlusion, random tubes, centre prior, random channel subsets. Gradient-based:
Grad-CAM and per-frame Grad-CAM, written on plain ``[C, T, H, W]`` activation/gradient arrays (one clip
of a ``Trace``) so they need no model access. Feature-resolution maps are returned at feature
resolution; bring them to the clip with ``onnxcfp.volume.resize_volume``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

from onnxcfp.errors import ConfigError
from onnxcfp.evaluate.faithfulness import Predict, baseline_clip, from_cthw, predict_batched, to_cthw
from onnxcfp.volume import normalise01


def _check_cam_inputs(activation: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(activation, dtype=np.float64)
    g = np.asarray(gradient, dtype=np.float64)
    if a.ndim != 4 or a.shape != g.shape:
        raise ConfigError(
            f"activation {a.shape} and gradient {g.shape} must both be one clip's [C, T, H, W]; "
            "index the Trace's [N, ...] arrays by clip first"
        )
    return a, g


def gradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM tube ``[T, H, W]`` in [0, 1]: one weight per channel (the gradient's mean over T, H, W),
    ReLU of the weighted channel sum, min-max normalised."""
    a, g = _check_cam_inputs(activation, gradient)
    weights = g.mean(axis=(1, 2, 3))
    return normalise01(np.maximum(np.tensordot(weights, a, axes=1), 0.0))


def gradcam_per_frame(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Per-frame Grad-CAM as MMAction2/SlowFast compute it for 3D CNNs: one weight per channel AND time
    slice (the gradient's mean over H, W at that t), ReLU of the weighted sum, min-max over the volume."""
    a, g = _check_cam_inputs(activation, gradient)
    weights = g.mean(axis=(2, 3), keepdims=True)  # [C, T, 1, 1]
    return normalise01(np.maximum((weights * a).sum(axis=0), 0.0))


def channel_sum_tube(activation: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """Tube of a channel subset: the ReLU'd activations of ``channels`` summed, min-max normalised."""
    a = np.asarray(activation, dtype=np.float64)
    if a.ndim != 4:
        raise ConfigError(f"activation must be one clip's [C, T, H, W], got shape {a.shape}")
    idx = np.asarray(channels, dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= a.shape[0]:
        raise ConfigError(f"channels must be a non-empty subset of 0..{a.shape[0] - 1}")
    return normalise01(np.maximum(a[idx], 0.0).sum(axis=0))


def random_channels(n_channels: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct channels drawn uniformly (sorted): the same-size random subset a selected channel
    set must beat."""
    if not 1 <= k <= n_channels:
        raise ConfigError(f"cannot draw {k} channels out of {n_channels}")
    return np.sort(np.random.default_rng(seed).choice(n_channels, size=k, replace=False))


def random_tube(shape: Sequence[int], seed: int, sigma: Sequence[float] = (1.0, 4.0, 4.0)) -> np.ndarray:
    """Smooth random ``[T, H, W]`` map in [0, 1] (uniform noise, Gaussian-blurred with ``sigma`` voxels so
    it has blob-like structure as real maps do; sigma 0 = independent voxels)."""
    noise = np.random.default_rng(seed).random(tuple(int(s) for s in shape))
    if any(s > 0 for s in sigma):
        noise = ndimage.gaussian_filter(noise, sigma=tuple(sigma), mode="wrap")
    return normalise01(noise)


def centre_prior(shape: Sequence[int], sigma_fraction: float = 0.25) -> np.ndarray:
    """``[T, H, W]`` isotropic Gaussian around the frame centre (std = ``sigma_fraction`` of each side),
    the same on every frame, peak 1."""
    t, h, w = (int(s) for s in shape)
    if sigma_fraction <= 0:
        raise ConfigError(
            f"centre-prior sigma must be a positive fraction of the frame, got {sigma_fraction}"
        )
    y = (np.arange(h) + 0.5 - h / 2) / (sigma_fraction * h)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma_fraction * w)
    frame = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    return np.broadcast_to(frame / frame.max(), (t, h, w)).astype(np.float32)


def _starts(n: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis: every ``stride``, plus one flush with the end so all voxels are
    covered."""
    last = max(n - patch, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def occlusion(
    predict: Predict,
    clip: np.ndarray,
    target: int,
    layout: str = "NCTHW",
    patch: Sequence[int] = (4, 16, 16),
    stride: Sequence[int] = (4, 8, 8),
    fill: str = "mean",
    blur_sigma: tuple[float, float, float] = (1.0, 4.0, 4.0),
    batch_size: int | None = None,
    chunk: int = 32,
) -> np.ndarray:
    """Occlusion sensitivity ``[T, H, W]`` at clip resolution: slide a space-time ``patch`` with
    ``stride`` voxels, replace it with ``fill`` (as in the deletion curve), and give every voxel the mean
    drop of the target probability over the patches covering it (signed, in probability units; negative
    where hiding the region helps the class). Occluded clips are built ``chunk`` at a time and run
    batched (``batch_size`` as in ``predict_batched``)."""
    x = np.asarray(to_cthw(clip, layout), dtype=np.float32)
    dims = x.shape[1:]
    if len(patch) != 3 or len(stride) != 3 or min(*patch, *stride) < 1:
        raise ConfigError(
            f"patch {tuple(patch)} and stride {tuple(stride)} must be 3 positive sizes (T, H, W)"
        )
    p = tuple(min(int(a), n) for a, n in zip(patch, dims, strict=True))
    base = baseline_clip(x, fill, blur_sigma)
    origins = [
        (t, h, w)
        for t in _starts(dims[0], p[0], int(stride[0]))
        for h in _starts(dims[1], p[1], int(stride[1]))
        for w in _starts(dims[2], p[2], int(stride[2]))
    ]

    def boxes(o: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        return tuple(slice(a, a + n) for a, n in zip(o, p, strict=True))  # type: ignore[return-value]

    def stacks() -> Iterator[np.ndarray]:
        yield from_cthw(x[None], layout)  # the unoccluded clip first: the reference probability
        step = batch_size or chunk
        for lo in range(0, len(origins), step):
            part = origins[lo : lo + step]
            stack = np.repeat(x[None], len(part), axis=0)
            for i, o in enumerate(part):
                box = (slice(None), *boxes(o))
                stack[i][box] = base[box]
            yield from_cthw(stack, layout)

    probs = predict_batched(predict, stacks(), batch_size)[:, target].astype(np.float64)
    drop = probs[0] - probs[1:]
    total = np.zeros(dims)
    cover = np.zeros(dims)
    for d, o in zip(drop, origins, strict=True):
        total[boxes(o)] += d
        cover[boxes(o)] += 1
    return (total / cover).astype(np.float32)
