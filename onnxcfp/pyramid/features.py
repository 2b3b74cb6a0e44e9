"""Per-clip channel views of traced tensors and their pooled (mean over positions) vectors."""

from __future__ import annotations

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.trace import Trace


def clip_channels(array: np.ndarray, clip: int, num_clips: int, channel_axis: int = 1) -> np.ndarray:
    """``[C, T, H, W]`` view of one clip's tensor.

    Accepts ``[N, C, T, H, W]`` (3-D convs), ``[N, C, H, W]``/``[N, C]`` (T and H/W of size 1), and per-frame
    2-D models that fold time into the batch, ``[N*T, C, H, W]`` (the clip's frames become T).
    ``channel_axis`` says where C is when it is not axis 1 (e.g. 4 for ``[N, T, H, W, C]``).
    """
    a = np.asarray(array)
    if channel_axis != 1 and a.ndim > 2:
        a = np.moveaxis(a, channel_axis, 1)  # channels-last tensors (TF-style heads)
    if a.ndim < 2:
        raise ConfigError(f"tensor of shape {a.shape} has no channel axis; expose a [N, C, ...] tensor")
    if a.shape[0] == num_clips:
        x = a[clip]
        while x.ndim < 4:
            x = x[:, None] if x.ndim == 3 else x[..., None]
        return x.reshape(x.shape[0], *x.shape[-3:]) if x.ndim == 4 else x.reshape(x.shape[0], 1, 1, -1)
    if a.ndim == 4 and a.shape[0] % num_clips == 0:
        frames = a.shape[0] // num_clips
        return np.moveaxis(a[clip * frames : (clip + 1) * frames], 0, 1)
    raise ConfigError(
        f"tensor of shape {a.shape} does not hold {num_clips} clip(s) on its first axis; "
        "pass the Trace from the same run"
    )


def traced(trace: Trace, name: str, gradient: bool = False) -> np.ndarray:
    store = trace.gradients if gradient else trace.activations
    if name not in store:
        what = "gradients" if gradient else "activations"
        raise ConfigError(
            f"the trace has no {what[:-1]} for tensor {name!r}; run onnxcfp.runtime.run with "
            f"{what}=pyramid_tensors(graph, ...).{what}"
        )
    return store[name]


def pooled(x: np.ndarray, exact32: bool = False) -> np.ndarray:
    """Mean over all positions per channel of a ``[C, ...]`` array.

    float64 by default; ``exact32`` reproduces the original's float32 arithmetic (sum then divide by count,
    both in float32)."""
    flat = x.reshape(x.shape[0], -1)
    if exact32:
        flat = flat.astype(np.float32, copy=False)
        return flat.sum(axis=1, dtype=np.float32) / np.float32(flat.shape[1])
    return flat.mean(axis=1, dtype=np.float64)
