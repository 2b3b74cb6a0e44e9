"""Expose intermediate tensors as graph outputs, so one onnxruntime run returns them with the logits.

Every exposed tensor becomes a graph output, and a graph output pins the tensor: onnxruntime can no
longer fuse the node that writes it with the node that reads it (Conv+BatchNorm, Conv+Relu) and must keep
its buffer until the run ends. So ``expose`` adds exactly the tensors asked for, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

from onnxcfp.errors import ConfigError


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    """Every typed tensor of the main graph: inputs, outputs, inferred value_info, initializers."""
    infos: dict[str, onnx.ValueInfoProto] = {}
    for init in graph.initializer:
        infos[init.name] = onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
    for vi in (*graph.value_info, *graph.input, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            infos[vi.name] = vi
    return infos


def _known_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of every tensor the main graph defines (graph inputs, initializers, node outputs)."""
    names = {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def unique_in_order(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` without repeats, first occurrence kept: output order must be deterministic for caching."""
    return tuple(dict.fromkeys(names))


def expose(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``tensors``, each with its inferred type and
    shape; the original outputs come first and keep their order, and tensors that already are outputs
    are not added twice. The input model is not modified.

    Raises ``ConfigError`` naming the first tensor that is not in the model's main graph.
    """
    wanted = unique_in_order(tensors)
    known = _known_tensors(model.graph)
    missing = [t for t in wanted if t not in known]
    if missing:
        raise ConfigError(
            f"cannot expose tensor {missing[0]!r}: it is not a tensor of the model's main graph "
            f"({len(missing)} unknown name(s)); pick names from the model's node outputs"
        )

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    graph = augmented.graph
    present = {o.name for o in graph.output}
    to_add = [t for t in wanted if t not in present]
    if not to_add:
        return augmented

    infos = _value_infos(graph)
    if any(t not in infos for t in to_add):
        # The model came without inferred shapes (or only partly): infer them on the copy once.
        try:
            inferred = onnx.shape_inference.infer_shapes(augmented, strict_mode=False)
        except Exception:  # inference can fail on custom domains; outputs then go untyped (ORT infers)
            inferred = augmented
        infos.update(_value_infos(inferred.graph))

    for name in to_add:
        info = infos.get(name)
        if info is None:
            # onnxruntime accepts an untyped graph output and types it itself.
            graph.output.append(onnx.ValueInfoProto(name=name))
        else:
            out = onnx.ValueInfoProto()
            out.CopyFrom(info)
            out.name = name
            out.doc_string = "exposed by onnxcfp"
            graph.output.append(out)
    return augmented
