"""Pyramid overview picture: one row per level, one cell per kept kernel (a small heat strip of its tube
over time, its id and score), lines from each kernel up to its parents in the level above."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcfp.render.overlay import heat_image
from onnxcfp.volume import normalise01

STRIP_FRAMES = 4  # frames of a kernel tube shown in its cell
THUMB = 22  # pixel side of one strip frame
CELL_W = STRIP_FRAMES * THUMB + 8
CELL_H = THUMB + 30
GAP_X, GAP_Y = 10, 40
HEADER_W = 150


@dataclass(frozen=True)
class PyramidLayout:
    """Where each drawn node's cell sits: ``boxes[node_id] = (left, top, right, bottom)``; ``hidden[level]``
    counts the nodes left out of a level because of ``max_columns``."""

    size: tuple[int, int]  # (height, width)
    boxes: dict[str, tuple[int, int, int, int]]
    hidden: dict[int, int]


def layout_pyramid(pyramid: Mapping[str, Any], max_columns: int = 16) -> PyramidLayout:
    """Pick the nodes to draw (the ``max_columns`` most relevant per level, kept in the JSON's order) and
    place them."""
    levels = pyramid.get("levels", [])
    boxes: dict[str, tuple[int, int, int, int]] = {}
    hidden: dict[int, int] = {}
    widest = 1
    for row, level in enumerate(levels):
        nodes = level.get("nodes", [])
        keep = sorted(range(len(nodes)), key=lambda i: -float(nodes[i].get("relevance") or 0.0))[:max_columns]
        hidden[int(level.get("level", row + 1))] = len(nodes) - len(keep)
        widest = max(widest, len(keep))
        top = 10 + row * (CELL_H + GAP_Y)
        for col, i in enumerate(sorted(keep)):
            left = HEADER_W + col * (CELL_W + GAP_X)
            boxes[str(nodes[i]["id"])] = (left, top, left + CELL_W, top + CELL_H)
    height = 10 + max(1, len(levels)) * (CELL_H + GAP_Y)
    width = HEADER_W + widest * (CELL_W + GAP_X) + 10
    return PyramidLayout((height, width), boxes, hidden)


def kernel_count_text(count: int, hidden: int = 0) -> str:
    """A level's caption: its ``count`` kernels ("1 kernel", "4 kernels"), and how many of them the
    figure leaves out ("20 kernels (+4 not shown)")."""
    text = f"{count} kernel" + ("" if count == 1 else "s")
    return text + (f" (+{hidden} not shown)" if hidden else "")


def _strip(volume: np.ndarray, colormap: str) -> np.ndarray:
    vol = normalise01(np.asarray(volume, np.float32))
    picks = np.unique(np.linspace(0, vol.shape[0] - 1, STRIP_FRAMES).round().astype(int))
    return np.concatenate([heat_image(vol[t], THUMB, THUMB, colormap) for t in picks], axis=1)


def pyramid_figure(
    pyramid: Mapping[str, Any],
    kernel_volumes: Mapping[str, np.ndarray] | None = None,
    colormap: str = "viridis",
    max_columns: int = 16,
) -> tuple[np.ndarray, PyramidLayout]:
    """(uint8 RGB picture, layout) of a pyramid.json dict; ``kernel_volumes`` maps node ids to their
    ``[T', H', W']`` tubes (cells of nodes without one show only their id and score)."""
    from PIL import Image, ImageDraw, ImageFont

    kernel_volumes = kernel_volumes or {}
    lay = layout_pyramid(pyramid, max_columns)
    h, w = lay.size
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    # Edges first, so cells are drawn over their ends.
    for level in pyramid.get("levels", []):
        for node in level.get("nodes", []):
            child = lay.boxes.get(str(node["id"]))
            for parent in node.get("parents", []) if child else []:
                pbox = lay.boxes.get(str(parent["node"]))
                if pbox is None:
                    continue
                width = 1 + int(2.0 * min(1.0, max(0.0, float(parent.get("score") or 0.0))))
                draw.line(
                    [((pbox[0] + pbox[2]) // 2, pbox[3]), ((child[0] + child[2]) // 2, child[1])],
                    fill=(150, 150, 150),
                    width=width,
                )
    for row, level in enumerate(pyramid.get("levels", [])):
        num = int(level.get("level", row + 1))
        shape = "x".join(str(s) for s in level.get("shape", []))
        top = 10 + row * (CELL_H + GAP_Y)
        n = len(level.get("nodes", []))
        draw.text((6, top + 4), f"level {num}", fill=(0, 0, 0), font=font)
        draw.text((6, top + 18), f"T x H x W {shape}", fill=(60, 60, 60), font=font)
        more = lay.hidden.get(num, 0)
        draw.text(
            (6, top + 32),
            kernel_count_text(n, more),
            fill=(60, 60, 60),
            font=font,
        )
        for node in level.get("nodes", []):
            box = lay.boxes.get(str(node["id"]))
            if box is None:
                continue
            left, ctop, _right, bottom = box
            draw.rectangle(box, fill=(245, 245, 245), outline=(120, 120, 120))
            vol = kernel_volumes.get(str(node["id"]))
            if vol is not None:
                strip = _strip(vol, colormap)
                img.paste(Image.fromarray(strip), (left + 4, ctop + 4))
            label = f"{node.get('channel', '?')} {float(node.get('score') or 0.0):.2f}"
            draw.text((left + 4, bottom - 14), label, fill=(0, 0, 0), font=font)
    return np.asarray(img), lay
