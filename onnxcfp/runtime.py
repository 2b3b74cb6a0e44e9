"""Run a model once and capture what an explanation needs: logits, exposed activations, gradients.

One onnxruntime session per (model, outputs, gradient request, settings), built once and kept in a
bounded LRU cache, so explaining many clips with one model pays for graph optimisation once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcfp.errors import ConfigError, InputShapeError, MemoryBudgetError
from onnxcfp.gradients import add_gradients
from onnxcfp.graph.augment import expose, unique_in_order
from onnxcfp.graph.modelgraph import ModelGraph
from onnxcfp.trace import Trace

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CLASS_SCORES = ("logit", "probability")  # what a target class index is explained by
SCORES = (*CLASS_SCORES, "weights")  # "weights": the target is a vector of per-class weights
_OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are built. ``provider="auto"`` uses CUDA when its provider is installed and a session
    really runs on it, else the CPU; ``intra_threads``/``inter_threads`` None leave onnxruntime's default;
    ``memory_budget`` (bytes) bounds what the exposed tensors of one ``run`` may take."""

    provider: str = "auto"
    intra_threads: int | None = None
    inter_threads: int | None = None
    optimization: str = "all"
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {', '.join(PROVIDERS)}, not {self.provider!r}")
        if self.optimization not in _OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"optimization must be one of {', '.join(_OPTIMIZATION_LEVELS)}, not {self.optimization!r}"
            )
        for name in ("intra_threads", "inter_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, not {value!r}")
        if self.memory_budget is not None and (
            not isinstance(self.memory_budget, int) or self.memory_budget < 1
        ):
            raise ConfigError(f"memory_budget must be a positive number of bytes, not {self.memory_budget!r}")


# ---------------------------------------------------------------------------------------------- providers


def _tiny_probe_model() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "cuda_probe", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """(usable, why): whether a session really runs on the CUDA provider here. Probed once per process.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU, and creating a session
    there prints an error to stderr and silently falls back to the CPU; so check the driver first
    (quietly), then run a one-node session and look at the providers it actually got.
    """
    if _CUDA not in ort.get_available_providers():
        return False, "the installed onnxruntime has no CUDA provider"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        try:
            ctypes.CDLL("nvcuda.dll")
        except OSError:
            return False, "no NVIDIA driver (libcuda) found"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # A failed provider load is reported through the default logger, not the session's: silence it for
    # the probe only (onnxruntime has no getter, so it is restored to its default, warnings).
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_tiny_probe_model(), options, providers=[_CUDA, _CPU])
        if _CUDA not in session.get_providers():
            return False, "the CUDA provider failed to load (CUDA/cuDNN libraries missing?)"
        out = session.run(None, {"x": np.array([-1, 0, 1, 2], np.float32)})[0]
        if not np.array_equal(out, [0, 0, 1, 2]):
            return False, "a CUDA test run returned wrong values"
    except Exception as err:
        return False, f"a CUDA test session failed: {str(err).splitlines()[0] if str(err) else err!r}"
    finally:
        ort.set_default_logger_severity(2)
    return True, "CUDA test session ran"


@functools.cache
def _log_provider_choice(chosen: str, why: str) -> None:
    """Says once per process (per distinct choice) which provider ``auto`` picked and why."""
    log.info("onnxcfp runtime: using %s (%s)", chosen, why)


def resolve_providers(config: RuntimeConfig) -> tuple[str, ...]:
    """The onnxruntime provider list for ``config``. Raises ConfigError when "cuda" is asked for and
    cannot run here."""
    if config.provider == "cpu":
        return (_CPU,)
    usable, why = cuda_status()
    if config.provider == "cuda":
        if not usable:
            raise ConfigError(f"provider 'cuda' cannot run here: {why}; use provider 'cpu' or 'auto'")
        return (_CUDA, _CPU)
    _log_provider_choice(_CUDA if usable else _CPU, why)
    return (_CUDA, _CPU) if usable else (_CPU,)


# ------------------------------------------------------------------------------------------ session cache


@dataclass(frozen=True, eq=False)
class PreparedSession:
    """A built session and how to read it: ``outputs`` are the session's output names in the order
    ``run`` asks for them; ``target_input`` is the gradient graph's class input (None without gradients);
    ``grad_outputs`` maps each gradient tensor to the output holding d score / d tensor."""

    session: ort.InferenceSession
    source_model: onnx.ModelProto  # held so the id() in the cache key cannot be reused while cached
    outputs: tuple[str, ...]
    target_input: str | None
    grad_outputs: dict[str, str]
    class_output: str | None  # the class index [N] each clip's score used (gradient graphs only)
    providers: tuple[str, ...]


