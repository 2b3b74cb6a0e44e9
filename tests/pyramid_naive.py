"""A deliberately naive Class Feature Pyramid, written from docs/design pyramid.md with plain loops.

It shares no code with onnxcfp.pyramid: it reads only the ModelGraph (layers, head, channel_map) and the
Trace, and walks parents and channels one at a time. Tests compare it with the vectorised implementation.
"""

from __future__ import annotations

import numpy as np


def _view(arr, clip, axis):
    x = np.asarray(arr)[clip]
    if axis != 1:
        x = np.moveaxis(x, axis - 1, 0)
    return x


def _channel_mean(x, c):
    return float(np.mean(x[c], dtype=np.float64))


def _select(values, theta, top_n):
    """Indices kept by the fixed rule: v > 0 and v / max >= theta; then top_n by (score desc, index)."""
    top = max(values) if values else 0.0
    kept = []
    for j, v in enumerate(values):
        if v > 0 and top > 0 and v / top >= theta:
            kept.append((j, v / top))
    if top_n is not None:
        kept = sorted(kept, key=lambda jv: (-jv[1], jv[0]))[:top_n]
        kept.sort()
    return kept


def naive_pyramid(graph, trace, label, theta, depth, method, residual, top_n=None, clip=0, top_n_level=None):
    """Returns a list of levels, each {"nodes": {(layer, channel): relevance}, "edges": {(parent_level,
    parent_layer, parent_channel, child_layer, child_channel): score}}."""
    layers = {layer.name: layer for layer in graph.layers}
    head = graph.head
    features = head.features
    f_axis = graph.flow.channel_axis(features) or 1

    def use_top(level):
        return top_n if top_n_level is None or top_n_level == level else None

    # ---- level 1
    f = _view(trace.activations[features], clip, f_axis)
    if method == "weights":
        s = [float(v) for v in np.asarray(head.weight)[label]]
    else:
        gf = _view(trace.gradients[features], clip, f_axis)
        s = [_channel_mean(gf, c) * _channel_mean(f, c) for c in range(f.shape[0])]
    fmap = graph.channel_map(features, residual)
    levels = []
    score1, rel = {}, {}
    for c, n in _select(s, theta, use_top(1)):
        for src in fmap.sources[c]:
            key = (src.layer, src.channel)
            score1[key] = max(score1.get(key, 0.0), n)
    for key, n in score1.items():
        rel[key] = n
    current = {"nodes": dict(rel), "edges": {}}
    for level in range(1, depth + 1):
        nodes, edges = current["nodes"], current["edges"]
        if level < depth:
            # depthwise pass-through, latest layer first so each node's relevance is complete
            done = set()
            while True:
                todo = [
                    k for k in nodes if k not in done and layers[k[0]].in_channels // layers[k[0]].groups == 1
                ]
                if not todo:
                    break
                todo.sort(key=lambda k: (layers[k[0]].index, k[1]), reverse=True)
                key = todo[0]
                done.add(key)
                layer = layers[key[0]]
                g = key[1] // (layer.out_channels // layer.groups)
                for src in graph.channel_map(layer.input, residual).sources[g]:
                    child = (src.layer, src.channel)
                    ek = (level, key[0], key[1], *child)
                    edges[ek] = max(edges.get(ek, 0.0), 1.0)
                    nodes[child] = nodes.get(child, 0.0) + nodes[key]
        top = max(nodes.values()) if nodes else 0.0
        for k in nodes:
            nodes[k] = nodes[k] / top if top > 0 else 0.0
        levels.append(current)
        if level == depth:
            break
        nxt = {"nodes": {}, "edges": {}}
        contrib = {}
        for lname, k in sorted(nodes):
            layer = layers[lname]
            cpg = layer.in_channels // layer.groups
            if cpg == 1:
                continue  # passed through above
            cmap = graph.channel_map(layer.input, residual)
            if not any(cmap.sources):
                continue  # the clip itself: no kernel produces these channels, nothing to find
            x = _view(trace.activations[layer.input], clip, 1)
            if method == "gradients":
                gx = _view(trace.gradients[layer.input], clip, 1)
            g0 = (k // (layer.out_channels // layer.groups)) * cpg
            p = []
            for jj in range(cpg):
                j = g0 + jj
                v = float(np.mean(layer.weight[k, jj], dtype=np.float64)) * _channel_mean(x, j)
                if method == "gradients":
                    v *= max(_channel_mean(gx, j), 0.0)
                p.append(v)
            for jj, n in _select(p, theta, use_top(level + 1)):
                for src in cmap.sources[g0 + jj]:
                    child = (src.layer, src.channel)
                    ek = (level, lname, k, *child)
                    nxt["edges"][ek] = max(nxt["edges"].get(ek, 0.0), n)
        for (_pl, pname, pk, cl, cc), n in nxt["edges"].items():
            contrib[(cl, cc)] = contrib.get((cl, cc), 0.0) + nodes[(pname, pk)] * n
        nxt["nodes"] = contrib
        current = nxt
        if not contrib:
            levels.append(current)
            break
    while len(levels) < depth:
        levels.append({"nodes": {}, "edges": {}})
    return levels
