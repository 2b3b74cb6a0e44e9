"""Synthetic action clips with exact ground truth (NumPy only, seeded, vectorised).

Each clip shows a static textured background, a static *distractor* object and an *actor* object drawn
from the same shape family. The class is the actor's MOTION (translation direction, rotation sense,
growing or shrinking); its shape, colours and base size are drawn independently of the class, so a model
has to look at how the actor changes over time. The motion happens only during a random sub-interval
``[start, stop)``; before it the actor rests at its start pose, after it at its end pose.

Timing convention: the pose at frame t is the motion's progress ``u(t) = clip((t - start + 1) / L, 0, 1)``
with ``L = stop - start``, so the action frames are exactly those whose actor pose differs from the
previous frame's (frame ``start`` is the first step away from the rest pose, frame ``stop - 1`` reaches
the end pose). The ground-truth mask is the actor's pixels on those frames and empty elsewhere.

Objects are rasterised at pixel centres with hard edges (no anti-aliasing) and the actor is painted
last, so "actor pixels" is exact: every masked pixel shows one of the actor's two colours and every
other pixel is what the scene shows without the actor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.volume import linear_resize_matrix

CLASS_NAMES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
)

SHAPE_NAMES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond")

# Shape geometry in the object's local frame (u along its heading, v across), in units of its scale;
# every shape fits inside the unit circle, so "scale" is the object's bounding radius in pixels.
ELLIPSE_AXES = (1.0, 0.55)
RECTANGLE_HALF = (0.85, 0.5)
TRIANGLE_VERTICES = ((1.0, 0.0), (-0.7, 0.65), (-0.7, -0.65))
DIAMOND_HALF = (1.0, 0.6)

# Motion magnitudes. Sizes are fractions of the frame size so the dataset looks alike at 64 and 112.
ACTOR_SCALE_RANGE = (0.12, 0.18)  # bounding radius / frame size, before grow/shrink
DISTRACTOR_SCALE_RANGE = (0.10, 0.16)
TRANSLATION_RANGE = (0.25, 0.40)  # path length / frame size
ROTATION_RANGE_DEG = (120.0, 240.0)  # total turn; < 180 deg per frame keeps the sense unambiguous
GROWTH_FACTOR = 2.0  # grow: scale goes s/sqrt(k) -> s*sqrt(k); shrink the reverse
ACTION_LENGTH_FRACTION = (0.35, 0.60)  # action length / clip length
EDGE_MARGIN_PX = 1.0


@dataclass(frozen=True, eq=False)
class SceneParams:
    """Everything needed to re-render a batch of clips; all arrays are indexed by clip first.

    Poses are ``(cx, cy, angle, scale)``: centre in pixels (x right, y down, pixel (i, j) has its centre
    at (j + 0.5, i + 0.5)), angle in radians where increasing angle turns CLOCKWISE on screen, and scale
    the bounding radius in pixels.
    """

    size: int
    frames: int
    labels: np.ndarray  # [N] int64
    intervals: np.ndarray  # [N, 2] int64, action frames [start, stop)
    background: np.ndarray  # [N, H, W, 3] uint8, static texture
    distractor_shape: np.ndarray  # [N] int64 index into SHAPE_NAMES
    distractor_pose: np.ndarray  # [N, 4] float64
    distractor_colours: np.ndarray  # [N, 2, 3] uint8 (front half u >= 0, back half)
    actor_shape: np.ndarray  # [N] int64
    actor_colours: np.ndarray  # [N, 2, 3] uint8
    actor_base_scale: np.ndarray  # [N] float64, the class-independent size draw
    actor_pose: np.ndarray  # [N, T, 4] float64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class SyntheticClips:
    """``frames`` uint8 [N,T,H,W,3] RGB; ``masks`` bool [N,T,H,W] actor pixels during the action (empty
    elsewhere); ``labels`` int64 [N]; ``intervals`` int64 [N,2] action frames [start, stop);
    ``scenes`` the parameters the clips were rendered from."""

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    intervals: np.ndarray
    class_names: tuple[str, ...]
    scenes: SceneParams | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_clips(n: int, seed: int, frames: int = 16, size: int = 64) -> SyntheticClips:
    """``n`` clips of ``frames`` frames of ``size``×``size`` pixels, balanced over CLASS_NAMES (counts
    differ by at most one), identical for identical arguments."""
    scenes = sample_scenes(n, seed, frames=frames, size=size)
    rgb, support = render_scenes(scenes)
    return SyntheticClips(
        frames=rgb,
        masks=support & action_frames(scenes.intervals, frames)[:, :, None, None],
        labels=scenes.labels.copy(),
        intervals=scenes.intervals.copy(),
        class_names=CLASS_NAMES,
        scenes=scenes,
    )


def action_frames(intervals: np.ndarray, frames: int) -> np.ndarray:
    """bool [N, T]: True on the frames inside each clip's action interval [start, stop)."""
    t = np.arange(frames)
    return (t >= intervals[:, :1]) & (t < intervals[:, 1:2])


