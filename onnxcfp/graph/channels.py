"""Channel flow: which conv output channel(s) produce each channel of a tensor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, order=True)
class ChannelSource:
    """Output channel ``channel`` of the conv named ``layer``."""

    layer: str
    channel: int


@dataclass(frozen=True)
class ChannelMap:
    """For each channel j of ``tensor``, the conv output channels it comes from.

    ``sources[j]`` is empty when channel j comes straight from the graph input (no conv before it), one
    source through channel-aligned ops, several after a residual Add (which ones depends on the residual
    mode the map was built with).
    """

    tensor: str
    sources: tuple[tuple[ChannelSource, ...], ...]

    @property
    def num_channels(self) -> int:
        return len(self.sources)

    def by_layer(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{layer: (tensor_channels, layer_channels)}``: parallel int arrays, for vectorised lookups."""
        pairs: dict[str, tuple[list[int], list[int]]] = {}
        for j, srcs in enumerate(self.sources):
            for s in srcs:
                tj, lj = pairs.setdefault(s.layer, ([], []))
                tj.append(j)
                lj.append(s.channel)
        return {k: (np.asarray(t, dtype=np.int64), np.asarray(c, dtype=np.int64)) for k, (t, c) in pairs.items()}
