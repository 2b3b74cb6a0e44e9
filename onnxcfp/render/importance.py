"""Per-frame importance: how much of each tube's mass falls on each frame, as a line chart and a CSV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnxcfp.render.writers import csv_text

# Distinct line colours (Okabe-Ito, readable by colour-blind viewers).
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0))


def importance_chart(curves: Mapping[str, np.ndarray], height: int = 220, width: int = 420) -> np.ndarray:
    """uint8 RGB line chart: x = frame, y = share of the tube's mass (0 at the bottom), one line per
    layer with a legend."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 40, width - 10, 10 + 14 * len(curves), height - 25
    top = min(top, bottom - 40)
    peak = max([float(np.max(c)) for c in curves.values() if len(c)] + [1e-12])
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    draw.text((4, top - 4), f"{peak:.2f}", fill=(0, 0, 0), font=font)
    draw.text((4, bottom - 6), "0", fill=(0, 0, 0), font=font)
    n_frames = max([len(c) for c in curves.values()] + [1])
    draw.text((left, bottom + 6), "frame 0", fill=(0, 0, 0), font=font)
    draw.text((right - 50, bottom + 6), f"frame {n_frames - 1}", fill=(0, 0, 0), font=font)
    for k, (label, curve) in enumerate(curves.items()):
        colour = PALETTE[k % len(PALETTE)]
        c = np.asarray(curve, np.float64)
        xs = left + (right - left) * (np.arange(len(c)) / max(1, len(c) - 1))
        ys = bottom - (bottom - top) * (c / peak)
        if len(c) > 1:
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=2)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((left + 8, 4 + 14 * k), label, fill=colour, font=font)
    return np.asarray(img)


def importance_csv_text(curves: Mapping[str, np.ndarray], source_frames: Sequence[int] | None = None) -> str:
    """CSV with columns frame, source_frame (the index in the video), then one column per layer."""
    labels = list(curves)
    n = max([len(c) for c in curves.values()] + [0])
    src = list(source_frames) if source_frames is not None else list(range(n))
    rows = [[t, int(src[t])] + [f"{float(curves[lab][t]):.6g}" for lab in labels] for t in range(n)]
    return csv_text(["frame", "source_frame", *labels], rows)
