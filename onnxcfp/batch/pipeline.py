"""The per-clip work of a batch, the same in a local worker process and in a Dask task.

A ``ClipPipeline`` says how to build the per-process state once (an ``Explainer``: graph + session), how to
decode a clip, and how to explain one decoded clip into a folder. ``explain_one`` wraps it with the atomic
folder protocol of ``store.py`` and turns any error into a "failed" summary with a one-line reason."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from onnxcfp.batch.jobs import ClipJob, ClipSummary, one_line
from onnxcfp.batch.store import new_temp_dir, publish, sha256_file, write_manifest
from onnxcfp.errors import ModelLoadError


@runtime_checkable
class ClipPipeline(Protocol):
    """What a batch runs for each clip. Must be picklable (it is sent to every worker once)."""

    def cache_key(self) -> str:
        """Identifies the state ``build`` makes: workers keep one state per key."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of model + options, stored in manifests: ``--resume`` reuses a clip's
        outputs only when it matches."""
        ...

    def build(self) -> Any:
        """The per-process state (e.g. an Explainer). Called once per worker process."""
        ...

    def decode(self, job: ClipJob) -> Any:
        """Read the clip (raises OnnxcfpError, e.g. VideoReadError, when it cannot)."""
        ...

    def explain(self, state: Any, decoded: Any, job: ClipJob, folder: Path) -> Mapping[str, Any]:
        """Explain the decoded clip, write its outputs into ``folder`` and return its summary fields
        (predicted, predicted_name, target, score, kept: {layer: count}, any extra small values)."""
        ...


_STATES: dict[str, Any] = {}
_STATES_LOCK = threading.Lock()


def worker_state(pipeline: ClipPipeline) -> Any:
    """The process-wide state for this pipeline, built on first use. This is the worker-local cache that
    makes a Dask worker (or a local worker process) build its session once, not once per task."""
    key = pipeline.cache_key()
    with _STATES_LOCK:
        if key not in _STATES:
            _STATES[key] = pipeline.build()
        return _STATES[key]


_SUMMARY_FIELDS = ("predicted", "predicted_name", "target", "score")


def _summary_from(job: ClipJob, fields_: Mapping[str, Any], seconds: float, attempts: int) -> ClipSummary:
    kept = fields_.get("kept") or {}
    extra = {k: v for k, v in fields_.items() if k not in (*_SUMMARY_FIELDS, "kept", "clip", "time")}
    return ClipSummary(
        clip=job.clip,
        source=job.source,
        output=job.name,
        status="ok",
        predicted=None if fields_.get("predicted") is None else int(fields_["predicted"]),
        predicted_name=fields_.get("predicted_name"),
        target=None if fields_.get("target") is None else int(fields_["target"]),
        score=None if fields_.get("score") is None else float(fields_["score"]),
        kept=tuple((str(k), int(v)) for k, v in dict(kept).items()),
        seconds=round(seconds, 6),
        attempts=attempts,
        extra=tuple(sorted((str(k), v) for k, v in extra.items() if _small_json(v))),
    )


def _small_json(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and len(v) <= 16 and all(_small_json(x) for x in v)
    )


def failed_summary(job: ClipJob, error: str, seconds: float | None = None, attempts: int = 1) -> ClipSummary:
    return ClipSummary(
        clip=job.clip, source=job.source, output=job.name, status="failed", error=error,
        seconds=None if seconds is None else round(seconds, 6), attempts=attempts,
    )


def explain_one(
    pipeline: ClipPipeline,
    job: ClipJob,
    out_root: Path,
    fingerprint: Mapping[str, Any],
    decoded: Any = None,
    attempts: int = 1,
) -> ClipSummary:
    """Explain one clip into ``out_root/job.name`` atomically; never raises for a per-clip error (it is the
    returned "failed" summary). ``decoded`` is the clip already decoded (local mode decodes ahead in the
    main process); None makes this call decode it (Dask mode: the worker reads the shared path)."""
    start = time.perf_counter()
    temp: Path | None = None
    try:
        state = worker_state(pipeline)
        if decoded is None:
            decoded = pipeline.decode(job)
        temp = new_temp_dir(out_root, job.name)
        fields_ = pipeline.explain(state, decoded, job, temp)
        summary = _summary_from(job, fields_, time.perf_counter() - start, attempts)
        write_manifest(temp, job, fingerprint, summary)
        publish(temp, out_root / job.name)
        temp = None
        return summary
    except Exception as err:
        return failed_summary(job, one_line(err), time.perf_counter() - start, attempts)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


_PREPROCESSING: dict[str, Any] = {}

# Set by the local runner in each worker's environment: onnxruntime intra-op threads for that worker.
WORKER_THREADS_VAR = "ONNXCFP_WORKER_THREADS"


@dataclass(frozen=True)
class ExplainerPipeline:
    """The real pipeline: one ``onnxcfp.explain.Explainer`` per worker process; outputs are what
    ``Explanation.save(folder)`` writes (the options' formats) and the summary is ``Explanation.summary()``.

    Local mode decodes clips ahead in the main process when the model has a card (its preprocessing is
    then known without loading the graph); without a card the worker's Explainer reads the clip."""

    model: str  # absolute path; Dask workers must see the model (and its card) at this same path
    options: Any  # onnxcfp.explain.ExplainOptions (imported lazily: only workers build an Explainer)
    model_sha256: str
    card_sha256: str | None = None  # the card beside the model sets preprocessing and class names

    @classmethod
    def create(cls, model: str | Path, options: Any = None) -> ExplainerPipeline:
        from onnxcfp.explain import ExplainOptions

        path = Path(model).resolve()
        if not path.is_file():
            raise ModelLoadError(f"model {model} does not exist: give the path of an .onnx file")
        card = path.with_suffix(".json")
        return cls(
            model=str(path),
            options=options or ExplainOptions(),
            model_sha256=sha256_file(path),
            card_sha256=sha256_file(card) if card.is_file() else None,
        )

    def cache_key(self) -> str:
        key = {"model": self.model, **self.fingerprint()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        options = self.options.fingerprint() if hasattr(self.options, "fingerprint") else self.options
        # Content, not location: moving the model folder keeps --resume valid; changing a weight does not.
        return {
            "model_sha256": self.model_sha256,
            "card_sha256": self.card_sha256,
            "options": _jsonable(options),
        }

    def build(self) -> Any:
        from onnxcfp.explain import Explainer

        threads = os.environ.get(WORKER_THREADS_VAR)
        options = self.options
        if threads and options.threads is None:  # N workers sharing the cores: each gets its share
            options = replace(options, threads=int(threads))
        explainer = Explainer(self.model, options)
        return explainer

    def decode(self, job: ClipJob) -> Any:
        from onnxcfp.explain import read_card
        from onnxcfp.video import Preprocessing, read_clip

        key = self.cache_key()
        if key not in _PREPROCESSING:
            card = read_card(Path(self.model))
            _PREPROCESSING[key] = Preprocessing.from_card(card) if card is not None else None
        preprocessing = _PREPROCESSING[key]
        if preprocessing is None:
            return None  # the worker's Explainer reads it, with the preprocessing it derives from the graph
        return read_clip(job.source, preprocessing, fill=self.options.fill)

    def explain(self, state: Any, decoded: Any, job: ClipJob, folder: Path) -> Mapping[str, Any]:
        clip = decoded if decoded is not None else job.source
        explanation = state.explain(clip, label=job.label)
        explanation.save(folder)
        return explanation.summary()
