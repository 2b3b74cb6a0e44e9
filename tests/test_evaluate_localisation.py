"""Localisation scores and gradient baselines, on constructed cases with known answers and against naive
re-statements."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcfp.datasets import make_clips
from onnxcfp.errors import ConfigError
from onnxcfp.evaluate import (
    auroc,
    centre_prior,
    channel_sum_tube,
    energy_in_mask,
    frame_mass,
    gradcam,
    gradcam_per_frame,
    pointing_game,
    random_channels,
    random_tube,
    temporal_auroc,
)


@pytest.fixture(scope="module")
def synthetic():
    return make_clips(8, seed=21, size=48)


def test_tube_equal_to_mask_scores_perfectly(synthetic) -> None:
    for mask in synthetic.masks:
        tube = mask.astype(np.float32)
        assert energy_in_mask(tube, mask) == pytest.approx(1.0)
        assert pointing_game(tube, mask).rate == 1.0
        assert energy_in_mask(1.0 - tube, mask) == pytest.approx(0.0)
        assert pointing_game(1.0 - tube, mask).rate == 0.0


def test_random_tube_scores_about_the_mask_fraction(synthetic) -> None:
    for i, mask in enumerate(synthetic.masks):
        fraction = mask.mean()
        # Independent voxels: the energy is a ratio of sums of ~37k uniforms, within a few 1e-3.
        iid = random_tube(mask.shape, seed=i, sigma=(0, 0, 0))
        assert energy_in_mask(iid, mask) == pytest.approx(fraction, abs=0.01)
    # Smooth tubes vary more per draw; their mean over draws still sits at the mask fraction.
    mask = synthetic.masks[0]
    energies = [energy_in_mask(random_tube(mask.shape, seed=s), mask) for s in range(40)]
    assert abs(np.mean(energies) - mask.mean()) < 3 * np.std(energies) / np.sqrt(40) + 1e-3


def test_flat_or_zero_map_scores_like_uniform(synthetic) -> None:
    mask = synthetic.masks[1]
    for flat in (np.zeros(mask.shape), np.full(mask.shape, 0.3), -np.ones(mask.shape)):
        assert energy_in_mask(flat, mask) == pytest.approx(mask.mean())
        result = pointing_game(flat, mask)
        area = mask[result.frames].mean(axis=(1, 2))
        np.testing.assert_allclose(result.hits, area)


def test_pointing_game_on_hand_made_frames() -> None:
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[:3, 2:5, 2:5] = True  # frame 3 has no ground truth: not scored
    sal = np.zeros((4, 10, 10))
    sal[0, 3, 3] = 1.0  # max inside
    sal[1, 8, 8] = 1.0  # max outside
    sal[2, 3, 3] = sal[2, 8, 8] = 1.0  # tied maxima, one inside
    sal[3, 0, 0] = 9.0
    result = pointing_game(sal, mask)
    np.testing.assert_array_equal(result.frames, [0, 1, 2])
    np.testing.assert_allclose(result.hits, [1.0, 0.0, 0.5])
    # Tolerance: a maximum two pixels off the mask's corner hits with a 2-px (not 1-px) disk... along a
    # row it is 2 px from the mask edge, so radius 2 reaches it.
    off = np.zeros((1, 10, 10))
    off[0, 3, 6] = 1.0
    one = mask[:1]
    assert pointing_game(off, one, tolerance=1).rate == 0.0
    assert pointing_game(off, one, tolerance=2).rate == 1.0


def test_bad_inputs_raise_config_errors() -> None:
    mask = np.zeros((2, 4, 4), dtype=bool)
    with pytest.raises(ConfigError):
        energy_in_mask(np.zeros((2, 4, 5)), mask)
    with pytest.raises(ConfigError):
        pointing_game(np.ones((2, 4, 4)), mask)  # empty mask
    with pytest.raises(ConfigError):
        energy_in_mask(np.full((2, 4, 4), np.nan), mask)
    with pytest.raises(ConfigError):
        temporal_auroc(np.ones(8), (3, 12))
    with pytest.raises(ConfigError):
        auroc(np.ones(3), np.ones(3, dtype=bool))


def _naive_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_matches_pairwise_count(items) -> None:
    scores = np.array([s for s, _ in items], dtype=float)
    positive = np.array([p for _, p in items])
    if positive.all() or not positive.any():
        return
    assert auroc(scores, positive) == pytest.approx(_naive_auroc(scores, positive))


def test_temporal_auroc_known_answers() -> None:
    imp = np.zeros(16)
    imp[4:10] = 1.0
    assert temporal_auroc(imp, (4, 10)) == 1.0
    assert temporal_auroc(1.0 - imp, (4, 10)) == 0.0
    assert temporal_auroc(np.ones(16), (4, 10)) == 0.5
    vol = np.zeros((16, 5, 5))
    vol[4:10, 2, 2] = 3.0
    np.testing.assert_array_equal(frame_mass(vol), imp * 3.0)


def _naive_cam(a: np.ndarray, g: np.ndarray, per_frame: bool) -> np.ndarray:
    c, t, h, w = a.shape
    out = np.zeros((t, h, w))
    for ci in range(c):
        for ti in range(t):
            weight = g[ci, ti].mean() if per_frame else g[ci].mean()
            out[ti] += weight * a[ci, ti]
    out = np.maximum(out, 0)
    return (out - out.min()) / (out.max() - out.min())


def test_gradcam_matches_naive_statement() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((6, 4, 5, 7))
    g = rng.normal(size=(6, 4, 5, 7))
    np.testing.assert_allclose(gradcam(a, g), _naive_cam(a, g, per_frame=False), atol=1e-6)
    np.testing.assert_allclose(gradcam_per_frame(a, g), _naive_cam(a, g, per_frame=True), atol=1e-6)
    # When every time slice has the same gradient, one weight per slice is one weight per channel.
    g_const_t = np.repeat(g[:, :1], 4, axis=1)
    np.testing.assert_allclose(gradcam(a, g_const_t), gradcam_per_frame(a, g_const_t), atol=1e-6)
    with pytest.raises(ConfigError):
        gradcam(a, g[:, :2])


def test_gradcam_finds_the_channel_the_class_uses() -> None:
    # Channel 0 lights a blob, channel 1 another; the score depends only on channel 0's activation.
    a = np.zeros((2, 3, 8, 8))
    a[0, :, 1:3, 1:3] = 1.0
    a[1, :, 5:7, 5:7] = 1.0
    g = np.zeros_like(a)
    g[0] = 1.0 / a[0].size
    cam = gradcam(a, g)
    assert cam[:, 1:3, 1:3].min() == 1.0 and cam[:, 5:7, 5:7].max() == 0.0


def test_channel_subset_and_priors() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 2, 3, 3))
    chosen = random_channels(10, 4, seed=5)
    assert len(set(chosen.tolist())) == 4 and np.array_equal(chosen, random_channels(10, 4, seed=5))
    naive = sum(np.maximum(a[c], 0) for c in chosen)
    naive = (naive - naive.min()) / (naive.max() - naive.min())
    np.testing.assert_allclose(channel_sum_tube(a, chosen), naive, atol=1e-6)
    with pytest.raises(ConfigError):
        random_channels(3, 4, seed=0)
    prior = centre_prior((3, 20, 30))
    assert prior.shape == (3, 20, 30) and prior.max() == pytest.approx(1.0)
    np.testing.assert_allclose(prior, prior[:, ::-1, ::-1], atol=1e-7)  # symmetric about the centre
    centred = np.zeros((3, 20, 30), dtype=bool)
    centred[:, 8:12, 12:18] = True
    corner = np.zeros_like(centred)
    corner[:, :4, :6] = True
    assert energy_in_mask(prior, centred) > 2 * centred.mean()
    assert energy_in_mask(prior, corner) < corner.mean()