def _check_args(n: int, frames: int, size: int) -> None:
    if n < 1:
        raise ConfigError(f"number of clips must be at least 1, got {n}; ask for one or more clips")
    if frames < 4:
        raise ConfigError(f"clips need at least 4 frames for a rest-action-rest sequence, got {frames}")
    if size < 24:
        raise ConfigError(f"frame size must be at least 24 pixels to draw two objects, got {size}")


def sample_scenes(n: int, seed: int, frames: int = 16, size: int = 64) -> SceneParams:
    """Draw every random choice of ``n`` clips (labels, timing, appearance, poses, background)."""
    _check_args(n, frames, size)
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES)
    labels = rng.permutation(np.resize(np.arange(k, dtype=np.int64), n))

    lo_len = max(2, round(ACTION_LENGTH_FRACTION[0] * frames))
    hi_len = max(lo_len, min(frames - 1, round(ACTION_LENGTH_FRACTION[1] * frames)))
    length = rng.integers(lo_len, hi_len + 1, size=n)
    start = rng.integers(0, frames - length + 1)
    intervals = np.stack([start, start + length], axis=1).astype(np.int64)

    # Appearance: drawn with no reference to the label.
    actor_shape = rng.integers(0, len(SHAPE_NAMES), size=n).astype(np.int64)
    actor_colours = _two_tone_colours(rng, n)
    base_scale = rng.uniform(*ACTOR_SCALE_RANGE, size=n) * size
    angle0 = rng.uniform(0.0, 2 * np.pi, size=n)

    # Motion parameters: displacement (dx, dy), turn and log-scale change between start and end pose.
    distance = rng.uniform(*TRANSLATION_RANGE, size=n) * size
    turn = np.deg2rad(rng.uniform(*ROTATION_RANGE_DEG, size=n))
    direction = {0: (-1.0, 0.0), 1: (1.0, 0.0), 2: (0.0, -1.0), 3: (0.0, 1.0)}
    dx = np.zeros(n)
    dy = np.zeros(n)
    for cls, (ux, uy) in direction.items():
        sel = labels == cls
        dx[sel] = ux * distance[sel]
        dy[sel] = uy * distance[sel]
    dangle = np.where(labels == 4, turn, 0.0) - np.where(labels == 5, turn, 0.0)
    log_k = np.log(GROWTH_FACTOR)
    dlog_scale = np.where(labels == 6, log_k, 0.0) - np.where(labels == 7, log_k, 0.0)

    # Centre of the path: uniform over the positions that keep the whole object in frame all the time.
    max_radius = base_scale * np.exp(np.abs(dlog_scale) / 2)
    margin = max_radius + EDGE_MARGIN_PX
    mid_x = rng.uniform(margin + np.abs(dx) / 2, size - margin - np.abs(dx) / 2)
    mid_y = rng.uniform(margin + np.abs(dy) / 2, size - margin - np.abs(dy) / 2)

    t = np.arange(frames, dtype=np.float64)
    progress = np.clip((t[None, :] - intervals[:, :1] + 1) / length[:, None], 0.0, 1.0)  # [N, T]
    pose = np.empty((n, frames, 4))
    pose[..., 0] = mid_x[:, None] + (progress - 0.5) * dx[:, None]
    pose[..., 1] = mid_y[:, None] + (progress - 0.5) * dy[:, None]
    pose[..., 2] = angle0[:, None] + progress * dangle[:, None]
    # Geometric in time and centred on the base scale, so grow and shrink pass through the same sizes.
    pose[..., 3] = base_scale[:, None] * np.exp((progress - 0.5) * dlog_scale[:, None])

    distractor_shape = rng.integers(0, len(SHAPE_NAMES), size=n).astype(np.int64)
    distractor_colours = _two_tone_colours(rng, n)
    distractor_scale = rng.uniform(*DISTRACTOR_SCALE_RANGE, size=n) * size
    distractor_pose = _place_distractor(rng, pose, distractor_scale, size)

    return SceneParams(
        size=size,
        frames=frames,
        labels=labels,
        intervals=intervals,
        background=_textured_backgrounds(rng, n, size),
        distractor_shape=distractor_shape,
        distractor_pose=distractor_pose,
        distractor_colours=distractor_colours,
        actor_shape=actor_shape,
        actor_colours=actor_colours,
        actor_base_scale=base_scale,
        actor_pose=pose,
    )