class SessionCache:
    """Bounded LRU of built sessions. Keys use ``id(model)``; each entry keeps its model alive, so an
    id cannot be recycled by another model while its entry exists (models must not be mutated after
    their first run)."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, PreparedSession] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0
        self.hits = 0

    def get(self, key: tuple) -> PreparedSession | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return entry

    def put(self, key: tuple, entry: PreparedSession) -> None:
        with self._lock:
            self.builds += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.builds = 0
            self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)


SESSIONS = SessionCache()


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[config.optimization]
    if config.intra_threads is not None:
        options.intra_op_num_threads = config.intra_threads
    if config.inter_threads is not None:
        options.inter_op_num_threads = config.inter_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    # Warnings such as "initializer X appears in graph inputs" are noise for an explainer's user.
    options.log_severity_level = 3
    return options


def _build_session(
    model: onnx.ModelProto, config: RuntimeConfig, providers: tuple[str, ...]
) -> tuple[ort.InferenceSession, tuple[str, ...]]:
    session = ort.InferenceSession(model.SerializeToString(), session_options(config), providers=providers)
    return session, tuple(session.get_providers())


def prepare_session(
    graph: ModelGraph,
    activations: Sequence[str] = (),
    gradients: Sequence[str] = (),
    score: str = "logit",
    config: RuntimeConfig | None = None,
) -> PreparedSession:
    """The cached session returning ``[logits, *activations, *d score/d gradients]``; built on a miss."""
    config = config or RuntimeConfig()
    logits = logits_tensor(graph)
    acts = unique_in_order(activations)
    grads = unique_in_order(gradients)
    providers = resolve_providers(config)
    key = (
        id(graph.model),
        logits,
        acts,
        grads,
        score if grads else None,
        providers,
        config.intra_threads,
        config.inter_threads,
        config.optimization,
    )
    entry = SESSIONS.get(key)
    if entry is not None:
        return entry

    class_output: str | None = None
    if grads:
        grad_graph = add_gradients(graph.model, logits, list(grads), score=score)
        base, target_input = grad_graph.model, grad_graph.target_input
        grad_outputs = {t: grad_graph.grad_outputs[t] for t in grads}
        class_output = grad_graph.class_output
    else:
        base, target_input, grad_outputs = graph.model, None, {}
    forward_outputs = unique_in_order((logits, *acts))
    outputs = (*forward_outputs, *grad_outputs.values(), *([class_output] if class_output else []))
    augmented = expose(base, outputs)
    session, used = _build_session(augmented, config, providers)
    entry = PreparedSession(
        session=session,
        source_model=graph.model,
        outputs=outputs,
        target_input=target_input,
        grad_outputs=grad_outputs,
        class_output=class_output,
        providers=used,
    )
    SESSIONS.put(key, entry)
    return entry


# --------------------------------------------------------------------------------- validation and memory


def logits_tensor(graph: ModelGraph) -> str:
    """The class-score tensor: the head's pre-softmax logits, else the model's first output."""
    if graph.head is not None:
        return graph.head.logits
    return graph.model.graph.output[0].name


def _shape_text(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"


def validate_clip(graph: ModelGraph, clip: np.ndarray) -> None:
    """Raise InputShapeError (one line, expected vs given) when ``clip`` cannot be fed to the model.

    A batch dimension fixed at 1 accepts any N (clips then run one by one); other static dims must match.
    """
    vin = graph.video_input
    expected_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vin.elem_type))
    expected = (
        f"model input {vin.name!r} expects {expected_dtype.name} {_shape_text(vin.shape)} ({vin.layout})"
    )
    if not isinstance(clip, np.ndarray):
        raise InputShapeError(f"{expected}, given a {type(clip).__name__}; pass a NumPy array")
    given = f"given {clip.dtype.name} {_shape_text(clip.shape)}"
    if clip.dtype != expected_dtype:
        raise InputShapeError(f"{expected}, {given}; convert the clip with .astype({expected_dtype.name!r})")
    if clip.ndim != len(vin.shape):
        raise InputShapeError(f"{expected}, {given}; add or remove axes to match {vin.layout}")
    if clip.shape[0] < 1 or any(s < 1 for s in clip.shape):
        raise InputShapeError(f"{expected}, {given}; the clip tensor is empty")
    for axis, (want, have) in enumerate(zip(vin.shape, clip.shape, strict=True)):
        if not isinstance(want, int):
            continue
        if axis == 0 and want == 1:
            continue  # fixed batch of 1: run clip by clip
        if want != have:
            raise InputShapeError(
                f"{expected}, {given}; {vin.layout[axis]} must be {want} (resize or resample the clip)"
            )


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in (*g.value_info, *g.input, *g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every typed tensor's shape, None where a dim is not a number."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
            )
    return shapes


# (id(model), input shape) -> (model, shapes); the entry holds the model so its id stays unique.
_CONCRETE_SHAPES: OrderedDict[tuple, tuple[onnx.ModelProto, dict[str, tuple]]] = OrderedDict()


def _concrete_shapes(model: onnx.ModelProto, input_name: str, input_shape: tuple) -> dict[str, tuple]:
    """Shapes of every tensor when the input is ``input_shape`` (onnx shape inference on a copy)."""
    key = (id(model), input_name, input_shape)
    cached = _CONCRETE_SHAPES.get(key)
    if cached is not None and cached[0] is model:
        return cached[1]
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for vi in fixed.graph.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    shapes = _static_shapes(inferred)
    if any(None in shape for shape in shapes.values()):
        # onnx's inference loses sizes behind Shape->Gather->Slice/Reshape arithmetic (torch's legacy
        # exporter writes those for split/view); onnxruntime's symbolic inference evaluates them.
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            symbolic = SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
        except Exception as err:  # its op coverage is partial; keep what onnx found
            log.debug("symbolic shape inference failed: %s", err)
        else:
            for name, shape in _static_shapes(symbolic).items():
                if None not in shape:
                    shapes[name] = shape
    _CONCRETE_SHAPES[key] = (model, shapes)
    while len(_CONCRETE_SHAPES) > 4:
        _CONCRETE_SHAPES.popitem(last=False)
    return shapes


def tensor_shapes(graph: ModelGraph, tensors: Sequence[str], input_shape: Sequence[int]) -> dict:
    """Concrete shape of each tensor for a given input shape. Symbolic dims named like an input dim take
    that dim's size; anything still unknown is found by shape inference with the input fixed."""
    vin = graph.video_input
    bindings = {d: int(s) for d, s in zip(vin.shape, input_shape, strict=True) if isinstance(d, str) and d}
    result: dict[str, tuple[int, ...]] = {}
    unresolved = []
    for name in tensors:
        shape = graph.shapes.get(name)
        if name == vin.name:
            shape = tuple(input_shape)
        if shape is None:
            unresolved.append(name)
            continue
        dims = [d if isinstance(d, int) else bindings.get(d) if isinstance(d, str) else None for d in shape]
        if any(d is None for d in dims):
            unresolved.append(name)
        else:
            result[name] = tuple(int(d) for d in dims)
    if unresolved:
        inferred = _concrete_shapes(graph.model, vin.name, tuple(int(s) for s in input_shape))
        for name in unresolved:
            shape = inferred.get(name)
            if shape is None or any(d is None for d in shape):
                raise ConfigError(
                    f"cannot size tensor {name!r} for input {_shape_text(input_shape)}: shape inference "
                    "leaves it unknown; drop memory_budget or expose other tensors"
                )
            result[name] = shape
    return result


