"""Reverse-mode differentiation of an ONNX graph into standard ONNX ops.

``add_gradients`` appends to a model (1) a score built from its logits and a runtime target input and
(2) a backward section that computes d score / d t for chosen tensors t, so that one onnxruntime session run
returns the forward outputs, the score and the gradients. Only activations get gradients, never weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper, shape_inference, version_converter

from onnxcfp.errors import ConfigError, UnsupportedOpError
from onnxcfp.gradients.context import FLOAT_TYPES, GradContext, StaticShape, node_label
from onnxcfp.gradients.rules import RULES

# Ops whose outputs never carry a gradient: integer/boolean results, or derivative zero almost everywhere.
NON_DIFF = frozenset(
    {
        "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Less", "Greater", "LessOrEqual",
        "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign",
        "ConstantOfShape", "Constant", "Range", "EyeLike", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "OneHot",
    }
)  # fmt: skip

SCORE_KINDS = ("logit", "probability", "weights")
MIN_OPSET = 13  # Softmax/Squeeze/Split semantics below 13 differ; older models are converted first
SCATTER_ADD_OPSET = 16  # ScatterElements(reduction="add") exists from 16
_MAX_PATH_SHOWN = 6


@dataclass(frozen=True)
class GradientGraph:
    """A model extended with a score and its gradients.

    ``target_input`` is the graph input choosing the score: int64 ``[N]`` class indices (negative = the
    clip's top-1 class) for "logit"/"probability", float ``[N, K]`` logit weights for "weights".
    ``grad_outputs[t]`` names the output holding d score/d t (shape of t). ``score_output`` holds the
    per-clip score ``[N]``; ``class_output`` the class index each clip's score used (None for "weights").
    """

    model: onnx.ModelProto
    target_input: str
    grad_outputs: dict[str, str]
    score_kind: str
    score_output: str = ""
    class_output: str | None = None
    backward_nodes: int = field(default=0, compare=False)


@dataclass(frozen=True)
class _Sweep:
    """Result of the two sweeps: which tensors need a gradient, and how each got there (for messages)."""

    active: frozenset[str]
    req_parent: dict[str, str]  # tensor -> the input of its producer that made it depend on a wrt tensor
    contrib_child: dict[str, str]  # tensor -> an output of a consumer through which it reaches the score


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedOpError("the model imports no default ONNX opset; re-export it as a standard ONNX model")


def _is_float(ctx: GradContext, tensor: str) -> bool:
    elem = ctx.known_dtype(tensor)
    return elem is None or elem in FLOAT_TYPES


def _sweep(ctx: GradContext, nodes: Sequence[onnx.NodeProto], wrt: Sequence[str], score: str) -> _Sweep:
    req_parent: dict[str, str] = {t: "" for t in wrt}
    for node in nodes:
        if node.op_type in NON_DIFF:
            continue
        src = next((i for i in node.input if i and i in req_parent), None)
        if src is None:
            continue
        for out in node.output:
            if out and _is_float(ctx, out) and out not in req_parent:
                req_parent[out] = src
    contrib_child: dict[str, str] = {score: ""}
    for node in reversed(nodes):
        via = next((o for o in node.output if o in contrib_child), None)
        if via is None:
            continue
        for inp in node.input:
            if inp and inp not in contrib_child:
                contrib_child[inp] = via
    active = frozenset(t for t in req_parent if t in contrib_child)
    return _Sweep(active, req_parent, contrib_child)


def _path(sweep: _Sweep, node: onnx.NodeProto) -> str:
    """wrt -> ... -> node input, node output -> ... -> score, shortened in the middle when long."""
    back: list[str] = []
    t = next((i for i in node.input if i in sweep.active), "")
    while t:
        back.append(t)
        t = sweep.req_parent.get(t, "")
    fwd: list[str] = []
    t = next((o for o in node.output if o in sweep.contrib_child), "")
    while t:
        fwd.append(t)
        t = sweep.contrib_child.get(t, "")
    chain = [*reversed(back), f"[{node_label(node)}]", *fwd]
    if len(chain) > 2 * _MAX_PATH_SHOWN:
        chain = [*chain[:_MAX_PATH_SHOWN], "...", *chain[-_MAX_PATH_SHOWN:]]
    return " -> ".join(chain)


def _unsupported_node(node: onnx.NodeProto, sweep: _Sweep) -> UnsupportedOpError:
    domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
    return UnsupportedOpError(
        f"node '{node_label(node)}' (op {domain}{node.op_type}) has no gradient rule but lies on the path "
        f"{_path(sweep, node)}; choose gradient targets after it or re-export the model without this op"
    )


def _has_rule(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in RULES


def _prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy at opset ≥ 13 with shapes inferred (shape facts drive the static fast paths of the rules)."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    opset = _default_opset(work)
    if opset < MIN_OPSET:
        try:
            work = version_converter.convert_version(work, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise UnsupportedOpError(
                f"the model uses opset {opset} and could not be converted to {MIN_OPSET} ({exc}); "
                f"re-export it at opset {MIN_OPSET} or newer"
            ) from exc
        opset = MIN_OPSET
    # Inference only enables the rules' static fast paths; without it they fall back to dynamic forms.
    with contextlib.suppress(Exception):
        work = shape_inference.infer_shapes(work, data_prop=True)
    return work, opset


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {i.name for i in g.input} | {i.name for i in g.initializer}
    for node in g.node:
        names.update(o for o in node.output if o)
    return names


def _value_info(name: str, elem_type: int, shape: StaticShape | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def _free_name(ctx: GradContext, wanted: str) -> str:
    name, k = wanted, 1
    while name in ctx._taken:  # a model may already use the friendly name
        k += 1
        name = f"{wanted}_{k}"
    ctx._taken.add(name)
    return name


def add_gradients(
    model: onnx.ModelProto,
    logits: str,
    wrt: Sequence[str],
    score: str = "logit",
    *,
    conv_backward: str = "auto",
) -> GradientGraph:
    """Extend ``model`` so one run returns d score/d t for every t in ``wrt`` alongside its outputs.

    ``score``: "logit" (the target class's logit), "probability" (its softmax probability) or "weights"
    (Σ_k w_k·logit_k with w a runtime input). ``conv_backward``: "auto" uses the flipped-kernel forward
    Conv for stride-1 convs with constant weights and ConvTranspose otherwise; "transpose" always uses
    ConvTranspose. Raises UnsupportedOpError when an op on a path from a wrt tensor to the logits has no
    rule, ConfigError for unknown tensor names or options.
    """
    if score not in SCORE_KINDS:
        raise ConfigError(f"score must be one of {', '.join(SCORE_KINDS)}, not {score!r}")
    if conv_backward not in ("auto", "transpose"):
        raise ConfigError(f"conv_backward must be 'auto' or 'transpose', not {conv_backward!r}")
    work, opset = _prepare(model)
    names = _tensor_names(work)
    missing = [t for t in (logits, *wrt) if t not in names]
    if missing:
        raise ConfigError(
            f"tensor(s) {', '.join(map(repr, missing))} not found in the model; check the names"
        )
    ctx = GradContext(work, opset)
    ctx.conv_backward = conv_backward  # type: ignore[attr-defined]
    graph = work.graph
    forward_nodes = list(graph.node)
    logit_type = ctx.dtype(logits)
    if logit_type not in FLOAT_TYPES:
        raise ConfigError(f"logits tensor {logits!r} is not floating point; pass the class-score tensor")
    new_inputs: list[onnx.ValueInfoProto] = []
    new_outputs: list[onnx.ValueInfoProto] = []

    # --- score: a [N, K] tensor (logits or their softmax) and a seed of the same shape ---------------
    lshape = ctx.shape(logits)
    batch: int | str | None = lshape[0] if lshape else None
    scores2d = logits
    if lshape is not None and len(lshape) != 2:
        scores2d = _free_name(ctx, f"{logits}_flat")
        if len(lshape) > 2:
            forward_nodes.append(helper.make_node("Flatten", [logits], [scores2d], axis=1, name=scores2d))
        else:  # a scalar or a vector of scores: one clip
            flat_shape = ctx.ints([1, -1])
            forward_nodes.append(helper.make_node("Reshape", [logits, flat_shape], [scores2d], name=scores2d))
            batch = 1
        k_static = None
        class_dims = lshape[1:] if len(lshape) > 2 else lshape
        if all(isinstance(d, int) for d in class_dims):
            k_static = 1
            for d in class_dims:
                k_static *= int(d)  # type: ignore[arg-type]
        ctx.set_info(scores2d, logit_type, (batch, k_static))
    shape2d = ctx.shape(scores2d)
    num_classes = shape2d[1] if shape2d else None
    if score == "weights":
        target = _free_name(ctx, "target_weights")
        # K stays symbolic when the logits were flattened: ONNX shape inference and onnxruntime can disagree
        # on upstream sizes (ceil_mode pools), and a wrong static K would reject every feed.
        k_dim = num_classes if scores2d == logits else "num_classes"
        new_inputs.append(_value_info(target, logit_type, (batch, k_dim)))
        seed = target
        class_out = None
    else:
        target = _free_name(ctx, "target_class")
        new_inputs.append(_value_info(target, TensorProto.INT64, (batch,)))
        top1 = ctx.op("ArgMax", scores2d, axis=1, keepdims=0)
        negative = ctx.op("Less", target, ctx.const(0, "int64"))
        cls = ctx.op("Where", negative, top1, target)
        k = (
            ctx.const(num_classes, "int64")
            if isinstance(num_classes, int)
            else ctx.op("Gather", ctx.op("Shape", scores2d), ctx.const(1, "int64"), axis=0)
        )
        classes = ctx.op("Range", ctx.const(0, "int64"), k, ctx.const(1, "int64"))
        hot = ctx.op("Equal", ctx.op("Unsqueeze", cls, ctx.ints([1])), classes)
        seed = ctx.op("Cast", hot, to=logit_type)
        class_out = _free_name(ctx, "target_class_used")
        ctx.nodes.append(helper.make_node("Identity", [cls], [class_out], name=class_out))
        new_outputs.append(_value_info(class_out, TensorProto.INT64, (batch,)))
    score_tensor = scores2d
    if score == "probability":
        score_tensor = _free_name(ctx, f"{logits}_softmax")
        forward_nodes.append(
            helper.make_node("Softmax", [scores2d], [score_tensor], axis=1, name=score_tensor)
        )
        ctx.set_info(score_tensor, logit_type, shape2d)
    score_out = _free_name(ctx, "target_score")
    ctx.nodes.append(
        helper.make_node(
            "ReduceSum",
            [ctx.op("Mul", score_tensor, seed), ctx.ints([1])],
            [score_out],
            keepdims=0,
            name=score_out,
        )
    )
    new_outputs.append(_value_info(score_out, logit_type, (batch,)))

    # --- sweeps and reverse pass --------------------------------------------------------------------
    sweep = _sweep(ctx, forward_nodes, list(wrt), score_tensor)
    contributions: dict[str, list[str]] = {score_tensor: [seed]} if score_tensor in sweep.active else {}
    final: dict[str, str] = {}

    def gradient(t: str) -> str | None:
        if t in final:
            return final[t]
        parts = contributions.get(t)
        if not parts:
            return None
        final[t] = ctx.sum_all(parts)
        return final[t]

    n_before = len(ctx.nodes)
    for node in reversed(forward_nodes):
        if not any(o in sweep.active for o in node.output):
            continue
        need = [bool(i) and i in sweep.active for i in node.input]
        if not any(need):
            continue
        gys = [gradient(o) if o in sweep.active else None for o in node.output]
        if all(g is None for g in gys):
            continue
        if not _has_rule(node) or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            raise _unsupported_node(node, sweep)
        gxs = RULES[node.op_type](ctx, node, gys, need)
        for inp, wanted, gx in zip(node.input, need, gxs, strict=False):
            if wanted and gx is not None:
                if inp in final:
                    raise UnsupportedOpError(
                        f"the graph is not topologically sorted: '{inp}' is used after node "
                        f"'{node_label(node)}' consumed its gradient; re-save the model with sorted nodes"
                    )
                contributions.setdefault(inp, []).append(gx)

    grad_outputs: dict[str, str] = {}
    for t in dict.fromkeys(wrt):
        g = gradient(t)
        if g is None:
            g = ctx.zeros_like(t)  # the score does not depend on t
        out = _free_name(ctx, f"grad__{t}")
        ctx.nodes.append(helper.make_node("Identity", [g], [out], name=out))
        new_outputs.append(_value_info(out, ctx.dtype(t), ctx.shape(t)))
        grad_outputs[t] = out

    # --- assemble -----------------------------------------------------------------------------------
    if ctx.min_opset > opset:
        roi = [n for n in forward_nodes if n.op_type == "RoiAlign"]
        if roi:
            raise UnsupportedOpError(
                f"the backward graph needs opset {ctx.min_opset} but node '{node_label(roi[0])}' (RoiAlign) "
                f"changes meaning there; re-export the model at opset {ctx.min_opset} or newer"
            )
        for imp in work.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = ctx.min_opset
    del graph.node[:]
    graph.node.extend(forward_nodes)
    graph.node.extend(ctx.nodes)
    graph.initializer.extend(ctx.initializers)
    graph.input.extend(new_inputs)
    graph.output.extend(new_outputs)
    return GradientGraph(
        model=work,
        target_input=target,
        grad_outputs=grad_outputs,
        score_kind=score,
        score_output=score_out,
        class_output=class_out,
        backward_nodes=len(ctx.nodes) - n_before,
    )


def check_differentiable(model: onnx.ModelProto, logits: str, wrt: Sequence[str]) -> list[str]:
    """Why gradients of the logits w.r.t. ``wrt`` cannot be built (one line each); empty when they can."""
    from onnxcfp.errors import OnnxcfpError

    try:
        work, opset = _prepare(model)
    except OnnxcfpError as exc:
        return [str(exc)]
    ctx = GradContext(work, opset)
    sweep = _sweep(ctx, list(work.graph.node), list(wrt), logits)
    problems = [
        str(_unsupported_node(node, sweep))
        for node in work.graph.node
        if any(o in sweep.active for o in node.output)
        and any(i in sweep.active for i in node.input)
        and not _has_rule(node)
    ]
    if problems:
        return problems
    try:
        add_gradients(model, logits, wrt)
    except OnnxcfpError as exc:
        return [str(exc)]
    return []
