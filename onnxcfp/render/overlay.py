"""Saliency tubes on frames: upsample a feature-resolution volume to the clip, colour it, blend it."""

from __future__ import annotations

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.render.colormap import colormap_lut, lut_indices
from onnxcfp.volume import normalise01, resize_volume


def tube_to_clip(volume: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """A ``[T', H', W']`` tube as float32 ``[T, H, W]`` in [0, 1] at clip size: trilinear with half-pixel
    centres to the exact size (so voxel centres land on the centres of the cells they cover), then
    min-max normalised (a constant tube becomes zeros)."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ConfigError(f"a saliency tube must be [T, H, W]; got shape {vol.shape}")
    return normalise01(resize_volume(vol, size))


def blend(frames: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: str = "viridis") -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: ``(1 - alpha) * frame + alpha * colour(heat)``, ``heat`` in [0, 1] at the
    frames' size. Colours come from a 256-entry lookup table (one gather for the whole clip)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay alpha {alpha} must be in [0, 1]")
    frames = np.asarray(frames)
    if frames.shape[:-1] != heat.shape or frames.shape[-1] != 3:
        raise ConfigError(f"heat map {heat.shape} does not match frames {frames.shape}")
    # Blend in integer arithmetic through a per-colour table: out = (a*colour + (256-a)*frame) >> 8.
    a = round(alpha * 256)
    colours = colormap_lut(colormap).astype(np.uint16)[lut_indices(heat)]
    out = (colours * a + frames.astype(np.uint16) * (256 - a) + 128) >> 8
    return out.astype(np.uint8)


def overlay_tube(
    frames: np.ndarray, volume: np.ndarray, alpha: float = 0.5, colormap: str = "viridis"
) -> tuple[np.ndarray, np.ndarray]:
    """(overlaid uint8 frames ``[T, H, W, 3]``, heat ``[T, H, W]`` in [0, 1]) for a feature-resolution
    tube drawn on the clip's frames."""
    heat = tube_to_clip(volume, tuple(frames.shape[:3]))
    return blend(frames, heat, alpha, colormap), heat


def heat_image(volume2d: np.ndarray, height: int, width: int, colormap: str = "viridis") -> np.ndarray:
    """A 2-D map resized (bilinear, half-pixel) to ``height`` x ``width`` and coloured, uint8 RGB."""
    m = resize_volume(np.asarray(volume2d, dtype=np.float32), (height, width))
    return colormap_lut(colormap)[lut_indices(m)]