def exposed_bytes(graph: ModelGraph, tensors: Sequence[str], input_shape: Sequence[int]) -> int:
    """Bytes the (distinct) ``tensors`` take for one run on an input of ``input_shape``."""
    names = unique_in_order(tensors)
    shapes = tensor_shapes(graph, names, input_shape)
    types = _elem_types(graph.model)
    total = 0
    for name in names:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types.get(name, onnx.TensorProto.FLOAT)))
        total += math.prod(shapes[name]) * itemsize.itemsize
    return total


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ------------------------------------------------------------------------------------------------- run


def _targets(target, n: int, num_classes: int | None, score: str) -> np.ndarray:
    """The gradient graph's target input for n clips: int64 [n] (-1 = top-1) or float [n, K] weights."""
    if score == "weights":
        if target is None:
            raise ConfigError("score 'weights' needs target: a weight vector over classes ([K] or [N, K])")
        weights = np.asarray(target, dtype=np.float32)
        if weights.ndim == 1:
            weights = np.broadcast_to(weights, (n, weights.shape[0]))
        if weights.ndim != 2 or weights.shape[0] != n or (num_classes and weights.shape[1] != num_classes):
            raise ConfigError(
                f"score 'weights' needs target of shape [{num_classes}] or [{n}, {num_classes}], "
                f"given {list(np.shape(target))}"
            )
        return np.ascontiguousarray(weights)
    if target is None:
        return np.full(n, -1, dtype=np.int64)
    classes = np.atleast_1d(np.asarray(target))
    if not np.issubdtype(classes.dtype, np.integer) or classes.ndim != 1:
        raise ConfigError(f"target must be a class index or one index per clip, given {target!r}")
    if classes.shape[0] == 1:
        classes = np.repeat(classes, n)
    if classes.shape[0] != n:
        raise ConfigError(f"target gives {classes.shape[0]} class indices for {n} clips; give 1 or {n}")
    if num_classes is not None and (classes.min() < 0 or classes.max() >= num_classes):
        raise ConfigError(f"target class indices must be in [0, {num_classes}), given {classes.tolist()}")
    return classes.astype(np.int64)


