"""Dask mode: one task per clip on a ``dask.distributed`` cluster (optional extra ``onnxcfp[dask]``).

Workers read clips from paths they can see, build one pipeline state per worker process (the module-level
cache in ``pipeline.worker_state``, not shipped with tasks), and write each clip folder atomically exactly
as local mode does; only the small ``ClipSummary`` travels back. A worker that dies mid-clip is Dask's to
retry (its ``allowed-failures``); when Dask gives up (``KilledWorker``) we resubmit up to ``max_retries``
times more, then record the clip as failed."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcfp.batch.jobs import ClipJob, ClipSummary, one_line
from onnxcfp.batch.pipeline import WORKER_THREADS_VAR, ClipPipeline, explain_one, failed_summary
from onnxcfp.errors import ConfigError


@dataclass(frozen=True)
class DaskStats:
    """``task_overhead_ms``: wall time the cluster's worker threads spent per clip beyond the clip's own
    work (scheduling, transfer, result gathering, idle threads at the tail), averaged over clips."""

    threads: int
    wall_seconds: float
    task_busy_seconds: float
    task_overhead_ms: float
    resubmitted: int


def require_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise ConfigError(
            "Dask is not installed: pip install 'onnxcfp[dask]' (or 'dask[distributed]'), or drop --scheduler"
        ) from err
    return distributed


@contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A Client for ``scheduler``: ``local:N`` starts a LocalCluster of N single-threaded worker processes
    (closed on exit); anything else is a scheduler address such as ``tcp://host:8786``."""
    distributed = require_distributed()
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--scheduler {scheduler}: use local:N with N >= 1 worker processes")
        # Each worker's onnxruntime gets its share of the cores (Dask already sets OMP/MKL threads to 1).
        threads = str(max(1, (os.cpu_count() or 1) // n))
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            env={WORKER_THREADS_VAR: os.environ.get(WORKER_THREADS_VAR, threads)},
        )
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = distributed.Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as err:  # ValueError: not an address at all
        raise ConfigError(
            f"cannot reach the Dask scheduler at {scheduler} ({one_line(err)}): "
            "give tcp://host:port or local:N"
        ) from err
    try:
        yield client
    finally:
        client.close()


def dask_clip_task(
    pipeline: ClipPipeline, job: ClipJob, out_root: str, fingerprint: Mapping[str, Any], attempt: int
) -> ClipSummary:
    """The task run on a Dask worker for one clip (decodes the shared path itself)."""
    return explain_one(pipeline, job, Path(out_root), fingerprint, decoded=None, attempts=attempt)


def run_dask(
    client: Any,
    pipeline: ClipPipeline,
    jobs: Sequence[ClipJob],
    out_root: Path,
    fingerprint: Mapping[str, Any],
    on_result: Callable[[ClipJob, ClipSummary], None],
    max_retries: int = 1,
    fail_fast: bool = False,
) -> DaskStats:
    """Submit one task per clip and gather summaries as they complete. Ctrl-C cancels the outstanding
    futures and re-raises KeyboardInterrupt."""
    distributed = require_distributed()
    start = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    fp = dict(fingerprint)
    owner: dict[str, tuple[ClipJob, int]] = {}
    resubmitted = 0
    busy = 0.0

    def submit(job: ClipJob, attempt: int) -> Any:
        future = client.submit(
            dask_clip_task, pipeline, job, str(out_root), fp, attempt,
            key=f"onnxcfp-{job.name[:60]}-{run_id}-{job.index}-a{attempt}", pure=False, retries=0,
        )
        owner[future.key] = (job, attempt)
        return future

    futures = [submit(job, 1) for job in jobs]
    outstanding = {f.key: f for f in futures}
    done = 0
    try:
        completed = distributed.as_completed(futures)
        for future in completed:
            outstanding.pop(future.key, None)
            job, attempt = owner[future.key]
            try:
                summary: ClipSummary = future.result()
            except Exception as err:  # the task never returned: its worker died (KilledWorker) or was lost
                if attempt <= max_retries:
                    resubmitted += 1
                    again = submit(job, attempt + 1)
                    outstanding[again.key] = again
                    completed.add(again)
                    continue
                summary = failed_summary(
                    job, f"the Dask task failed {attempt} time(s): {one_line(err)}", attempts=attempt
                )
            future.release()
            busy += summary.seconds or 0.0
            done += 1
            on_result(job, summary)
            if fail_fast and summary.status == "failed":
                break
    except BaseException:
        client.cancel(list(outstanding.values()))
        raise
    if outstanding:  # fail-fast left these
        client.cancel(list(outstanding.values()))

    wall = time.perf_counter() - start
    threads = sum(client.nthreads().values()) or 1
    return DaskStats(
        threads=threads,
        wall_seconds=wall,
        task_busy_seconds=busy,
        task_overhead_ms=1000.0 * max(0.0, wall * threads - busy) / max(done, 1),
        resubmitted=resubmitted,
    )