def _two_tone_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Front colour uniform in RGB; back colour offset by half the range in every channel, so the two
    halves always differ clearly and a rotation is visible whatever the outline's symmetry."""
    front = rng.integers(0, 256, size=(n, 3))
    back = (front + 128) % 256
    return np.stack([front, back], axis=1).astype(np.uint8)


def _place_distractor(
    rng: np.random.Generator, actor_pose: np.ndarray, scale: np.ndarray, size: int, tries: int = 12
) -> np.ndarray:
    """A static pose per clip, preferring spots clear of the actor's whole path (the first of ``tries``
    candidates that is clear, else the one farthest from the path); the actor is painted on top anyway."""
    n = actor_pose.shape[0]
    margin = scale[:, None] + EDGE_MARGIN_PX
    cx = rng.uniform(margin, size - margin, size=(n, tries))
    cy = rng.uniform(margin, size - margin, size=(n, tries))
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    # Clearance of each candidate from the actor at every frame: distance minus both bounding radii.
    gap = np.hypot(cx[:, :, None] - actor_pose[:, None, :, 0], cy[:, :, None] - actor_pose[:, None, :, 1]) - (
        scale[:, None, None] + actor_pose[:, None, :, 3]
    )
    clearance = gap.min(axis=2)  # [N, tries]
    clear = clearance > 0
    pick = np.where(clear.any(axis=1), clear.argmax(axis=1), clearance.argmax(axis=1))
    rows = np.arange(n)
    return np.stack([cx[rows, pick], cy[rows, pick], angle, scale], axis=1)


