"""``batch_explain``: explain every clip under some inputs into one folder per clip plus summary files, on
local worker processes or on a Dask cluster, resumable and safe to interrupt."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxcfp.batch.jobs import ClipJob, ClipSummary, discover_clips, read_labels
from onnxcfp.batch.local import run_local
from onnxcfp.batch.pipeline import ClipPipeline, ExplainerPipeline
from onnxcfp.batch.store import remove_leftovers, verify_clip_folder
from onnxcfp.batch.summary import SummaryWriter
from onnxcfp.errors import ConfigError


@dataclass(frozen=True)
class BatchReport:
    """What a batch did. ``clips`` in discovery order (only those finished when interrupted)."""

    out: Path
    clips: tuple[ClipSummary, ...]
    total: int  # clips discovered; more than len(clips) when --fail-fast stopped the batch
    wall_seconds: float
    mode: str  # "local" | "dask"
    stats: Mapping[str, Any]

    def count(self, status: str) -> int:
        return sum(1 for c in self.clips if c.status == status)

    @property
    def failed(self) -> tuple[ClipSummary, ...]:
        return tuple(c for c in self.clips if c.status == "failed")

    @property
    def exit_code(self) -> int:
        """1 when any clip failed (or fail-fast stopped the batch), else 0. (Ctrl-C raises instead: 130.)"""
        return 1 if self.failed or len(self.clips) < self.total else 0


@contextlib.contextmanager
def _no_sigint() -> Iterator[None]:
    """Ignore further Ctrl-C while the summary of an interrupted batch is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(enabled: bool | None, total: int, done: int) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    progress.start()
    progress.add_task("clips", total=total, completed=done, failed=0)
    return progress


def batch_explain(
    model: str | Path | ClipPipeline,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    options: Any = None,
    *,
    workers: int = 1,
    resume: bool = False,
    fail_fast: bool = False,
    client: Any = None,
    scheduler: str | None = None,
    labels: str | Path | Mapping[str, str] | None = None,
    max_retries: int = 1,
    prefetch: int | None = None,
    progress: bool | None = None,
) -> BatchReport:
    """Explain every clip under ``inputs`` into ``out/<clip>/`` plus ``out/summary.csv|json``.

    ``model``: an ONNX path (explained with ``onnxcfp.explain.Explainer(model, options)``) or any
    ``ClipPipeline``. ``workers``: local worker processes (ignored with Dask). ``client`` (a
    ``dask.distributed.Client``) or ``scheduler`` ("local:N" or an address) runs one Dask task per clip.
    ``resume`` skips clips whose folder's manifest verifies (same model and options, files unchanged).
    ``labels``: {clip: label} or a CSV with columns clip,label. ``max_retries``: extra attempts for a clip
    whose worker died. A failing clip is recorded and the batch goes on, unless ``fail_fast``.
    On Ctrl-C the summary is written (``finished: false``), every finished clip stays, no half output is
    left, and KeyboardInterrupt is re-raised (the CLI exits 130)."""
    started = time.perf_counter()
    if client is not None and scheduler is not None:
        raise ConfigError("give either a Dask client or --scheduler, not both")
    if isinstance(model, (str, Path)):
        pipeline: ClipPipeline = ExplainerPipeline.create(model, options)
    elif isinstance(model, ClipPipeline):
        pipeline = model
    else:
        raise ConfigError(f"model must be an ONNX path or a ClipPipeline, not {type(model).__name__}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use 1 or more worker processes")
    if max_retries < 0:
        raise ConfigError(f"--retries {max_retries}: use 0 or more extra attempts")
    out_root = Path(out)
    if out_root.exists() and not out_root.is_dir():
        raise ConfigError(f"output {out_root} is a file: give a folder for the batch's outputs")
    out_root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_root)  # a previous run killed hard (SIGKILL, power loss) may have left temp folders

    label_map = read_labels(labels) if isinstance(labels, (str, Path)) else labels
    input_list = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    jobs = discover_clips(input_list, label_map, exclude=out_root)
    fingerprint = pipeline.fingerprint()

    to_run: list[ClipJob] = []
    skipped: dict[int, ClipSummary] = {}
    for job in jobs:
        previous = verify_clip_folder(out_root / job.name, job, fingerprint) if resume else None
        if previous is None:
            to_run.append(job)
        else:
            skipped[job.index] = replace(previous, status="skipped", source=job.source, output=job.name)

    mode = "dask" if (client is not None or scheduler is not None) else "local"
    writer = SummaryWriter(
        out_root,
        {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": getattr(pipeline, "model", None),
            "fingerprint": fingerprint,
            "mode": mode,
            "workers": workers if mode == "local" else None,
            "inputs": [str(p) for p in input_list],
            "total": len(jobs),
        },
    )
    for index, summary in skipped.items():
        writer.rows[index] = summary
    writer.write(finished=False)

    bar = _progress(progress, len(jobs), len(skipped))
    n_failed = 0

    def on_result(job: ClipJob, summary: ClipSummary) -> None:
        nonlocal n_failed
        n_failed += summary.status == "failed"
        writer.add(job.index, summary)
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, failed=n_failed)

    stats: Mapping[str, Any] = {}
    try:
        if mode == "local":
            stats = asdict(run_local(
                pipeline, to_run, out_root, fingerprint, on_result,
                workers=workers, prefetch=prefetch, max_retries=max_retries, fail_fast=fail_fast,
            ))
        else:
            from onnxcfp.batch.on_dask import connect, run_dask

            with contextlib.ExitStack() as stack:
                dask_client = client if client is not None else stack.enter_context(connect(str(scheduler)))
                stats = asdict(run_dask(
                    dask_client, pipeline, to_run, out_root, fingerprint, on_result,
                    max_retries=max_retries, fail_fast=fail_fast,
                ))
    except KeyboardInterrupt:
        with _no_sigint():
            if bar is not None:
                bar.stop()
            remove_leftovers(out_root)
            # A worker may have published a clip whose summary had not reached us yet: its folder is
            # complete (verified against its manifest), so the summary lists it too.
            for job in to_run:
                if job.index not in writer.rows:
                    published = verify_clip_folder(out_root / job.name, job, fingerprint)
                    if published is not None:
                        writer.rows[job.index] = published
            writer.write(finished=False, extra={"interrupted": True})
        raise
    finally:
        if bar is not None:
            bar.stop()
    remove_leftovers(out_root)
    wall = time.perf_counter() - started
    writer.write(finished=True, extra={"interrupted": False, "wall_seconds": round(wall, 3), "stats": stats})
    return BatchReport(
        out=out_root,
        clips=tuple(writer.ordered()),
        total=len(jobs),
        wall_seconds=wall,
        mode=mode,
        stats=stats,
    )
