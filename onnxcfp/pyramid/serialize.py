"""pyramid.json ("onnxcfp.pyramid/1", documented in docs/pyramid-json.md) and the original's nested tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxcfp.errors import ConfigError
from onnxcfp.pyramid.types import SCHEMA, LayerInfo, Level, Pyramid


def _level_to_json(p: Pyramid, lv: Level) -> dict[str, Any]:
    nodes = p.nodes(lv.level)
    return {
        "level": lv.level,
        "tensors": list(lv.tensors),
        "shape": list(lv.shape),
        "shapes": {t: list(s) for t, s in lv.shapes.items()},
        "nodes": [
            {
                "id": n.id,
                "layer": n.layer,
                "channel": n.channel,
                "score": n.score,
                "relevance": n.relevance,
                "parents": [{"node": e.node, "level": e.level, "score": e.score} for e in n.parents],
                "at": [[t, j] for t, j in n.at],
            }
            for n in nodes
        ],
        "channels": [
            {"tensor": lv.tensors[int(t)], "channel": int(c), "weight": float(w)}
            for t, c, w in zip(lv.entry_tensor, lv.entry_channel, lv.entry_weight, strict=True)
        ],
    }


def pyramid_to_json(p: Pyramid) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": {"source": p.source},
        "input": dict(p.input),
        "clip": p.clip,
        "class": {
            "index": p.class_index,
            "name": p.class_name,
            "score": p.class_score,
            "score_kind": p.score_kind,
        },
        "params": dict(p.params),
        "layers": {
            name: {
                "index": li.index,
                "kind": li.kind,
                "kernel": list(li.kernel),
                "groups": li.groups,
                "in_channels": li.in_channels,
                "out_channels": li.out_channels,
                "input": li.input,
                "output": li.output,
                "input_shape": list(li.input_shape),
            }
            for name, li in p.layers.items()
        },
        "levels": [_level_to_json(p, lv) for lv in p.levels],
        "channel_axes": dict(p.channel_axes),
    }


def _level_from_json(d: Mapping[str, Any], all_levels: list[Mapping[str, Any]]) -> Level:
    tensors = tuple(d["tensors"])
    nodes = d["nodes"]
    index_of = [{n["id"]: i for i, n in enumerate(lv["nodes"])} for lv in all_levels]
    ec, ep, epl, es = [], [], [], []
    for i, n in enumerate(nodes):
        for e in n["parents"]:
            ec.append(i)
            ep.append(index_of[int(e["level"]) - 1][e["node"]])
            epl.append(int(e["level"]))
            es.append(float(e["score"]))
    chans = d["channels"]
    entry_of = {(c["tensor"], int(c["channel"])): q for q, c in enumerate(chans)}
    at_n, at_e = [], []
    for i, n in enumerate(nodes):
        for t, j in n["at"]:
            at_n.append(i)
            at_e.append(entry_of[(t, int(j))])
    i64 = lambda v: np.asarray(v, np.int64)  # noqa: E731
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    return Level(
        level=int(d["level"]),
        tensors=tensors,
        shapes={t: tuple(int(x) for x in s) for t, s in d.get("shapes", {}).items()},
        node_layer=tuple(n["layer"] for n in nodes),
        node_channel=i64([n["channel"] for n in nodes]),
        node_score=f64([n["score"] for n in nodes]),
        node_relevance=f64([n["relevance"] for n in nodes]),
        edge_child=i64(ec),
        edge_parent=i64(ep),
        edge_parent_level=i64(epl),
        edge_score=f64(es),
        entry_tensor=i64([tensors.index(c["tensor"]) for c in chans]),
        entry_channel=i64([c["channel"] for c in chans]),
        entry_weight=f64([c["weight"] for c in chans]),
        at_node=i64(at_n),
        at_entry=i64(at_e),
    )


def pyramid_from_json(data: Mapping[str, Any]) -> Pyramid:
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"not a pyramid.json of schema {SCHEMA!r} (found {data.get('schema')!r})")
    cls = data["class"]
    return Pyramid(
        source=data["model"]["source"],
        input=dict(data["input"]),
        clip=int(data["clip"]),
        class_index=int(cls["index"]),
        class_name=cls.get("name"),
        class_score=float(cls["score"]),
        score_kind=str(cls["score_kind"]),
        params=dict(data["params"]),
        layers={
            name: LayerInfo(
                index=int(li["index"]),
                kind=li["kind"],
                kernel=tuple(li["kernel"]),
                groups=int(li["groups"]),
                in_channels=int(li["in_channels"]),
                out_channels=int(li["out_channels"]),
                input=li["input"],
                output=li["output"],
                input_shape=tuple(li["input_shape"]),
            )
            for name, li in data["layers"].items()
        },
        levels=tuple(_level_from_json(lv, data["levels"]) for lv in data["levels"]),
        channel_axes={t: int(a) for t, a in data.get("channel_axes", {}).items()},
    )


def pyramid_to_compat_json(p: Pyramid) -> dict[str, Any]:
    """The original's nested tree ``{"label": {"k1": {"k2": [k3, ...]}}}``: keys are channels (as strings),
    leaves lists of channels, subtrees repeated per path. Depthwise pass-through nodes are folded into
    the depthwise kernel (the original had no such step); kernels of several layers with one channel
    number under the same parent are merged."""
    depth = len(p.levels)
    # children[(level, node index)] = node indices of the next level, via pass-through where needed
    scored: dict[tuple[int, int], set[int]] = {}
    through: dict[tuple[int, int], set[int]] = {}
    for lv in p.levels:
        for c, par, pl in zip(lv.edge_child, lv.edge_parent, lv.edge_parent_level, strict=True):
            target = scored if int(pl) < lv.level else through
            target.setdefault((int(pl), int(par)), set()).add(int(c))

    def next_level(level: int, i: int, seen: frozenset[int] = frozenset()) -> set[int]:
        out = set(scored.get((level, i), ()))
        for j in through.get((level, i), ()):
            if j not in seen:
                out |= next_level(level, j, seen | {i})
        return out

    def subtree(level: int, nodes: set[int]) -> Any:
        lv = p.levels[level - 1]
        if level == depth:
            return sorted({int(lv.node_channel[i]) for i in nodes})
        tree: dict[str, Any] = {}
        by_channel: dict[int, set[int]] = {}
        for i in nodes:
            by_channel.setdefault(int(lv.node_channel[i]), set()).update(next_level(level, i))
        for ch in sorted(by_channel):
            tree[str(ch)] = subtree(level + 1, by_channel[ch])
        return tree

    top = p.levels[0] if p.levels else None
    roots: set[int] = set()
    if top is not None and top.size:
        # level-1 roots: nodes not reached by pass-through from another level-1 node
        passed = {c for (lvl, _i), cs in through.items() if lvl == 1 for c in cs}
        roots = {i for i in range(top.size) if i not in passed}
    return {str(p.class_index): subtree(1, roots) if depth > 0 else []}