def _textured_backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Static texture: a per-clip base colour, smooth blobs (a coarse random grid upsampled linearly)
    and fine per-pixel grain. Moderate contrast so the objects stay visible."""
    grid = 6
    base = rng.uniform(60.0, 190.0, size=(n, 1, 1, 3))
    coarse = rng.uniform(-45.0, 45.0, size=(n, grid, grid, 3))
    up = linear_resize_matrix(grid, size)  # [size, grid]
    smooth = np.einsum("hg,ngkc,wk->nhwc", up, coarse, up, optimize=True)
    grain = rng.uniform(-14.0, 14.0, size=(n, size, size, 3))
    return np.clip(np.rint(base + smooth + grain), 0, 255).astype(np.uint8)


def shape_support(shape: np.ndarray, pose: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise objects at pixel centres. ``shape`` int [...], ``pose`` float [..., 4] → (inside, front)
    bool [..., H, W]: the object's pixels, and those of its front half (u >= 0)."""
    lead = np.shape(shape)
    shape_flat = np.asarray(shape).reshape(-1)
    pose_flat = np.asarray(pose, dtype=np.float64).reshape(-1, 4)
    inside = np.zeros((shape_flat.size, size, size), dtype=bool)
    front = np.zeros_like(inside)
    centres = np.arange(size, dtype=np.float64) + 0.5
    # Each shape is tested only on the objects that have it (one pass per shape, not four per object).
    for kind in np.unique(shape_flat):
        sel = np.flatnonzero(shape_flat == kind)
        cx, cy, angle, scale = (pose_flat[sel, i, None, None] for i in range(4))
        dx = centres[None, :] - cx  # [k, 1, W]
        dy = centres[:, None] - cy  # [k, H, 1]
        cos, sin = np.cos(angle), np.sin(angle)
        # Inverse rotation into the object's frame; angle grows clockwise on screen because y points down.
        u = (cos * dx + sin * dy) / scale
        v = (-sin * dx + cos * dy) / scale
        hit = _inside_unit_shape(int(kind), u, v)
        inside[sel] = hit
        front[sel] = hit & (u >= 0)
    return inside.reshape(*lead, size, size), front.reshape(*lead, size, size)


def _inside_unit_shape(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of local coordinates (u, v) in shape ``kind`` of unit bounding radius."""
    if kind == 0:
        return (u / ELLIPSE_AXES[0]) ** 2 + (v / ELLIPSE_AXES[1]) ** 2 <= 1.0
    if kind == 1:
        return (np.abs(u) <= RECTANGLE_HALF[0]) & (np.abs(v) <= RECTANGLE_HALF[1])
    if kind == 2:
        (tip_u, _), (base_u, base_half), _ = TRIANGLE_VERTICES
        return (u >= base_u) & (np.abs(v) <= base_half * (tip_u - u) / (tip_u - base_u))
    if kind == 3:
        return np.abs(u) / DIAMOND_HALF[0] + np.abs(v) / DIAMOND_HALF[1] <= 1.0
    raise ValueError(f"unknown shape index {kind}; valid indices are 0..{len(SHAPE_NAMES) - 1}")


def render_scenes(
    scenes: SceneParams, draw_actor: bool = True, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Render (frames uint8 [N,T,H,W,3], actor support bool [N,T,H,W] on every frame). With
    ``draw_actor=False`` the frames show the scene without the actor (support is still returned)."""
    n, t, s = len(scenes), scenes.frames, scenes.size
    frames = np.empty((n, t, s, s, 3), dtype=np.uint8)
    support = np.empty((n, t, s, s), dtype=bool)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        still = scenes.background[lo:hi].copy()  # [B, H, W, 3]
        d_in, d_front = shape_support(scenes.distractor_shape[lo:hi], scenes.distractor_pose[lo:hi], s)
        _paint(still, d_in, d_front, scenes.distractor_colours[lo:hi])
        clip = np.repeat(still[:, None], t, axis=1)  # [B, T, H, W, 3]
        shapes = np.repeat(scenes.actor_shape[lo:hi, None], t, axis=1)
        a_in, a_front = shape_support(shapes, scenes.actor_pose[lo:hi], s)
        if draw_actor:
            colours = np.repeat(scenes.actor_colours[lo:hi, None], t, axis=1)
            _paint(clip, a_in, a_front, colours)
        frames[lo:hi] = clip
        support[lo:hi] = a_in
    return frames, support


def _paint(image: np.ndarray, inside: np.ndarray, front: np.ndarray, colours: np.ndarray) -> None:
    """Paint a two-tone object in place: ``image`` [..., H, W, 3], masks [..., H, W], colours [..., 2, 3].
    Only the object's pixels are touched (they are a small fraction of the frame)."""
    where = np.nonzero(inside)
    back = (~front[where]).astype(np.intp)  # 0 = front colour, 1 = back colour
    image[where] = colours[(*where[:-2], back)]
