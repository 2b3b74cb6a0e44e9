"""The paper's "saliency tube" picture: the overlaid frames drawn as an oblique stack receding in time,
earlier frames in front, every frame translucent except the current one, which is drawn opaque on top."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Frames are drawn with their longer side at least this many pixels: a 64x64 clip's stack would
# otherwise be ~250 px wide in all, its current frame's heat map a smudge.
MIN_FRAME_SIDE = 160


@dataclass(frozen=True)
class StackGeometry:
    """Where frame t's pixel (x, y) lands on the canvas: ``X = ox_t + squeeze * zoom * x``,
    ``Y = oy_t + zoom * (y - shear * x)`` with ``ox_t = margin + t * step_x`` and
    ``oy_t = margin + shear * zoom * width + (T - 1 - t) * step_y`` (later frames further right and
    higher). ``zoom`` scales every frame up (the warp resamples it once, so it costs no extra pass):
    a small clip's frames would otherwise be drawn a few dozen pixels wide."""

    frames: int
    height: int
    width: int
    squeeze: float = 0.6  # horizontal foreshortening of each frame (it is seen from the side)
    shear: float = 0.3  # how much a frame's far edge rises, per pixel of width
    overlap: float = 0.35  # step between frames as a fraction of a squeezed frame's width
    rise: float = 0.05  # step upwards between frames as a fraction of the frame height
    margin: int = 4
    zoom: float = 1.0  # canvas pixels per frame pixel

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 1 or self.width < 1 or not self.zoom > 0:
            raise ValueError(
                f"a tube stack needs >= 1 frame of >= 1x1 pixels and zoom > 0; got {self.frames} frames "
                f"of {self.height}x{self.width}, zoom {self.zoom}"
            )

    @classmethod
    def fit(cls, frames: int, height: int, width: int, min_frame_side: int = MIN_FRAME_SIDE) -> StackGeometry:
        """The default geometry, zoomed so that a frame's longer side is drawn at least
        ``min_frame_side`` canvas pixels long (never shrunk: large frames keep zoom 1)."""
        return cls(frames, height, width, zoom=max(1.0, min_frame_side / max(height, width)))

    @property
    def drawn_width(self) -> float:
        return self.zoom * self.width

    @property
    def drawn_height(self) -> float:
        return self.zoom * self.height

    @property
    def step_x(self) -> float:
        return self.squeeze * self.drawn_width * self.overlap

    @property
    def step_y(self) -> float:
        return self.rise * self.drawn_height

    def origin(self, t: int) -> tuple[float, float]:
        return (
            self.margin + t * self.step_x,
            self.margin + self.shear * self.drawn_width + (self.frames - 1 - t) * self.step_y,
        )

    def project(self, t: int, x: float, y: float) -> tuple[float, float]:
        """Canvas position of frame ``t``'s point (x, y), in continuous pixel coordinates (a pixel's
        centre is at +0.5)."""
        ox, oy = self.origin(t)
        return ox + self.squeeze * self.zoom * x, oy + self.zoom * (y - self.shear * x)

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(height, width) of the whole picture."""
        dw, dh = self.drawn_width, self.drawn_height
        w = self.squeeze * dw + (self.frames - 1) * self.step_x + 2 * self.margin
        h = dh + self.shear * dw + (self.frames - 1) * self.step_y + 2 * self.margin
        return int(np.ceil(h)), int(np.ceil(w))

    def footprint(self, t: int, pad: int = 2) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) canvas pixels that frame t (and its outline) can touch: the
        bounding box of its four projected corners, each taken one frame pixel outside the frame
        (bilinear sampling reaches that far, ``zoom`` canvas pixels once zoomed), grown by ``pad``
        canvas pixels (rounding, outline width) and clipped to the canvas."""
        x0, y0, x1, y1 = -1.0, -1.0, self.width + 1.0, self.height + 1.0
        corners = [self.project(t, x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
        xs, ys = zip(*corners, strict=True)
        ch, cw = self.canvas_size
        return (
            max(0, int(np.floor(min(ys))) - pad),
            max(0, int(np.floor(min(xs))) - pad),
            min(ch, int(np.ceil(max(ys))) + pad),
            min(cw, int(np.ceil(max(xs))) + pad),
        )


def _warp_frame(frame: np.ndarray, geo: StackGeometry, t: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 RGBA ``[bottom - top, right - left, 4]`` of one frame placed on the canvas, cut to ``box``
    (top, left, bottom, right), alpha = coverage: pixels outside a frame's footprint are transparent,
    so only the box is computed."""
    from PIL import Image

    top, left, bottom, right = box
    ox, oy = geo.origin(t)
    a, s, z = geo.squeeze, geo.shear, geo.zoom
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    # PIL's affine takes the inverse map, box pixel (X', Y') = canvas (X' + left, Y' + top) -> frame
    # (x, y): x = (X - ox) / (a z) ; y = (Y - oy) / z + s * x.
    dx = (left - ox) / (a * z)
    inverse = (1.0 / (a * z), 0.0, dx, s / (a * z), 1.0 / z, (top - oy) / z + s * dx)
    warped = Image.fromarray(rgba, "RGBA").transform(
        (right - left, bottom - top),
        Image.Transform.AFFINE,
        inverse,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0, 0),
    )
    return np.asarray(warped)


def tube_stack(
    frames: np.ndarray,
    current: int,
    ghost_alpha: float = 0.35,
    background: tuple[int, int, int] = (255, 255, 255),
    geometry: StackGeometry | None = None,
    min_frame_side: int = MIN_FRAME_SIDE,
) -> np.ndarray:
    """uint8 RGB picture of uint8 ``[T, H, W, 3]`` (already overlaid) frames as an oblique stack with
    frame ``current`` opaque. Without ``geometry``, ``StackGeometry.fit`` scales small frames up so their
    longer side is drawn ``min_frame_side`` pixels long."""
    t_count, h, w = frames.shape[:3]
    if not 0 <= current < t_count:
        raise ValueError(f"current frame {current} is outside 0..{t_count - 1}")
    geo = geometry or StackGeometry.fit(t_count, h, w, min_frame_side)
    if (geo.frames, geo.height, geo.width) != (t_count, h, w):
        raise ValueError(
            f"stack geometry is for {geo.frames} frames of {geo.height}x{geo.width}, got {t_count} of {h}x{w}"
        )
    ch, cw = geo.canvas_size
    canvas = np.empty((ch, cw, 3), np.float32)
    canvas[:] = background
    # Back to front so nearer frames cover farther ones; the current frame last so it is never covered.
    # Each frame only changes the canvas inside its footprint, so each blend works on that box alone.
    for t in [*(t for t in range(t_count - 1, -1, -1) if t != current), current]:
        box = geo.footprint(t)
        top, left, bottom, right = box
        region = canvas[top:bottom, left:right]
        warped = _warp_frame(frames[t], geo, t, box)
        opacity = 1.0 if t == current else ghost_alpha
        alpha = warped[..., 3:] * np.float32(opacity / 255.0)
        # region * (1 - alpha) + rgb * alpha, written as region + (rgb - region) * alpha: fewer passes.
        step = warped[..., :3].astype(np.float32)
        step -= region
        step *= alpha
        region += step
        if t != current:
            # A faint outline keeps each translucent frame's extent readable: half-way to grey 90 on
            # the outline's pixels (a thin ring, so only those pixels are touched).
            ys, xs = np.nonzero(_outline_mask(geo, t, box))
            region[ys, xs] = 0.5 * region[ys, xs] + 45.0
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _outline_mask(geo: StackGeometry, t: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask (box-sized) of the pixels on frame t's outline."""
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
    return np.asarray(img) > 0
