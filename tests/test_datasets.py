"""Synthetic action dataset: contract, determinism, exact masks, class semantics, class-free appearance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from onnxcfp.datasets import (
    CLASS_NAMES,
    SHAPE_NAMES,
    SyntheticClips,
    make_clips,
    render_scenes,
)
from onnxcfp.datasets import synthetic as syn
from onnxcfp.errors import ConfigError

N_STATS = 400  # 50 clips per class for the statistical checks


@pytest.fixture(scope="module")
def clips() -> SyntheticClips:
    return make_clips(N_STATS, seed=11)


def test_contract_shapes_and_dtypes() -> None:
    c = make_clips(10, seed=0, frames=12, size=40)
    assert c.frames.shape == (10, 12, 40, 40, 3) and c.frames.dtype == np.uint8
    assert c.masks.shape == (10, 12, 40, 40) and c.masks.dtype == bool
    assert c.labels.shape == (10,) and c.labels.dtype == np.int64
    assert c.intervals.shape == (10, 2) and c.intervals.dtype == np.int64
    assert c.class_names == CLASS_NAMES and len(CLASS_NAMES) >= 6
    assert np.all((c.intervals[:, 0] >= 0) & (c.intervals[:, 0] < c.intervals[:, 1]))
    assert np.all(c.intervals[:, 1] <= 12)
    # A real sub-interval: the actor rests for part of every clip.
    assert np.all(c.intervals[:, 1] - c.intervals[:, 0] < 12)


def test_deterministic_by_seed() -> None:
    a, b, other = make_clips(12, seed=3), make_clips(12, seed=3), make_clips(12, seed=4)
    for field in ("frames", "masks", "labels", "intervals"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.frames, other.frames)


@pytest.mark.parametrize("n", [8, 37, 80])
def test_classes_balanced(n: int) -> None:
    counts = np.bincount(make_clips(n, seed=n, size=32).labels, minlength=len(CLASS_NAMES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_bad_arguments_raise_config_error() -> None:
    for kwargs in ({"n": 0}, {"n": 2, "frames": 3}, {"n": 2, "size": 8}):
        with pytest.raises(ConfigError):
            make_clips(seed=0, **kwargs)


def test_scene_is_static_outside_the_action_and_changes_inside(clips: SyntheticClips) -> None:
    # No camera motion, no noise in time: consecutive frames are identical exactly when the actor rests.
    changed = np.any(clips.frames[:, 1:] != clips.frames[:, :-1], axis=(2, 3, 4))  # [N, T-1], t vs t-1
    t = np.arange(1, clips.frames.shape[1])
    inside = (t >= clips.intervals[:, :1]) & (t < clips.intervals[:, 1:2])
    np.testing.assert_array_equal(changed, inside)


def test_masks_empty_outside_action_and_nonempty_inside(clips: SyntheticClips) -> None:
    area = clips.masks.sum(axis=(2, 3))
    t = np.arange(clips.frames.shape[1])
    inside = (t >= clips.intervals[:, :1]) & (t < clips.intervals[:, 1:2])
    assert np.all(area[~inside] == 0)
    assert np.all(area[inside] > 0)


def test_mask_pixels_are_exactly_the_actor_pixels(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    without_actor, support = render_scenes(scenes, draw_actor=False)
    # Outside the actor's pixels the clip is the scene rendered without the actor...
    outside = ~support
    np.testing.assert_array_equal(clips.frames[outside], without_actor[outside])
    # ...and on them it shows one of the actor's two colours.
    colours = np.broadcast_to(scenes.actor_colours[:, None, None, None], (*support.shape, 2, 3))
    shown = clips.frames[support]
    is_front = np.all(shown == colours[support][:, 0], axis=1)
    is_back = np.all(shown == colours[support][:, 1], axis=1)
    assert np.all(is_front | is_back)
    t = np.arange(clips.frames.shape[1])
    during = (t >= clips.intervals[:, :1]) & (t < clips.intervals[:, 1:2])
    np.testing.assert_array_equal(clips.masks, support & during[:, :, None, None])


# --- independent oracle: forward-transform each outline and test pixel centres against it -------------

_POLYGONS = {
    1: [(0.85, 0.5), (-0.85, 0.5), (-0.85, -0.5), (0.85, -0.5)],
    2: [(1.0, 0.0), (-0.7, 0.65), (-0.7, -0.65)],
    3: [(1.0, 0.0), (0.0, 0.6), (-1.0, 0.0), (0.0, -0.6)],
}


def _naive_object(shape: int, pose: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, front) of one object, computed in world coordinates."""
    cx, cy, angle, scale = pose
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    px, py = xs - cx, ys - cy
    heading = np.array([np.cos(angle), np.sin(angle)])  # local +u axis in world coordinates
    across = np.array([-np.sin(angle), np.cos(angle)])  # local +v axis
    front = px * heading[0] + py * heading[1] >= 0
    if shape == 0:
        # Ellipse as the quadratic form p^T A p <= 1 with A = R diag(1/a^2, 1/b^2) R^T.
        a, b = 1.0 * scale, 0.55 * scale
        mat = np.outer(heading, heading) / a**2 + np.outer(across, across) / b**2
        inside = mat[0, 0] * px**2 + 2 * mat[0, 1] * px * py + mat[1, 1] * py**2 <= 1.0
        return inside, inside & front
    corners = [scale * (u * heading + v * across) for u, v in _POLYGONS[shape]]
    inside = np.ones((size, size), dtype=bool)
    # Convex polygon listed counter-clockwise in (u, v): the point is left of (or on) every edge.
    for p0, p1 in zip(corners, corners[1:] + corners[:1], strict=True):
        edge = p1 - p0
        cross = edge[0] * (py - p0[1]) - edge[1] * (px - p0[0])
        inside &= cross >= -1e-9 * scale
    return inside, inside & front


