"""Selection of the Class Feature Pyramid: level 1 from the class, back-steps to the kernels' inputs.

Everything is vectorised per (layer, level): the parents' rows of ``kvec`` (restricted to the channels of
their group) times ``avec`` (times ``max(α, 0)`` for the gradients method), a row-wise max and a compare.
Each (layer, parent channel) is scored once per pyramid, whatever the number of paths reaching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcfp.errors import ConfigError, GradientCheckError
from onnxcfp.graph.layers import ConvLayer
from onnxcfp.graph.modelgraph import ModelGraph
from onnxcfp.pyramid.features import clip_channels, pooled, traced
from onnxcfp.pyramid.options import check_pyramid_options
from onnxcfp.pyramid.types import LayerInfo, Level, Pyramid, TensorRequest
from onnxcfp.trace import Trace

_KEY = np.int64(1) << 32  # node key = layer position * _KEY + channel

# Head ops for which Σ_c pool(∂S/∂F_c)·pool(F_c)·T·H·W equals logit − bias exactly (global mean pooling
# followed by linear maps); other heads (max pooling, padded average pooling) skip the self-check.
_MEAN_LINEAR_HEAD_OPS = frozenset(
    {
        "GlobalAveragePool",
        "ReduceMean",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Dropout",
        "Identity",
        "Gemm",
        "MatMul",
        "Add",
        "Transpose",
        "Cast",
        "Conv",
    }
)


@dataclass(frozen=True)
class _Producers:
    """CSR of a tensor's channel flow: channel j comes from conv outputs ``(layer[k], channel[k])`` for
    k in ``ptr[j]:ptr[j+1]`` (layer as a position in ``graph.layers``)."""

    ptr: np.ndarray
    layer: np.ndarray
    channel: np.ndarray

    @property
    def any(self) -> bool:
        return self.layer.size > 0

    def expand(self, tensor_channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each given tensor channel, the index of that channel in the input (repeated) and the node
        keys producing it."""
        starts = self.ptr[tensor_channels]
        counts = self.ptr[tensor_channels + 1] - starts
        which = np.repeat(np.arange(tensor_channels.size), counts)
        offsets = np.arange(which.size) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = starts[which] + offsets
        return which, self.layer[flat] * _KEY + self.channel[flat]


class _Graph:
    """Cached, vectorisable view of a ModelGraph for one residual mode."""

    def __init__(self, graph: ModelGraph, residual: str) -> None:
        self.graph = graph
        self.residual = residual
        # layers are addressed by ConvLayer.index (topological), so sorted node keys are sorted by
        # (layer index, channel): the order pyramid.json promises
        self.at: dict[int, ConvLayer] = {layer.index: layer for layer in graph.layers}
        self.pos = {layer.name: layer.index for layer in graph.layers}
        self._producers: dict[str, _Producers] = {}

    def producers(self, tensor: str) -> _Producers:
        if tensor not in self._producers:
            cmap = self.graph.channel_map(tensor, self.residual)
            counts = np.fromiter((len(s) for s in cmap.sources), np.int64, len(cmap.sources))
            ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            lay = np.fromiter((self.pos[s.layer] for srcs in cmap.sources for s in srcs), np.int64)
            ch = np.fromiter((s.channel for srcs in cmap.sources for s in srcs), np.int64)
            self._producers[tensor] = _Producers(ptr, lay, ch)
        return self._producers[tensor]

    def producer_layers(self, tensor: str) -> list[int]:
        return sorted(set(self.producers(tensor).layer.tolist()))


def _passes_through(layer: ConvLayer, normalise: str) -> bool:
    # The original rule scores depthwise kernels like any other (and gets no children: max = min).
    return layer.is_depthwise and normalise != "original"


