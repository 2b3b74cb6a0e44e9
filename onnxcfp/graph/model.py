"""Loading an ONNX model safely: parse, external data inside the model's folder only, checker, IR version
that the installed onnxruntime accepts, opset range, shape inference with symbolic dims. Also
``GraphIndex``: producers, consumers and constant folding of weight chains, shared by the graph layer."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from onnxcfp.errors import ModelLoadError, UnsafeExternalDataError

MIN_OPSET = 11
MAX_OPSET = 21
ModelSource = str | os.PathLike | bytes | onnx.ModelProto

Dim = int | str | None


def load_model(src: ModelSource) -> onnx.ModelProto:
    """Load, check and shape-infer a model from a path, bytes or ``ModelProto`` (which is copied, never
    modified). Raises ``ModelLoadError`` (or ``UnsafeExternalDataError``) with a one-line message."""
    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
        _load_external_data(model, base_dir=None, what="the in-memory model")
        what = "the in-memory model"
    elif isinstance(src, bytes | bytearray):
        model = _parse(bytes(src), "the given bytes")
        _load_external_data(model, base_dir=None, what="the given bytes")
        what = "the given bytes"
    else:
        path = Path(src)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}; check the path")
        if not path.is_file():
            raise ModelLoadError(f"not a file: {path}; give the path of a .onnx file")
        model = _parse(path.read_bytes(), str(path))
        _load_external_data(model, base_dir=path.resolve().parent, what=str(path))
        what = str(path)
    _check_opset(model, what)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as err:
        raise ModelLoadError(f"{what} fails the ONNX checker: {_one_line(err)}") from err
    model.ir_version = min(model.ir_version, max_ir_version_supported())
    try:
        # data_prop folds Shape->Gather->Concat chains so reshapes written with dynamic shapes still get
        # static output dims; unknown dims come back as generated symbolic names.
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except Exception as err:  # onnx raises InferenceError, ValidationError or RuntimeError here
        raise ModelLoadError(f"shape inference failed on {what}: {_one_line(err)}") from err
    return model


@functools.lru_cache(maxsize=1)
def max_ir_version_supported() -> int:
    """Highest ONNX IR version the installed onnxruntime creates a session for.

    onnx >= 1.23 writes IR 14 while onnxruntime 1.31 refuses anything above 13, and the limit moves with
    each onnxruntime release, so instead of a version table we ask onnxruntime itself: build a one-node
    model at each IR version from the newest down and keep the first one it accepts. Lowering the IR
    version of a float model is safe: the IR versions since 10 only add new data types and metadata."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # silence the refusal messages of the probe
    for ir in range(onnx.IR_VERSION, 6, -1):
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime raises its own Fail/InvalidGraph types for an unsupported IR
            continue
        return ir
    return 7


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"{what} is not a valid ONNX model (truncated or another format)") from err
    # Random bytes can parse as a protobuf with only unknown fields: an ONNX model has an IR version and
    # a graph with at least one node.
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{what} is not a valid ONNX model (truncated or another format)")
    return model