def test_actor_support_matches_independent_geometry(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    _, support = render_scenes(scenes, draw_actor=False)
    size = scenes.size
    checked_shapes = set()
    mismatched = 0
    for i in range(0, N_STATS, 9):
        shape = int(scenes.actor_shape[i])
        checked_shapes.add(shape)
        for t in range(scenes.frames):
            inside, _ = _naive_object(shape, scenes.actor_pose[i, t], size)
            mismatched += int(np.sum(inside != support[i, t]))
    assert checked_shapes == set(range(len(SHAPE_NAMES)))
    assert mismatched == 0


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_motion_matches_class_name(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    for i in range(N_STATS):
        start, stop = clips.intervals[i]
        first, last = clips.masks[i, start], clips.masks[i, stop - 1]
        name = CLASS_NAMES[clips.labels[i]]
        shift = _centroid(last) - _centroid(first)
        if name.startswith("move_"):
            axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[name[5:]]
            assert sign * shift[axis] > 3.0, (i, name, shift)
            assert abs(shift[1 - axis]) < 1.0, (i, name, shift)
        elif name in ("grow", "shrink"):
            ratio = last.sum() / first.sum()
            assert (ratio > 1.3) if name == "grow" else (ratio < 1 / 1.3), (i, name, ratio)
        else:
            # Angle of the front-coloured half around the actor's centre, frame by frame; on screen with y
            # pointing down, an increasing atan2 angle turns clockwise.
            front_colour = scenes.actor_colours[i, 0]
            angles = []
            for t in range(start, stop):
                mask = clips.masks[i, t]
                front = mask & np.all(clips.frames[i, t] == front_colour, axis=-1)
                dx, dy = _centroid(front) - _centroid(mask)
                angles.append(np.arctan2(dy, dx))
            turn = np.diff(np.unwrap(angles))
            sign = 1 if name == "rotate_cw" else -1
            assert np.all(sign * turn > 0), (i, name, np.rad2deg(turn))


def test_actor_stays_inside_the_frame(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    _, support = render_scenes(scenes, draw_actor=False)
    border = support[..., 0, :] | support[..., -1, :] | support[..., :, 0] | support[..., :, -1]
    assert not border.any()


def test_appearance_is_independent_of_class(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    labels = clips.labels
    groups = range(len(CLASS_NAMES))
    # Shape category vs class: chi-square test of independence on the contingency table.
    table = np.zeros((len(CLASS_NAMES), len(SHAPE_NAMES)))
    np.add.at(table, (labels, scenes.actor_shape), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # Colour MEASURED from the masked pixels, per channel: Kruskal-Wallis across classes.
    mean_colour = np.stack([clips.frames[i][clips.masks[i]].mean(axis=0) for i in range(N_STATS)])  # [N, 3]
    for ch in range(3):
        assert stats.kruskal(*[mean_colour[labels == k, ch] for k in groups]).pvalue > 1e-3
    # Size MEASURED as the geometric mean of the actor's area at the rest poses before and after the
    # action (grow and shrink pass through the same sizes, in opposite order).
    _, support = render_scenes(scenes, draw_actor=False)
    area = support.sum(axis=(2, 3)).astype(float)
    rest = clips.intervals[:, 0] >= 1
    idx = np.flatnonzero(rest)
    log_size = 0.5 * (np.log(area[idx, 0]) + np.log(area[idx, -1]))
    assert stats.kruskal(*[log_size[labels[idx] == k] for k in groups]).pvalue > 1e-3
    # Power check: the same test does see a class-dependent statistic (the size after the action).
    final_size = np.log(area[idx, -1])
    assert stats.kruskal(*[final_size[labels[idx] == k] for k in groups]).pvalue < 1e-6


def test_action_interval_spread() -> None:
    c = make_clips(200, seed=2)
    length = c.intervals[:, 1] - c.intervals[:, 0]
    assert length.min() >= 5 and length.max() <= 11
    # Starts cover the whole allowed range, so the action's timing cannot be memorised.
    assert c.intervals[:, 0].min() == 0 and np.any(c.intervals[:, 1] == 16)


def test_distractor_is_static_and_not_masked(clips: SyntheticClips) -> None:
    scenes = clips.scenes
    assert scenes is not None
    d_in, _ = syn.shape_support(scenes.distractor_shape, scenes.distractor_pose, scenes.size)
    assert d_in.sum(axis=(1, 2)).min() > 0
    without_actor, _ = render_scenes(scenes, draw_actor=False)
    assert np.all(without_actor == without_actor[:, :1])  # the scene without the actor never changes
    # Where the distractor shows (not hidden by the actor), the mask is off.
    visible = d_in[:, None] & ~np.any(clips.masks, axis=1, keepdims=True)
    assert not np.any(clips.masks & visible)