def pyramid_tensors(
    graph: ModelGraph,
    depth: int = 3,
    method: str = "gradients",
    residual: str = "branch",
    *,
    tube: str = "relevance",
    normalise: str = "max",
) -> TensorRequest:
    """The minimal tensors a pyramid of ``depth`` levels can need, whatever the clip: F, and the input
    of every conv that a back-step can reach (activations; gradients too for ``method="gradients"`` and
    for ``tube="gradcam"``)."""
    check_pyramid_options(depth=depth, method=method, residual=residual, tube=tube, normalise=normalise)
    if graph.head is None:
        raise ConfigError("the model has no classifier head; a pyramid starts at the class scores")
    g = _Graph(graph, residual)
    features = graph.head.features
    acts: dict[str, None] = {features: None}
    grads: dict[str, None] = {}
    if method == "gradients" or tube == "gradcam":
        grads[features] = None
    frontier = set(g.producer_layers(features))
    for _level in range(1, depth):
        # close the level under depthwise pass-through (same level), then take one real back-step
        todo, level_layers = sorted(frontier, reverse=True), set(frontier)
        while todo:
            li = todo.pop(0)
            layer = g.at[li]
            if _passes_through(layer, normalise) and g.producers(layer.input).any:
                acts[layer.input] = None
                if tube == "gradcam":
                    grads[layer.input] = None
                for p in g.producer_layers(layer.input):
                    if p not in level_layers:
                        level_layers.add(p)
                        todo.append(p)
                todo.sort(reverse=True)
        frontier = set()
        for li in sorted(level_layers, reverse=True):
            layer = g.at[li]
            if _passes_through(layer, normalise) or not g.producers(layer.input).any:
                continue
            acts[layer.input] = None
            if method == "gradients" or tube == "gradcam":
                grads[layer.input] = None
            frontier.update(g.producer_layers(layer.input))
        if not frontier:
            break
    return TensorRequest(tuple(acts), tuple(grads))


class _LayerScores:
    """Dense per-layer cache of back-step results, filled row by row as parents appear."""

    def __init__(self, out_channels: int, cpg: int) -> None:
        self.done = np.zeros(out_channels, bool)
        self.norm = np.zeros((out_channels, cpg), np.float64)
        self.keep = np.zeros((out_channels, cpg), bool)


def _apply_top_n(norm: np.ndarray, keep: np.ndarray, top_n: int) -> np.ndarray:
    """Of each row's kept entries, only the ``top_n`` with the highest score (ties: lower channel first)."""
    if keep.shape[1] <= top_n:
        return keep
    masked = np.where(keep, norm, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(keep.shape[1])[None, :].repeat(keep.shape[0], 0), axis=1)
    return keep & (rank < top_n)


