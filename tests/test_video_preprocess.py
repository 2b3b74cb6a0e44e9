"""Preprocessing: model cards, crop geometry, resize, normalisation, channel order and layout."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcfp.errors import ConfigError
from onnxcfp.video import Preprocessing, read_clip

CARD = {
    "input": {"name": "clip", "layout": "NTHWC", "shape": [1, 8, 16, 16, 3], "dtype": "float32"},
    "preprocessing": {
        "size": [16, 16],
        "resize": "shorter_side_center_crop",
        "scale": 255.0,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.25, 0.3],
        "channel_order": "RGB",
    },
}


def test_from_card_and_overrides():
    pre = Preprocessing.from_card(CARD)
    assert (pre.frames, pre.size, pre.layout, pre.mean) == (8, (16, 16), "NTHWC", (0.4, 0.5, 0.6))
    assert Preprocessing.from_card(CARD, layout="NCTHW", frames=None).layout == "NCTHW"
    assert Preprocessing.from_card(CARD, frames=None).frames == 8  # None means "not given"
    with pytest.raises(ConfigError):
        Preprocessing.from_card(CARD, layout="NHWC")


def test_normalisation_layout_and_channel_order_against_naive_formula():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    pre = Preprocessing.from_card(CARD)
    x = pre.to_tensor(frames)
    assert x.shape == (1, 8, 16, 16, 3) and x.dtype == np.float32
    t, y, xx, c = 3, 5, 7, 2
    naive = (frames[t, y, xx, c] / 255.0 - CARD["preprocessing"]["mean"][c]) / CARD["preprocessing"]["std"][c]
    assert x[0, t, y, xx, c] == pytest.approx(naive, rel=1e-5)
    nc = pre.with_options(layout="NCTHW").to_tensor(frames)
    np.testing.assert_array_equal(nc[0, :, t, y, xx], x[0, t, y, xx, :])
    bgr = pre.with_options(channel_order="BGR").to_tensor(frames)
    # Channel 0 of a BGR model is blue, normalised with the card's first mean/std.
    assert bgr[0, t, y, xx, 0] == pytest.approx((frames[t, y, xx, 2] / 255.0 - 0.4) / 0.2, rel=1e-5)


def test_shorter_side_centre_crop_keeps_the_middle():
    frames = np.zeros((2, 40, 120, 3), np.uint8)
    frames[:, :, :40] = (255, 0, 0)
    frames[:, :, 40:80] = (0, 255, 0)
    frames[:, :, 80:] = (0, 0, 255)
    pre = Preprocessing(size=(20, 20), frames=2)
    view = pre.resize_frames(frames)
    assert view.shape == (2, 20, 20, 3)
    # Resized to 20x60 then the centre 20 columns: the green band only (interior away from blending edges).
    assert np.all(view[:, :, 2:-2] == (0, 255, 0))
    assert pre.crop_box(40, 120) == (0, 40, 40, 80)
    clip = read_clip(frames, pre)
    assert clip.overlay_frames.shape == (2, 40, 40, 3) and np.all(clip.overlay_frames == (0, 255, 0))


def test_resize_keeps_a_linear_ramp_linear():
    # A horizontal ramp stays a ramp after bilinear downsizing: pixel centre x' maps to x = (x'+.5)*s-.5.
    w_in, w_out = 64, 16
    ramp = np.tile(np.arange(w_in, dtype=np.float64) * 4, (1, 64, 1))
    frames = np.repeat(ramp[..., None], 3, axis=-1).astype(np.uint8)
    out = Preprocessing(size=(16, w_out), resize="stretch").resize_frames(frames)[0, 8, :, 0].astype(float)
    centres = (np.arange(w_out) + 0.5) * (w_in / w_out) - 0.5
    np.testing.assert_allclose(out[2:-2], centres[2:-2] * 4, atol=2.0)
