"""Colour maps, blending and overlay alignment, checked against published colours and naive formulas."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcfp.render.colormap import apply_colormap, colormap_lut
from onnxcfp.render.overlay import blend, overlay_tube


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L* of sRGB colours (independent restatement of the standard formulas)."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


def test_perceptual_maps_match_published_ends_and_rise_in_lightness():
    published = {
        "viridis": ((0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)),
        "inferno": ((0, 0, 4), (0xFC, 0xFF, 0xA4)),
    }
    for name, (lo, hi) in published.items():
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert np.abs(lut[0].astype(int) - lo).max() <= 6 and np.abs(lut[255].astype(int) - hi).max() <= 6
        assert np.all(np.diff(_lightness(lut)) > -0.5)  # perceptual: lightness never drops
    jet = colormap_lut("jet")
    assert tuple(jet[0]) == (0, 0, 128) and tuple(jet[255]) == (128, 0, 0)


def test_apply_colormap_is_a_table_lookup():
    v = np.array([[0.0, 1.0], [0.5, np.nan]])
    lut = colormap_lut("viridis")
    np.testing.assert_array_equal(apply_colormap(v), lut[[[0, 255], [128, 0]]])


def test_blend_matches_float_formula():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    heat = rng.random((3, 9, 7)).astype(np.float32)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        naive = (1 - alpha) * frames + alpha * colormap_lut("inferno")[np.rint(heat * 255).astype(int)]
        got = blend(frames, heat, alpha, "inferno").astype(float)
        assert np.abs(got - naive).max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(
    tp=st.integers(0, 3),
    hp=st.integers(0, 6),
    wp=st.integers(0, 6),
    size=st.sampled_from([(16, 112, 112), (8, 56, 84), (12, 50, 70)]),
)
def test_overlay_peak_lands_on_its_cell(tp, hp, wp, size):
    vol = np.zeros((4, 7, 7), np.float32)
    vol[tp, hp, wp] = 1.0
    frames = np.zeros((*size, 3), np.uint8)
    out, heat = overlay_tube(frames, vol, alpha=1.0)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    for axis, (p, n_in) in enumerate(zip((tp, hp, wp), vol.shape, strict=True)):
        cell = size[axis] / n_in
        centre = (p + 0.5) * cell - 0.5  # the voxel's centre in output pixel coordinates
        assert abs(peak[axis] - centre) <= cell / 2 + 1e-9, (axis, peak, centre)
    # The peak pixel is the colour map's top colour (alpha 1 over black frames).
    np.testing.assert_array_equal(out[peak], colormap_lut("viridis")[255])