def run(
    graph: ModelGraph,
    clip: np.ndarray,
    activations: Sequence[str] = (),
    gradients: Sequence[str] = (),
    target: int | Sequence[int] | None = None,
    score: str = "logit",
    config: RuntimeConfig | None = None,
) -> Trace:
    """One forward (and, with ``gradients``, backward) pass over the N clips of ``clip``.

    Returns logits ``[N, K]``, the ``activations`` and d score/d ``gradients`` keyed by tensor name (each
    ``[N, ...]``). ``target`` None explains each clip's top-1 class. Models with a batch dim fixed at 1
    run clip by clip (results concatenated), others in one run.
    """
    config = config or RuntimeConfig()
    if score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    validate_clip(graph, clip)
    acts = unique_in_order(activations)
    grads = unique_in_order(gradients)
    vin = graph.video_input
    n = clip.shape[0]
    num_classes = graph.head.num_classes if graph.head is not None else None
    target_feed = _targets(target, n, num_classes, score) if grads else None

    if config.memory_budget is not None:
        need = exposed_bytes(graph, acts, clip.shape) + exposed_bytes(graph, grads, clip.shape)
        if need > config.memory_budget:
            raise MemoryBudgetError(
                f"the {len(acts)} activation(s) and {len(grads)} gradient(s) requested take "
                f"{need} bytes ({_format_bytes(need)}) for input {_shape_text(clip.shape)}, over the "
                f"memory budget of {config.memory_budget} bytes ({_format_bytes(config.memory_budget)}); "
                "use fewer clips, a smaller depth, or a larger budget"
            )

    prepared = prepare_session(graph, acts, grads, score, config)
    # Graph inputs "exposed" as outputs come straight back from onnxruntime, so no special case here.
    batch_dim = vin.shape[0]
    chunks = [slice(i, i + 1) for i in range(n)] if batch_dim == 1 else [slice(0, n)]
    pieces: list[list[np.ndarray]] = []
    for part in chunks:
        feed = {vin.name: np.ascontiguousarray(clip[part])}
        if prepared.target_input is not None and target_feed is not None:
            feed[prepared.target_input] = target_feed[part]
        pieces.append(prepared.session.run(list(prepared.outputs), feed))
    values = [np.concatenate(col, axis=0) if len(chunks) > 1 else col[0] for col in zip(*pieces, strict=True)]
    by_name = dict(zip(prepared.outputs, values, strict=True))

    logits = np.asarray(by_name[logits_tensor(graph)])
    logits = logits.reshape(n, -1)  # heads that keep 1x1x1 spatial dims (conv heads) flatten to [N, K]
    trace_target: np.ndarray | None = None
    if grads and score != "weights":
        assert target_feed is not None
        if prepared.class_output is not None:  # what the graph's in-graph ArgMax really chose
            trace_target = np.asarray(by_name[prepared.class_output]).reshape(n).astype(np.int64)
        else:
            trace_target = np.where(target_feed < 0, logits.argmax(axis=1), target_feed).astype(np.int64)
    return Trace(
        logits=logits,
        activations={t: by_name[t] for t in acts},
        gradients={t: by_name[prepared.grad_outputs[t]] for t in grads},
        target=trace_target,
        score_kind=score,
    )
