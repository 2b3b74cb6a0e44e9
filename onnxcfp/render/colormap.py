"""256-entry colour lookup tables: perceptual maps (viridis, inferno) by default, jet on request.

The perceptual maps are the published degree-6 polynomial fits to matplotlib's viridis and inferno
(Matt Zucker, CC0), accurate to about one 8-bit step, so no matplotlib is needed. Colouring is a single
table lookup per pixel (vectorised), never a per-pixel function call.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from onnxcfp.errors import ConfigError

# Polynomial coefficients c0..c6 per RGB channel: colour(t) = sum_k c_k t^k.
_POLY: dict[str, tuple[tuple[float, float, float], ...]] = {
    "viridis": (
        (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
        (0.1050930431085774, 1.404613529898575, 1.384590162594685),
        (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
        (-4.634230498983486, -5.799100973351585, -19.33244095627987),
        (6.228269936347081, 14.17993336680509, 56.69055260068105),
        (4.776384997670288, -13.74514537774601, -65.35303263337234),
        (-5.435455855934631, 4.645852612178535, 26.3124352495832),
    ),
    "inferno": (
        (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
        (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
        (11.60249308247187, -3.972853965665698, -15.9423941062914),
        (-41.70399613139459, 17.43639888205313, 44.35414519872813),
        (77.162935699427, -33.40235894210092, -81.80730925738993),
        (-71.31942824499214, 32.62606426397723, 73.20951985803202),
        (25.13112622477341, -12.24266895238567, -23.07032500287172),
    ),
}

COLORMAPS = ("viridis", "inferno", "jet")


@cache
def colormap_lut(name: str = "viridis") -> np.ndarray:
    """``[256, 3]`` uint8 table; entry i is the colour of value i / 255. Read-only (shared, cached)."""
    t = np.linspace(0.0, 1.0, 256)[:, None]
    if name in _POLY:
        coeffs = np.asarray(_POLY[name])  # [7, 3]
        rgb = sum(coeffs[k] * t**k for k in range(coeffs.shape[0]))
    elif name == "jet":
        # The classic piecewise-linear jet: blue -> cyan -> yellow -> red.
        rgb = np.clip(1.5 - np.abs(4.0 * t - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    else:
        raise ConfigError(f"colour map {name!r} is unknown: use one of {', '.join(COLORMAPS)}")
    lut = np.clip(np.rint(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def lut_indices(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to table rows 0..255 by rounding."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def apply_colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """uint8 RGB ``[..., 3]`` colours of ``values`` in [0, 1]."""
    return colormap_lut(name)[lut_indices(values)]