def _select_rows(p: np.ndarray, theta: float, normalise: str) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise selection over contributions ``p`` [P, n] -> (normalised scores, kept mask), never NaN."""
    if normalise == "original":
        # p / Σp, then min-max, keep >= θ, all in float32; NaN rows (Σp = 0 or max = min) keep nothing.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = p / p.sum(axis=1, dtype=np.float32, keepdims=True)
            lo = q.min(axis=1, keepdims=True)
            n = (q - lo) / (q.max(axis=1, keepdims=True) - lo)
            keep = n >= np.float32(theta)
        return np.where(np.isfinite(n), n, 0.0).astype(np.float64), keep
    top = p.max(axis=1, keepdims=True) if p.shape[1] else np.zeros((p.shape[0], 1))
    positive = top > 0
    n = np.divide(p, top, out=np.zeros_like(p, dtype=np.float64), where=positive)
    keep = (p > 0) & positive & (n >= theta)
    return np.where(keep, n, np.maximum(n, 0.0)), keep


class _Builder:
    def __init__(
        self,
        graph: ModelGraph,
        trace: Trace,
        clip: int,
        residual: str,
        method: str,
        normalise: str,
        theta: float,
        top_n: int | None,
        top_n_level: int | None,
    ) -> None:
        self.g = _Graph(graph, residual)
        self.trace = trace
        self.clip = clip
        self.num_clips = int(trace.logits.shape[0])
        self.method = method
        self.normalise = normalise
        self.theta = float(theta)
        self.top_n = top_n
        self.top_n_level = top_n_level
        self._avec: dict[str, np.ndarray] = {}
        self._alpha: dict[str, np.ndarray] = {}
        self._scores: dict[int, _LayerScores] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.channel_axes: dict[str, int] = {}
        self.prev_sorted_keys: np.ndarray = np.zeros(0, np.int64)  # node keys of the level above

    # -- pooled vectors -----------------------------------------------------------------------------
    def channel_axis(self, tensor: str) -> int:
        """Conv inputs are NC...; other tensors (F) may be channels-last: the graph knows which axis."""
        if tensor not in self.channel_axes:
            self.channel_axes[tensor] = self.g.graph.channel_axis(tensor)
        return self.channel_axes[tensor]

    def activation(self, tensor: str) -> np.ndarray:
        x = clip_channels(traced(self.trace, tensor), self.clip, self.num_clips, self.channel_axis(tensor))
        self.shapes[tensor] = tuple(int(s) for s in x.shape[1:])
        return x

    def avec(self, tensor: str) -> np.ndarray:
        if tensor not in self._avec:
            self._avec[tensor] = pooled(self.activation(tensor), exact32=self.normalise == "original")
        return self._avec[tensor]

    def alpha(self, tensor: str) -> np.ndarray:
        if tensor not in self._alpha:
            grad = clip_channels(
                traced(self.trace, tensor, gradient=True),
                self.clip,
                self.num_clips,
                self.channel_axis(tensor),
            )
            self._alpha[tensor] = pooled(grad)
        return self._alpha[tensor]

    def kvec(self, li: int, rows: np.ndarray) -> np.ndarray:
        """``pool(W[k])`` for the given output channels only (kernels are input-independent, but pooling
        all of a 512x512x27 weight costs more than the whole selection)."""
        w = self.g.at[li].weight[rows]
        w = w.reshape(w.shape[0], w.shape[1], -1)
        if self.normalise == "original":
            w32 = w.astype(np.float32, copy=False)
            return w32.sum(axis=2, dtype=np.float32) / np.float32(w32.shape[2])
        return w.mean(axis=2, dtype=np.float64)

    # -- back-step ----------------------------------------------------------------------------------
    def back_step(self, li: int, parents: np.ndarray, child_level: int) -> tuple[np.ndarray, ...]:
        """Score parents (output channels of layer ``li``) against the layer's input; return kept
        (parent channel, input channel, normalised score) triples."""
        layer = self.g.at[li]
        cpg = layer.channels_per_group
        per_group = layer.out_channels // layer.groups
        base = (parents // per_group) * cpg  # first input channel of each parent's group
        cache = self._scores.setdefault(li, _LayerScores(layer.out_channels, cpg))
        new = parents[~cache.done[parents]]
        if new.size:
            cols = (new // per_group)[:, None] * cpg + np.arange(cpg)[None, :]
            p = self.kvec(li, new) * self.avec(layer.input)[cols]
            if self.method == "gradients":
                p = p * np.maximum(self.alpha(layer.input)[cols], 0.0)
            cache.norm[new], cache.keep[new] = _select_rows(p, self.theta, self.normalise)
            cache.done[new] = True
        keep = cache.keep[parents]
        norm = cache.norm[parents]
        if self.top_n is not None and self.top_n_level in (None, child_level):
            keep = _apply_top_n(norm, keep, self.top_n)
        rows, cols = np.nonzero(keep)
        return parents[rows], base[rows] + cols, norm[rows, cols]


def _level_one_scores(
    graph: ModelGraph, trace: Trace, b: _Builder, label: int, method: str, normalise: str
) -> tuple[np.ndarray, np.ndarray]:
    """(normalised class-level scores over F's channels, kept mask)."""
    head = graph.head
    assert head is not None
    if method == "weights":
        if not head.linear:
            raise ConfigError(
                f"method='weights' needs a linear classifier head, but this head is {head.kind!r}; "
                "use method='gradients'"
            )
        w = np.asarray(head.weight)
        if normalise == "original":
            # min-max over the whole matrix (all classes), as the authors' code did, in float32
            w32 = w.astype(np.float32)
            lo = w32.min()
            with np.errstate(divide="ignore", invalid="ignore"):
                n = (w32[label] - lo) / (w32.max() - lo)
                keep = n >= np.float32(b.theta)
            return np.where(np.isfinite(n), n, 0.0).astype(np.float64), keep
        s = w[label].astype(np.float64)
    else:
        features = head.features
        f = b.activation(features)
        grad = clip_channels(
            traced(trace, features, gradient=True), b.clip, b.num_clips, b.channel_axis(features)
        )
        if not np.any(grad):
            raise GradientCheckError(
                f"every gradient d(score)/d({features}) is zero: the backward graph does not reach the "
                "features (control flow such as If in the head?); use method='weights'"
            )
        s = pooled(grad) * pooled(f)
        _self_check(graph, trace, b, label, s, int(np.prod(f.shape[1:])))
    n, keep = _select_rows(s[None, :], b.theta, "max")
    return n[0], keep[0]


def _head_ops(model: onnx.ModelProto, features: str, logits: str) -> set[str]:
    """Op types on the paths from ``features`` to ``logits``."""
    producer = {o: node for node in model.graph.node for o in node.output}
    ops: set[str] = set()
    seen: set[str] = set()
    todo = [logits]
    while todo:
        t = todo.pop()
        if t in seen or t == features or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        ops.add(node.op_type)
        todo.extend(i for i in node.input if i)
    return ops


def _self_check(
    graph: ModelGraph, trace: Trace, b: _Builder, label: int, s: np.ndarray, positions: int
) -> None:
    """Σ_c s_c·T·H·W = logit − bias for a linear, mean-pooled head scored on the logit."""
    head = graph.head
    assert head is not None
    if not head.linear or head.bias is None or trace.score_kind != "logit":
        return
    if not _head_ops(graph.model, head.features, head.logits) <= _MEAN_LINEAR_HEAD_OPS:
        return
    expected = float(trace.logits[b.clip, label]) - float(np.asarray(head.bias)[label])
    got = float(s.sum()) * positions
    scale = float(np.abs(s).sum()) * positions + abs(expected)
    if abs(got - expected) > 2e-3 * scale + 1e-4:
        raise GradientCheckError(
            f"gradient self-check failed: sum of channel shares {got:.6g} != logit - bias {expected:.6g} "
            f"for class {label}; the backward graph is wrong for this model, use method='weights'"
        )


def _layer_infos(graph: ModelGraph, positions: set[int]) -> dict[str, LayerInfo]:
    out: dict[str, LayerInfo] = {}
    by_index = {layer.index: layer for layer in graph.layers}
    for li in sorted(positions):
        layer = by_index[li]
        out[layer.name] = LayerInfo(
            index=int(layer.index),
            kind=str(getattr(layer.kind, "value", layer.kind)),
            kernel=tuple(int(k) for k in layer.kernel),
            groups=int(layer.groups),
            in_channels=int(layer.in_channels),
            out_channels=int(layer.out_channels),
            input=layer.input,
            output=layer.output,
            input_shape=tuple(graph.shapes.get(layer.input, ())),
        )
    return out


@dataclass
class _LevelAccum:
    """Edges and scored channels collected for one level before it is frozen."""

    parent_key: list[np.ndarray]
    parent_level: list[np.ndarray]
    child_key: list[np.ndarray]
    score: list[np.ndarray]
    contrib: list[np.ndarray]  # parent relevance x score, per edge (relevance flows along it)
    entry_tensor: list[str]
    entry_channel: list[np.ndarray]
    entry_weight: list[np.ndarray]
    entry_child: list[tuple[np.ndarray, np.ndarray]]  # (entry position in its batch, node key)

    @classmethod
    def empty(cls) -> _LevelAccum:
        return cls([], [], [], [], [], [], [], [], [])

    def add(
        self,
        producers: _Producers,
        tensor: str,
        parent_key: np.ndarray,
        parent_level: int,
        parent_rel: np.ndarray,
        channel: np.ndarray,
        score: np.ndarray,
    ) -> None:
        """Kept (parent, tensor channel, score) triples -> edges to the nodes producing each channel."""
        which, child = producers.expand(channel)
        self.parent_key.append(parent_key[which])
        self.parent_level.append(np.full(which.size, parent_level, np.int64))
        self.child_key.append(child)
        self.score.append(score[which])
        self.contrib.append(parent_rel[which] * score[which])
        # scored channels: only those some conv produces (the clip's own channels are not nodes)
        has = (producers.ptr[channel + 1] - producers.ptr[channel]) > 0
        uniq, inv = np.unique(channel[has], return_inverse=True)
        weight = np.zeros(uniq.size)
        np.add.at(weight, inv, (parent_rel * score)[has])
        self.entry_tensor.append(tensor)
        self.entry_channel.append(uniq)
        self.entry_weight.append(weight)
        self.entry_child.append((np.searchsorted(uniq, channel[which]), child))

    def cat(self, items: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(items).astype(dtype) if items else np.zeros(0, dtype)


def _resolve_label(
    trace: Trace, label: int | str | None, clip: int, method: str, class_names: Sequence[str] | None
) -> int:
    k = int(trace.logits.shape[1])
    if isinstance(label, str):
        if class_names is None or label not in class_names:
            raise ConfigError(f"unknown class name {label!r}; pass class_names or an integer label")
        label = list(class_names).index(label)
    if label is None:
        if method == "gradients" and trace.target is not None:
            label = int(trace.target[clip])
        else:
            label = int(trace.logits[clip].argmax())
    if not 0 <= int(label) < k:
        raise ConfigError(f"label={label} is out of range: the model has {k} classes")
    if method == "gradients":
        if trace.target is None or not trace.gradients:
            raise ConfigError("method='gradients' needs a trace with gradients; run with gradients=...")
        if int(trace.target[clip]) != int(label):
            raise ConfigError(
                f"the trace's gradients are for class {int(trace.target[clip])}, not {label}; "
                f"run onnxcfp.runtime.run(..., target={label})"
            )
    return int(label)


def build_pyramid(
    graph: ModelGraph,
    trace: Trace,
    label: int | str | None = None,
    theta: float = 0.6,
    depth: int = 3,
    method: str = "gradients",
    residual: str = "branch",
    top_n: int | None = None,
    normalise: str = "max",
    clip_index: int = 0,
    *,
    tube: str = "relevance",
    top_n_level: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Pyramid:
    """The Class Feature Pyramid of class ``label`` (default: the trace's target, else top-1) for clip
    ``clip_index``: ``depth`` levels of kept kernels with their parent edges (see docs/pyramid-json.md).

    ``top_n`` keeps, per parent, only the n kept children with the highest score; with ``top_n_level``
    only when selecting that level (1 = the class level), as the original's ``topN_inL`` option.
    """
    check_pyramid_options(
        depth=depth,
        method=method,
        residual=residual,
        tube=tube,
        normalise=normalise,
        theta=theta,
        top_n=top_n,
        top_n_level=top_n_level,
    )
    if graph.head is None:
        raise ConfigError("the model has no classifier head; a pyramid starts at the class scores")
    num_clips = int(trace.logits.shape[0])
    if not 0 <= clip_index < num_clips:
        raise ConfigError(f"clip_index={clip_index} is out of range: the trace holds {num_clips} clip(s)")
    label = _resolve_label(trace, label, clip_index, method, class_names)

    b = _Builder(graph, trace, clip_index, residual, method, normalise, float(theta), top_n, top_n_level)
    g = b.g
    features = graph.head.features
    b.activation(features)  # records F's shape for the level-1 tube

    # ---- level 1 -------------------------------------------------------------------------------------
    n1, keep1 = _level_one_scores(graph, trace, b, label, method, normalise)
    if top_n is not None and top_n_level in (None, 1):
        keep1 = _apply_top_n(n1[None, :], keep1[None, :], top_n)[0]
    kept = np.nonzero(keep1)[0]
    acc = _LevelAccum.empty()
    class_key = np.full(kept.size, -1, np.int64)
    acc.add(g.producers(features), features, class_key, 0, np.ones(kept.size), kept, n1[kept])

    levels: list[Level] = []
    used_layers: set[int] = set()
    prev_keys: np.ndarray = np.zeros(0, np.int64)
    prev_rel: np.ndarray = np.zeros(0)
    for level_no in range(1, depth + 1):
        if level_no > 1:
            acc = _LevelAccum.empty()
            by_layer = prev_keys // _KEY
            for li in np.unique(by_layer)[::-1]:
                layer = g.at[int(li)]
                sel = by_layer == li
                if _passes_through(layer, normalise) or not g.producers(layer.input).any:
                    continue
                pk = prev_keys[sel]
                parents, channels, scores = b.back_step(int(li), pk % _KEY, level_no)
                rel = prev_rel[sel][np.searchsorted(pk % _KEY, parents)]
                acc.add(
                    g.producers(layer.input),
                    layer.input,
                    li * _KEY + parents,
                    level_no - 1,
                    rel,
                    channels,
                    scores,
                )
        b.prev_sorted_keys = prev_keys
        level = _freeze_level(b, acc, level_no, expand=level_no < depth, normalise=normalise)
        levels.append(level)
        used_layers.update(g.pos[name] for name in level.node_layer)
        prev_keys = np.asarray([g.pos[n] for n in level.node_layer], np.int64) * _KEY + level.node_channel
        prev_rel = level.node_relevance
        if level.size == 0:
            break

    # an empty tail (no kept children) still shows as levels with no nodes, so depth is honoured
    while len(levels) < depth:
        levels.append(_empty_level(len(levels) + 1))

    video = graph.video_input
    score_kind = trace.score_kind if method == "gradients" else "logit"
    score = (
        trace.probabilities[clip_index, label]
        if score_kind == "probability"
        else (trace.logits[clip_index, label])
    )
    return Pyramid(
        source=str(graph.source),
        input={"name": video.name, "layout": video.layout, "shape": list(video.shape)},
        clip=int(clip_index),
        class_index=label,
        class_name=str(class_names[label]) if class_names is not None and label < len(class_names) else None,
        class_score=float(score),
        score_kind=score_kind,
        params={
            "theta": float(theta),
            "depth": depth,
            "method": method,
            "residual": residual,
            "top_n": top_n,
            "top_n_level": top_n_level,
            "normalise": normalise,
            "tube": tube,
        },
        layers=_layer_infos(graph, used_layers),
        levels=tuple(levels),
        channel_axes={t: a for t, a in b.channel_axes.items() if a != 1},
    )


def _empty_level(level_no: int) -> Level:
    z_i, z_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return Level(level_no, (), {}, (), z_i, z_f, z_f, z_i, z_i, z_i, z_f, z_i, z_i, z_f, z_i, z_i)


def _freeze_level(b: _Builder, acc: _LevelAccum, level_no: int, expand: bool, normalise: str) -> Level:
    """Turn collected edges into a Level: depthwise pass-through (same level) when the level will be
    back-stepped, edges deduplicated per (parent, child) keeping the highest score, relevance summed
    along edges and normalised to max 1."""
    g = b.g
    child = acc.cat(acc.child_key, np.int64)
    contrib = acc.cat(acc.contrib, np.float64)
    # raw relevance of the scored nodes, before pass-through
    keys, inv = np.unique(child, return_inverse=True)
    rel = np.zeros(keys.size)
    np.add.at(rel, inv, contrib)
    if expand and normalise != "original":
        # Depthwise pass-through: a kept depthwise kernel keeps its single input channel (score 1) and
        # its producers join this level. Later layers first, so a node's relevance is complete before
        # it flows on (producers always have smaller positions).
        done: set[int] = set()
        while True:
            layer_of = keys // _KEY
            pending = [
                int(li)
                for li in np.unique(layer_of)[::-1]
                if int(li) not in done
                and _passes_through(g.at[int(li)], normalise)
                and g.producers(g.at[int(li)].input).any
            ]
            if not pending:
                break
            li = pending[0]
            done.add(li)
            layer = g.at[li]
            sel = layer_of == li
            dw_keys, dw_rel = keys[sel], rel[sel]
            channels = (dw_keys % _KEY) // (layer.out_channels // layer.groups)
            acc.add(
                g.producers(layer.input),
                layer.input,
                dw_keys,
                level_no,
                dw_rel,
                channels,
                np.ones(dw_keys.size),
            )
            b.activation(layer.input)  # its shape, for the level's tube
            child = acc.cat(acc.child_key, np.int64)
            contrib = acc.cat(acc.contrib, np.float64)
            keys, inv = np.unique(child, return_inverse=True)
            rel = np.zeros(keys.size)
            np.add.at(rel, inv, contrib)
    if keys.size == 0:
        return _empty_level(level_no)

    # keys are sorted, hence nodes by (layer index, channel)
    top = rel.max()
    scale = 1.0 / top if top > 0 else 0.0

    parent_key = acc.cat(acc.parent_key, np.int64)
    parent_level = acc.cat(acc.parent_level, np.int64)
    score = acc.cat(acc.score, np.float64)
    child_idx = np.searchsorted(keys, child)
    node_score = np.zeros(keys.size)
    np.maximum.at(node_score, child_idx, score)

    edge_child = edge_parent = edge_parent_level = edge_score = np.zeros(0, np.int64)
    if level_no > 1 or (parent_level > 0).any():
        real = parent_level > 0  # level-1 edges come from the class and are not stored
        ec, ep, epl, es = child_idx[real], parent_key[real], parent_level[real], score[real]
        # dedupe (parent, child): keep the highest score
        o = np.lexsort((-es, ep, epl, ec))
        ec, ep, epl, es = ec[o], ep[o], epl[o], es[o]
        first = np.ones(ec.size, bool)
        first[1:] = (ec[1:] != ec[:-1]) | (ep[1:] != ep[:-1]) | (epl[1:] != epl[:-1])
        edge_child, edge_parent_key = ec[first], ep[first]
        edge_parent_level, edge_score = epl[first], es[first]
        edge_parent = _parent_positions(b, edge_parent_key, edge_parent_level, level_no, keys)
        o = np.lexsort((edge_parent, edge_parent_level, edge_child))
        edge_child, edge_parent, edge_parent_level, edge_score = (
            edge_child[o],
            edge_parent[o],
            edge_parent_level[o],
            edge_score[o],
        )

    # scored channels, grouped per tensor (tensors ordered by first appearance)
    tensors: list[str] = []
    e_t, e_c, e_w, at_n, at_e = [], [], [], [], []
    total = 0
    for t, ch, w, (pos, ck) in zip(
        acc.entry_tensor, acc.entry_channel, acc.entry_weight, acc.entry_child, strict=True
    ):
        if t not in tensors:
            tensors.append(t)
        e_t.append(np.full(ch.size, tensors.index(t), np.int64))
        e_c.append(ch)
        e_w.append(w * scale)
        at_n.append(np.searchsorted(keys, ck))
        at_e.append(pos + total)
        total += ch.size
    entry_tensor = np.concatenate(e_t)
    entry_channel = np.concatenate(e_c).astype(np.int64)
    entry_weight = np.concatenate(e_w)
    # merge duplicate (tensor, channel) entries (several parent layers scoring the same tensor)
    ekey = entry_tensor * _KEY + entry_channel
    ukey, einv = np.unique(ekey, return_inverse=True)
    weight = np.zeros(ukey.size)
    np.add.at(weight, einv, entry_weight)
    at_node = np.concatenate(at_n).astype(np.int64)
    at_entry = einv[np.concatenate(at_e).astype(np.int64)]
    pairs = np.unique(at_node * _KEY + at_entry)
    return Level(
        level=level_no,
        tensors=tuple(tensors),
        shapes={t: b.shapes[t] for t in tensors},
        node_layer=tuple(g.at[int(li)].name for li in keys // _KEY),
        node_channel=(keys % _KEY).astype(np.int64),
        node_score=node_score,
        node_relevance=rel * scale,
        edge_child=edge_child.astype(np.int64),
        edge_parent=edge_parent.astype(np.int64),
        edge_parent_level=edge_parent_level.astype(np.int64),
        edge_score=edge_score.astype(np.float64),
        entry_tensor=(ukey // _KEY).astype(np.int64),
        entry_channel=(ukey % _KEY).astype(np.int64),
        entry_weight=weight,
        at_node=(pairs // _KEY).astype(np.int64),
        at_entry=(pairs % _KEY).astype(np.int64),
    )


def _parent_positions(
    b: _Builder, parent_key: np.ndarray, parent_level: np.ndarray, level_no: int, this_keys: np.ndarray
) -> np.ndarray:
    """Index of each parent among the nodes of its level (sorted keys of this or the previous level)."""
    out = np.zeros(parent_key.size, np.int64)
    same = parent_level == level_no
    out[same] = np.searchsorted(this_keys, parent_key[same])
    if (~same).any():
        out[~same] = np.searchsorted(b.prev_sorted_keys, parent_key[~same])
    return out


__all__ = ["build_pyramid", "pyramid_tensors"]