def _external_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None, what: str) -> None:
    """Read every external-data tensor into the model, refusing any location outside ``base_dir``:
    absolute paths, ``..`` components and symlinks that resolve elsewhere."""
    tensors = list(_external_tensors(model))
    if not tensors:
        return
    if base_dir is None:
        raise ModelLoadError(f"{what} keeps weights in external files; load the model from its file path")
    root = base_dir.resolve()
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        rel = Path(location)
        if (
            not location
            or rel.is_absolute()
            or Path(os.path.normpath(location)).is_absolute()
            or (".." in rel.parts or location.startswith(("/", "\\")))
        ):
            raise UnsafeExternalDataError(
                f"external data location {location!r} of tensor {tensor.name!r} escapes the model's folder;"
                " keep weight files next to the model"
            )
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise UnsafeExternalDataError(
                f"external data {location!r} of tensor {tensor.name!r} resolves outside the model's folder"
                " (symlink?); keep weight files next to the model"
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file {location!r} of tensor {tensor.name!r} is missing")
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        with open(target, "rb") as fh:
            fh.seek(offset)
            raw = fh.read(int(length)) if length is not None else fh.read()
        if length is not None and len(raw) != int(length):
            raise ModelLoadError(
                f"external data file {location!r} is shorter than tensor {tensor.name!r} needs"
            )
        tensor.raw_data = raw
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _check_opset(model: onnx.ModelProto, what: str) -> None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and not MIN_OPSET <= op.version <= MAX_OPSET:
            raise ModelLoadError(
                f"{what} uses ONNX opset {op.version}; onnxcfp supports opsets {MIN_OPSET}-{MAX_OPSET}:"
                f" convert it with onnx.version_converter.convert_version(model, {MAX_OPSET})"
            )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def opset_version(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return MIN_OPSET


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Every tensor with an inferred (or declared) shape: ints when static, names when symbolic."""
    shapes: dict[str, tuple[Dim, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims: list[Dim] = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shapes[vi.name] = tuple(dims)
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


class GraphIndex:
    """Who produces and who consumes each tensor, unique node names, and constant folding of the chains
    weights arrive through (initializer, Constant, Identity, Cast, DequantizeLinear, Reshape, Transpose,
    Squeeze/Unsqueeze)."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[Dim, ...]] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = opset_version(model)
        self.shapes = value_shapes(model) if shapes is None else shapes
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.node_names: dict[int, str] = {}
        used: set[str] = set()
        for i, node in enumerate(self.graph.node):
            base = node.name or f"{node.op_type}_{i}"
            name = base
            k = 1
            while name in used:  # exporters sometimes repeat names; ours must be unique
                name = f"{base}_{k}"
                k += 1
            used.add(name)
            self.node_names[id(node)] = name
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_inputs = [vi.name for vi in self.graph.input if vi.name not in self.initializers]
        self._constants: dict[str, np.ndarray | None] = {}

    def name_of(self, node: onnx.NodeProto) -> str:
        return self.node_names[id(node)]

    def shape(self, tensor: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(tensor)

    def constant(self, tensor: str) -> np.ndarray | None:
        """The tensor's value when it is a compile-time constant, else None."""
        if tensor in self._constants:
            return self._constants[tensor]
        self._constants[tensor] = None  # guards cycles in malformed graphs
        value = self._fold(tensor)
        self._constants[tensor] = value
        return value

    def _fold(self, tensor: str) -> np.ndarray | None:
        if not tensor:
            return None
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None:
            return None
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            if "value" in attrs:
                return numpy_helper.to_array(attrs["value"])
            for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
                if key in attrs:
                    return np.asarray(attrs[key], dtype=dtype)
            for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
                if key in attrs:
                    return np.asarray(list(attrs[key]), dtype=dtype)
            return None
        if op == "Shape" or (op in ("Gather", "Slice") and self._is_shape_of(node.input[0])):
            return self._fold_shape(node, attrs)
        args = [self.constant(i) if i else None for i in node.input]
        if not args or args[0] is None:
            return None
        x = args[0]
        if op in _ARITHMETIC:
            if any(a is None for a in args):
                return None
            return _ARITHMETIC[op](*args)
        if op == "Concat":
            if any(a is None for a in args):
                return None
            return np.concatenate([np.atleast_1d(a) for a in args], axis=int(attrs.get("axis", 0)))
        if op == "Identity":
            return x
        if op == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op == "DequantizeLinear":
            scale = args[1]
            if scale is None:
                return None
            zero = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), dtype=x.dtype)
            axis = int(attrs.get("axis", 1))
            xf = x.astype(np.float32)
            if scale.ndim == 1 and scale.size > 1 and x.ndim > 0:
                shape = [1] * x.ndim
                shape[axis % x.ndim] = scale.size
                scale = scale.reshape(shape)
                zero = zero.reshape(shape) if zero.ndim == 1 else zero
            return ((xf - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)
        if op == "Transpose":
            perm = attrs.get("perm")
            return np.transpose(x, perm) if perm is not None else np.transpose(x)
        if op == "Reshape":
            if args[1] is None:
                return None
            target = [int(d) if d != 0 else x.shape[i] for i, d in enumerate(args[1])]
            return x.reshape(target)
        if op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes") if "axes" in attrs else (args[1] if len(args) > 1 else None)
            if op == "Squeeze":
                return np.squeeze(x, axis=tuple(int(a) for a in axes)) if axes is not None else np.squeeze(x)
            if axes is None:
                return None
            out = x
            rank = x.ndim + len(axes)
            for a in sorted(int(a) % rank for a in axes):
                out = np.expand_dims(out, a)
            return out
        return None

    def _is_shape_of(self, tensor: str) -> bool:
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "Shape"

    def _fold_shape(self, node: onnx.NodeProto, attrs: dict) -> np.ndarray | None:
        """Shape, and Gather/Slice of a Shape, from the inferred shapes: torch's legacy exporter computes
        split sizes as ``Shape -> Gather -> Add -> Div``; only the picked dims need to be static."""
        shape_node = node if node.op_type == "Shape" else self.producer[node.input[0]]
        dims = self.shape(shape_node.input[0])
        if dims is None:
            return None
        shape_attrs = {a.name: helper.get_attribute_value(a) for a in shape_node.attribute}
        rank = len(dims)
        start = int(shape_attrs.get("start", 0))
        end = int(shape_attrs.get("end", rank))
        picked: list = list(dims[slice(start, end)])
        if node.op_type == "Gather":
            idx = self.constant(node.input[1])
            if idx is None:
                return None
            picked_arr = np.asarray(picked, dtype=object)[idx.astype(np.int64)]
            picked = np.atleast_1d(picked_arr).tolist()
            scalar = idx.ndim == 0
        elif node.op_type == "Slice":
            args = [self.constant(i) if i else None for i in node.input[1:5]]
            if (
                args[0] is None
                or args[1] is None
                or (len(args) > 2 and args[2] is not None and list(args[2]) != [0])
            ):
                return None
            step = int(args[3][0]) if len(args) > 3 and args[3] is not None else 1
            picked = picked[slice(int(args[0][0]), int(args[1][0]), step)]
            scalar = False
        else:
            scalar = False
        if not all(isinstance(d, int) for d in picked):
            return None
        out = np.asarray(picked, dtype=np.int64)
        return out.reshape(()) if scalar else out


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # ONNX Div truncates toward zero on integers; numpy's // floors.
    if np.issubdtype(np.result_type(a, b), np.integer):
        return (np.trunc(np.asarray(a, np.float64) / np.asarray(b, np.float64))).astype(np.result_type(a, b))
    return np.divide(a, b)


_ARITHMETIC = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _int_div,
}
