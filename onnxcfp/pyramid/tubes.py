"""Saliency tubes at feature resolution: level tubes, kernel tubes, per-frame importance."""

from __future__ import annotations

import numpy as np

from onnxcfp.pyramid.features import clip_channels, pooled, traced
from onnxcfp.pyramid.options import TUBES, check_choice
from onnxcfp.pyramid.types import Level, Pyramid, SaliencyTube
from onnxcfp.trace import Trace
from onnxcfp.volume import normalise01, resize_volume


def _finest(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(max(s[i] for s in shapes) for i in range(len(shapes[0])))


def combine_parts(parts: list[np.ndarray], rectify: bool) -> np.ndarray:
    """Maps of several tensors on the finest grid among them, added (ReLU after adding for Grad-CAM)."""
    grid = _finest([p.shape for p in parts])
    acc = np.zeros(grid, np.float64)
    for part in parts:
        acc += resize_volume(part, grid) if part.shape != grid else part
    return np.maximum(acc, 0.0) if rectify else acc


def tensor_view(pyramid: Pyramid, trace: Trace, tensor: str, gradient: bool = False) -> np.ndarray:
    """The pyramid's clip in a traced tensor (or its gradient), channels first: ``[C, T, H, W]``."""
    axis = int(pyramid.channel_axes.get(tensor, 1))
    return clip_channels(traced(trace, tensor, gradient), pyramid.clip, int(trace.logits.shape[0]), axis)


def level_tube_of_parts(
    level: Level, parts: list[np.ndarray], what: str, used: int, total: int, rectify: bool
) -> SaliencyTube:
    """A level's tube from one map per tensor of the level (``used`` of the ``total`` channels of those
    tensors): added on the finest grid, ReLU'd when ``rectify`` (Grad-CAM), scaled to [0, 1]."""
    volume = normalise01(combine_parts(parts, rectify))
    shape = "x".join(map(str, volume.shape))
    return SaliencyTube(
        label=f"level {level.level} {what} ({used}/{total} channels, {shape})",
        level=level.level,
        volume=volume,
        tensors=level.tensors,
        node=None,
        parts=tuple(p.astype(np.float32) for p in parts) if len(parts) > 1 else (),
        rectify=rectify,
        num_channels=used,
        tensor_channels=total,
    )


def _level_part(
    pyramid: Pyramid, level: Level, tensor: str, trace: Trace, kind: str
) -> tuple[np.ndarray, int, int]:
    """(unnormalised map of one tensor's scored channels, channels used, channels in the tensor)."""
    x = tensor_view(pyramid, trace, tensor)
    channels, weights = level.channels_of(tensor)
    if kind == "relevance":
        coef = weights
    elif kind == "sum":
        coef = np.ones(channels.size)
    else:
        grad = tensor_view(pyramid, trace, tensor, gradient=True)
        coef = pooled(grad)[channels]
    # one tensordot over the kept channels: Σ_j coef_j · X[j]
    part = np.tensordot(coef.astype(np.float64), x[channels].astype(np.float64), axes=(0, 0))
    return part, int(channels.size), int(x.shape[0])


def level_tubes(pyramid: Pyramid, trace: Trace, kind: str | None = None) -> list[SaliencyTube]:
    """One tube per non-empty level. ``kind``: "relevance" (Σ r_j X[j]), "sum" (the paper's Σ X[j]) or
    "gradcam" (ReLU(Σ α_j X[j]) over the kept channels); default: the pyramid's ``tube`` parameter.
    Each level's channels are read in the tensor where they were scored; a level spread over several
    tensors adds their maps (``SaliencyTube.to_clip`` re-does that addition at the clip's size)."""
    kind = kind or str(pyramid.params.get("tube", "relevance"))
    check_choice("tube", kind, TUBES)
    tubes = []
    for level in pyramid.levels:
        if not level.tensors:
            continue
        parts, used, total = [], 0, 0
        for tensor in level.tensors:
            part, n, c = _level_part(pyramid, level, tensor, trace, kind)
            parts.append(part)
            used, total = used + n, total + c
        tubes.append(level_tube_of_parts(level, parts, kind, used, total, rectify=kind == "gradcam"))
    return tubes


def kernel_tube(
    pyramid: Pyramid, trace: Trace, layer: str, channel: int, level: int | None = None
) -> SaliencyTube:
    """The map of one kept kernel: its channel in the tensor where it was scored (the first level it
    appears in unless ``level`` is given)."""
    node = pyramid.node(layer, channel, level)
    parts = [tensor_view(pyramid, trace, t)[j].astype(np.float64) for t, j in node.at]
    volume = normalise01(combine_parts(parts, rectify=False))
    return SaliencyTube(
        label=f"{node.id} level {node.level}",
        level=node.level,
        volume=volume,
        tensors=tuple(dict.fromkeys(t for t, _ in node.at)),
        node=(node.layer, node.channel),
        parts=tuple(p.astype(np.float32) for p in parts) if len(parts) > 1 else (),
        num_channels=len(node.at),
    )


def frame_importance(volume: np.ndarray) -> np.ndarray:
    """Each frame's share of the tube's mass (``[T]``, sums to 1; zeros for an empty tube)."""
    v = np.clip(np.nan_to_num(np.asarray(volume, np.float64)), 0.0, None)
    per_frame = v.reshape(v.shape[0], -1).sum(axis=1)
    total = per_frame.sum()
    return (per_frame / total if total > 0 else np.zeros_like(per_frame)).astype(np.float32)
