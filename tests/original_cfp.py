"""A literal NumPy transcription of the authors' CFP formulas (utils/calc_utils.py and main.py of
Class_Feature_Visualization_Pyramid, 2019), as docs/design pyramid.md's ``normalise="original"`` section
states them: class weights min-max'd over the whole matrix; per kernel p = kvec·avec, p / Σp, min-max,
keep >= θ; float32 throughout with means as sum/count; kernels paired with activations by list position.
The one deliberate repair: the top-n branch (which always crashed) keeps the n highest values.
"""

from __future__ import annotations

import numpy as np


def class_level(class_weights, label, thres):
    cw = np.asarray(class_weights, np.float32).transpose()  # [C, K] as the original transposed it
    base = cw.min()
    weights_range = cw.max() - base
    with np.errstate(divide="ignore", invalid="ignore"):
        cw = np.asarray([(x - base) / weights_range for x in cw])
    return [index for index, weight in enumerate(cw[:, label]) if weight >= thres]


def _avg_pool_all(t):
    """F.avg_pool3d over the whole extent of each channel: sum / count, float32."""
    flat = np.asarray(t, np.float32).reshape(t.shape[0], -1)
    return flat.sum(axis=1, dtype=np.float32) / np.float32(flat.shape[1])


def backprop_kernel_indices(indices_l, k_l, a_l1, thres, topn=None):
    indices_l1 = {}
    for i in indices_l:
        kernel = _avg_pool_all(k_l[i])
        act_map = _avg_pool_all(a_l1)
        groups = act_map.shape[0] // kernel.shape[0]
        if groups > 1:
            kernel = np.concatenate([np.repeat(k, groups) for k in kernel], 0)
        pooled = kernel * act_map
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            pooled = pooled / pooled.sum(0, dtype=np.float32)
            base = np.min(pooled)
            pooled_range = np.max(pooled) - base
            pooled = np.asarray([(x - base) / pooled_range for x in pooled], np.float32)
        if topn is None:
            indices_l1_i = [j for j, feat in enumerate(pooled) if feat >= thres]
        else:
            above = [(feat, -j) for j, feat in enumerate(pooled) if feat >= thres]
            values = sorted(above, reverse=True)[:topn]
            indices_l1_i = sorted(-j for _, j in values)
        indices_l1[i] = indices_l1_i
    return indices_l1


def generate_indices(
    layers_dict, kernels, activations, threshold, index, max_depth, vis_depth=None, vis_num=None
):
    """``kernels[-index]`` is paired with ``activations[-index]`` (the conv's input), as the original's
    model outputs lined them up for a plain chain."""
    if index >= max_depth:
        return layers_dict
    for key in layers_dict:
        if not isinstance(layers_dict[key], dict):
            topn = vis_num if index == vis_depth else None
            layers_dict[key] = backprop_kernel_indices(
                layers_dict[key], kernels[-index], activations[-index], threshold, topn
            )
        if isinstance(layers_dict[key], dict):
            layers_dict[key] = generate_indices(
                layers_dict[key], kernels, activations, threshold, index + 1, max_depth, vis_depth, vis_num
            )
    return layers_dict


def original_tree(class_weights, label, kernels, activations, threshold, max_depth):
    """{label: nested kept kernel indices}, like the original's class_dependency_graph.json."""
    tree = {label: class_level(class_weights, label, threshold)}
    return generate_indices(tree, kernels, activations, threshold, 1, max_depth)
