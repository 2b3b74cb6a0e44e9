"""``GradContext``: what a gradient rule sees — static shape/type facts about the forward graph, the
constants it holds, and a small emitter for backward nodes with helpers shared by many rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcfp.errors import UnsupportedOpError

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})

# One entry per axis: a number, a symbolic dim name (equal names are equal sizes), or None when unknown.
StaticShape = tuple[int | str | None, ...]


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (bytes decoded to str)."""
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        out[attr.name] = value
    return out


def node_label(node: onnx.NodeProto) -> str:
    """How errors name a node: its name, or its first output when it has none."""
    return node.name or (node.output[0] if node.output else "<unnamed>")


class GradContext:
    """Holds the forward graph's facts and collects the backward nodes and constants the rules emit.

    Names of everything emitted start with ``prefix`` and are checked against every name already in the
    model, so the backward section can never shadow a forward tensor.
    """

    def __init__(self, model: onnx.ModelProto, opset: int, prefix: str = "grad") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.min_opset = opset  # raised by rules that need newer op forms (ScatterElements add: 16)
        self._counter = 0
        self._types: dict[str, int] = {}
        self._shapes: dict[str, StaticShape | None] = {}
        self._consts: dict[str, np.ndarray] = {}
        self._shape_cache: dict[str, str] = {}
        self._int_cache: dict[tuple[int, ...], str] = {}
        self._taken: set[str] = set()
        self._collect(model)

    # ----- facts about the forward graph -------------------------------------------------------
    def _collect(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        infos = [*graph.input, *graph.output, *graph.value_info]
        for info in infos:
            tt = info.type.tensor_type
            if not info.type.HasField("tensor_type"):
                continue
            self._types[info.name] = tt.elem_type
            if tt.HasField("shape"):
                self._shapes[info.name] = tuple(
                    d.dim_value
                    if d.HasField("dim_value")
                    else (d.dim_param if d.HasField("dim_param") and d.dim_param else None)
                    for d in tt.shape.dim
                )
        for init in graph.initializer:
            self._types[init.name] = init.data_type
            self._shapes[init.name] = tuple(init.dims)
            self._consts[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        arr = numpy_helper.to_array(attr.t)
                        self._consts[node.output[0]] = arr
                        self._types[node.output[0]] = attr.t.data_type
                        self._shapes[node.output[0]] = tuple(arr.shape)
            for name in (*node.input, *node.output):
                self._taken.add(name)
            self._taken.add(node.name)
        self._taken.update(i.name for i in infos)
        self._taken.update(i.name for i in graph.initializer)

    def dtype(self, tensor: str) -> int:
        """ONNX element type of a forward tensor (float32 when shape inference could not tell)."""
        return self._types.get(tensor, TensorProto.FLOAT)

    def np_dtype(self, tensor: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(tensor)))

    def known_dtype(self, tensor: str) -> int | None:
        return self._types.get(tensor)

    def shape(self, tensor: str) -> StaticShape | None:
        """Static shape of a forward tensor, or None when even its rank is unknown."""
        return self._shapes.get(tensor)

    def rank(self, tensor: str) -> int | None:
        shp = self.shape(tensor)
        return None if shp is None else len(shp)

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The shape when every dimension is a known number, else None."""
        shp = self.shape(tensor)
        if shp is None or not all(isinstance(d, int) for d in shp):
            return None
        return tuple(int(d) for d in shp)  # type: ignore[arg-type]

    def constant(self, tensor: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output; None for anything computed at run time."""
        return self._consts.get(tensor)

    def set_info(self, tensor: str, elem_type: int, shape: StaticShape | None) -> None:
        """Record facts about a tensor the driver adds to the forward graph (score helpers)."""
        self._types[tensor] = elem_type
        if shape is not None:
            self._shapes[tensor] = shape
        self._taken.add(tensor)

    # ----- emitting ----------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def emit(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]:
        """Append one backward node; returns its output names."""
        outs = [self.fresh(op) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op + "_node"), **attrs))
        return outs

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        """Append a single-output backward node; returns its output name."""
        return self.emit(op, inputs, 1, **attrs)[0]

    def const(self, value: Any, dtype: np.dtype | type | None = None, hint: str = "const") -> str:
        """A new initializer holding ``value``."""
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A cached int64 1-D constant (axes, shapes, pads)."""
        key = tuple(int(v) for v in values)
        if key not in self._int_cache:
            self._int_cache[key] = self.const(np.array(key, dtype=np.int64), hint="ints")
        return self._int_cache[key]

    def scalar_like(self, value: float, tensor: str) -> str:
        """A 0-D constant with ``tensor``'s float dtype."""
        return self.const(np.array(value, dtype=self.np_dtype(tensor)), hint="scalar")

    def shape_of(self, tensor: str) -> str:
        """``tensor``'s shape as an int64 tensor: a constant when static, else one cached Shape node."""
        static = self.static_shape(tensor)
        if static is not None:
            return self.ints(static)
        if tensor not in self._shape_cache:
            self._shape_cache[tensor] = self.op("Shape", tensor)
        return self._shape_cache[tensor]

    def reshape_like(self, g: str, tensor: str) -> str:
        return self.op("Reshape", g, self.shape_of(tensor))

    def zeros_like(self, tensor: str) -> str:
        """Zeros with ``tensor``'s shape and dtype (ConstantOfShape, never Mul(t, 0), which is NaN at inf)."""
        value = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(tensor)))
        return self.op("ConstantOfShape", self.shape_of(tensor), value=value)

    def require_opset(self, version: int) -> None:
        self.min_opset = max(self.min_opset, version)

    def unsupported(self, node: onnx.NodeProto, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{node_label(node)}' (op {node.op_type}) cannot be differentiated: {why}; "
            "pick gradient targets that do not pass through it or re-export the model without it"
        )

    # ----- shared building blocks ----------------------------------------------------------------
    def sum_all(self, grads: Sequence[str]) -> str:
        return grads[0] if len(grads) == 1 else self.op("Sum", *grads)

    def unbroadcast(self, g: str, out: str, operand: str, g_shape: StaticShape | None = None) -> str:
        """Reduce gradient ``g`` (shaped like the broadcast output ``out``, or ``g_shape`` when given) to
        ``operand``'s shape."""
        s_out = g_shape if g_shape is not None else self.shape(out)
        s_in = self.shape(operand)
        if s_out is not None and s_in is not None and len(s_out) >= len(s_in):
            lead = len(s_out) - len(s_in)
            axes = list(range(lead))
            static_ok = True
            for i, d in enumerate(s_in):
                o = s_out[lead + i]
                if d is not None and d == o:
                    continue  # same number or same symbolic name
                if d == 1 and isinstance(o, int):
                    axes.append(lead + i)
                    continue
                static_ok = False  # unknown sizes: decide at run time
                break
            if static_ok:
                if axes:
                    g = self.op("ReduceSum", g, self.ints(axes), keepdims=1)
                return g if lead == 0 else self.reshape_like(g, operand)
        # Dynamic: axes where the operand's (left-padded) shape differs from the gradient's.
        r_out = len(g_shape) if g_shape is not None else self.rank(out)
        r_in = self.rank(operand)
        if r_out is None or r_in is None:
            raise UnsupportedOpError(
                f"cannot unbroadcast the gradient of '{out}' to '{operand}': ranks unknown; "
                "run onnx shape inference on the model or export it with static ranks"
            )
        s_t = self.op("Shape", operand)
        if r_out > r_in:
            s_t = self.op("Concat", self.ints([1] * (r_out - r_in)), s_t, axis=0)
        differs = self.op("Not", self.op("Equal", s_t, self.op("Shape", g)))
        axes_t = self.op("Reshape", self.op("NonZero", differs), self.ints([-1]))
        g = self.op("ReduceSum", g, axes_t, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", g, self.op("Shape", operand))
