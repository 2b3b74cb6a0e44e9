"""The paper's "saliency tube" picture: the overlaid frames drawn as an oblique stack receding in time,
earlier frames in front, every frame translucent except the current one, which is drawn opaque on top."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StackGeometry:
    """Where frame t's pixel (x, y) lands on the canvas: ``X = ox_t + squeeze * x``,
    ``Y = oy_t + y - shear * x`` with ``ox_t = margin + t * step_x`` and
    ``oy_t = margin + shear * w + (T - 1 - t) * step_y`` (later frames further right and higher)."""

    frames: int
    height: int
    width: int
    squeeze: float = 0.6  # horizontal foreshortening of each frame (it is seen from the side)
    shear: float = 0.3  # how much a frame's far edge rises, per pixel of width
    overlap: float = 0.35  # step between frames as a fraction of a squeezed frame's width
    rise: float = 0.05  # step upwards between frames as a fraction of the frame height
    margin: int = 4

    @property
    def step_x(self) -> float:
        return self.squeeze * self.width * self.overlap

    @property
    def step_y(self) -> float:
        return self.rise * self.height

    def origin(self, t: int) -> tuple[float, float]:
        return (
            self.margin + t * self.step_x,
            self.margin + self.shear * self.width + (self.frames - 1 - t) * self.step_y,
        )

    def project(self, t: int, x: float, y: float) -> tuple[float, float]:
        ox, oy = self.origin(t)
        return ox + self.squeeze * x, oy + y - self.shear * x

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the whole picture."""
        w = self.squeeze * self.width + (self.frames - 1) * self.step_x + 2 * self.margin
        h = self.height + self.shear * self.width + (self.frames - 1) * self.step_y + 2 * self.margin
        return int(np.ceil(h)), int(np.ceil(w))

    def footprint(self, t: int, pad: int = 2) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) canvas pixels that frame t (and its outline) can touch: its four
        projected corners' bounding box grown by ``pad`` pixels (bilinear edges, outline width),
        clipped to the canvas."""
        xs, ys = zip(
            *(
                self.project(t, x, y)
                for x, y in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))
            ),
            strict=True,
        )
        ch, cw = self.canvas_size
        return (
            max(0, int(np.floor(min(ys))) - pad),
            max(0, int(np.floor(min(xs))) - pad),
            min(ch, int(np.ceil(max(ys))) + pad),
            min(cw, int(np.ceil(max(xs))) + pad),
        )


def _warp_frame(
    frame: np.ndarray, geo: StackGeometry, t: int, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, coverage in [0, 1]) of one frame placed on the canvas, cut to ``box`` (top, left, bottom,
    right): pixels outside a frame's footprint are transparent, so only the box is computed."""
    from PIL import Image

    top, left, bottom, right = box
    ox, oy = geo.origin(t)
    a, s = geo.squeeze, geo.shear
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    # PIL's affine takes the inverse map, box pixel (X', Y') = canvas (X' + left, Y' + top) -> frame
    # (x, y): x = (X - ox) / a ; y = Y - oy + s * x.
    dx = (left - ox) / a
    inverse = (1.0 / a, 0.0, dx, s / a, 1.0, top - oy + s * dx)
    warped = Image.fromarray(rgba, "RGBA").transform(
        (right - left, bottom - top),
        Image.Transform.AFFINE,
        inverse,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0, 0),
    )
    arr = np.asarray(warped)
    return arr[..., :3].astype(np.float32), arr[..., 3:].astype(np.float32) / 255.0


def tube_stack(
    frames: np.ndarray,
    current: int,
    ghost_alpha: float = 0.35,
    background: tuple[int, int, int] = (255, 255, 255),
    geometry: StackGeometry | None = None,
) -> np.ndarray:
    """uint8 RGB picture of uint8 ``[T, H, W, 3]`` (already overlaid) frames as an oblique stack with
    frame ``current`` opaque."""
    t_count, h, w = frames.shape[:3]
    if not 0 <= current < t_count:
        raise ValueError(f"current frame {current} is outside 0..{t_count - 1}")
    geo = geometry or StackGeometry(t_count, h, w)
    ch, cw = geo.canvas_size
    canvas = np.empty((ch, cw, 3), np.float32)
    canvas[:] = background
    # Back to front so nearer frames cover farther ones; the current frame last so it is never covered.
    # Each frame only changes the canvas inside its footprint, so each blend works on that box alone.
    for t in [*(t for t in range(t_count - 1, -1, -1) if t != current), current]:
        box = geo.footprint(t)
        top, left, bottom, right = box
        region = canvas[top:bottom, left:right]
        rgb, cover = _warp_frame(frames[t], geo, t, box)
        alpha = cover * (1.0 if t == current else ghost_alpha)
        region *= 1.0 - alpha
        region += rgb * alpha
        if t != current:
            # A faint outline keeps each translucent frame's extent readable.
            ring = _outline_mask(geo, t, box)
            region *= 1.0 - 0.5 * ring
            region += 90.0 * 0.5 * ring
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _outline_mask(geo: StackGeometry, t: int, box: tuple[int, int, int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    top, left, bottom, right = box
    img = Image.new("L", (right - left, bottom - top), 0)
    corners = [
        (x - left, y - top)
        for x, y in (
            geo.project(t, u, v)
            for u, v in ((0, 0), (geo.width, 0), (geo.width, geo.height), (0, geo.height))
        )
    ]
    ImageDraw.Draw(img).polygon(corners, outline=255)
    return (np.asarray(img, np.float32) / 255.0)[..., None]
