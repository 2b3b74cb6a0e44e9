"""Local mode: worker processes that each hold one pipeline state (one Explainer, one session), fed by the
main process, which decodes clips ahead of them into a bounded prefetch queue.

Each worker has its own pair of pipes (tasks in, results out) and gets one clip at a time, so the main
process always knows which clip a worker holds: when a worker dies, that clip alone is retried (bounded) and
the worker replaced. No channel is shared between workers: a worker killed in the middle of a write (SIGKILL,
OOM killer) cannot leave a lock held or a message torn for the others, as a shared multiprocessing.Queue
would."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from onnxcfp.batch.jobs import ClipJob, ClipSummary, one_line
from onnxcfp.batch.pipeline import (
    WORKER_THREADS_VAR,
    ClipPipeline,
    explain_one,
    failed_summary,
    worker_state,
)
from onnxcfp.errors import OnnxcfpError

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# How long the dispatcher blocks in one wait; bounds the latency of noticing a dead worker or a decoded clip.
_POLL_S = 0.01


@dataclass(frozen=True)
class LocalStats:
    """Where the time went. ``worker_wait_fraction``: share of the workers' time (from their first task
    being possible to their last result) spent idle between clips, measured by the workers themselves.
    ``decode_starved_fraction``: share of worker-time that a worker sat idle because no decoded clip was
    ready (the dispatcher's view). ``decode_seconds``: main-process time spent decoding."""

    workers: int
    wall_seconds: float
    worker_busy_seconds: float
    worker_wait_seconds: float
    worker_wait_fraction: float
    decode_starved_fraction: float
    decode_seconds: float
    worker_restarts: int
    startup_seconds: float  # until every worker had built its state (spawn, imports, Explainer)
    steady_clips_per_second: float  # clips finished after startup / time after startup


class _DecodeFailed:
    def __init__(self, error: str, seconds: float) -> None:
        self.error = error
        self.seconds = seconds


def _worker_main(
    pipeline: ClipPipeline,
    wid: int,
    tasks: Connection,
    results: Connection,
    out_root: str,
    fingerprint: Mapping[str, Any],
) -> None:
    # The main process owns Ctrl-C: it stops dispatching and terminates workers itself. A terminal's SIGINT
    # goes to the whole process group, so workers must not die of it on their own mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker_state(pipeline)
    except BaseException as err:
        results.send(("init_error", wid, one_line(err)))
        return
    results.send(("ready", wid, os.getpid()))
    idle_since = time.perf_counter()
    while True:
        try:
            msg = tasks.recv()
        except EOFError:  # the main process is gone
            return
        if msg is None:
            return
        job, decoded, attempts = msg
        started = time.perf_counter()
        summary = explain_one(pipeline, job, Path(out_root), fingerprint, decoded=decoded, attempts=attempts)
        busy = time.perf_counter() - started
        results.send(("done", wid, job.index, summary, busy, started - idle_since))
        idle_since = time.perf_counter()


@dataclass
class _Slot:
    process: Any
    tasks: Connection  # main -> worker
    results: Connection  # worker -> main
    ready: bool = False
    pid: int | None = None
    current: tuple[ClipJob, Any, int] | None = None  # job, decoded payload, attempt number


def run_local(
    pipeline: ClipPipeline,
    jobs: Sequence[ClipJob],
    out_root: Path,
    fingerprint: Mapping[str, Any],
    on_result: Callable[[ClipJob, ClipSummary], None],
    workers: int = 1,
    prefetch: int | None = None,
    max_retries: int = 1,
    fail_fast: bool = False,
) -> LocalStats:
    """Explain ``jobs`` with ``workers`` processes; ``on_result`` is called in the main process for each
    finished clip (ok or failed). Ctrl-C terminates the workers, removes nothing finished, and re-raises
    KeyboardInterrupt. Raises OnnxcfpError when the workers cannot build the pipeline state."""
    workers = max(1, int(workers))
    prefetch = max(1, prefetch if prefetch is not None else 2 * workers)
    wall_start = time.perf_counter()
    if not jobs:
        return LocalStats(workers, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0)

    ctx = mp.get_context("spawn")  # no fork with a live decoder thread and onnxruntime thread pools
    stop = threading.Event()
    decoded_q: queue.Queue[tuple[ClipJob, Any, float]] = queue.Queue(maxsize=prefetch)
    decode_total = [0.0]

    def decode_ahead() -> None:
        for job in jobs:
            if stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                payload: Any = pipeline.decode(job)
            except Exception as err:
                payload = _DecodeFailed(one_line(err), time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            decode_total[0] += seconds
            while not stop.is_set():
                try:
                    decoded_q.put((job, payload, seconds), timeout=0.1)
                    break
                except queue.Full:
                    continue

    slots: dict[int, _Slot] = {}
    restarts = 0

    # Each worker gets its share of the cores for BLAS/OpenMP and onnxruntime: N workers each defaulting to
    # every core oversubscribe the machine (measured: about 2x slower per clip on a loaded 2-core box).
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    thread_env = {k: os.environ.get(k, threads) for k in _THREAD_VARS}
    thread_env[WORKER_THREADS_VAR] = os.environ.get(WORKER_THREADS_VAR, threads)

    def start_worker(wid: int) -> None:
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_main,
            args=(pipeline, wid, task_r, result_w, str(out_root), dict(fingerprint)),
            name=f"onnxcfp-batch-{wid}",
            daemon=True,
        )
        saved = {k: os.environ.get(k) for k in thread_env}
        os.environ.update(thread_env)  # a spawned child copies the environment when it starts
        try:
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        # Keep only our ends: a dead worker then shows as EOF on its results and EPIPE on its tasks.
        task_r.close()
        result_w.close()
        slots[wid] = _Slot(process=proc, tasks=task_w, results=result_r)

    decoder = threading.Thread(target=decode_ahead, name="onnxcfp-decode-ahead", daemon=True)
    retry: deque[tuple[ClipJob, Any, int]] = deque()
    n_done = 0
    n_taken = 0  # clips taken out of the decode queue
    busy_total = 0.0
    wait_total = 0.0
    starved = 0.0
    first_ready: float | None = None
    all_ready: float | None = None  # when every initial worker had built its state
    done_when_all_ready = 0
    stopping = False  # fail-fast: no new dispatches, let in-flight clips finish
    next_wid = workers

    def finish(job: ClipJob, summary: ClipSummary) -> None:
        nonlocal n_done, stopping
        n_done += 1
        on_result(job, summary)
        if fail_fast and summary.status == "failed":
            stopping = True

    def handle(msg: tuple[Any, ...]) -> None:
        nonlocal busy_total, wait_total, first_ready, all_ready, done_when_all_ready
        kind, wid = msg[0], msg[1]
        if kind == "init_error":
            raise OnnxcfpError(f"a batch worker could not start: {msg[2]}")
        slot = slots.get(wid)
        if slot is None:
            return
        if kind == "ready":
            slot.ready, slot.pid = True, msg[2]
            first_ready = first_ready or time.perf_counter()
            if all_ready is None and sum(s.ready for s in slots.values()) == workers:
                all_ready, done_when_all_ready = time.perf_counter(), n_done
        elif kind == "done":
            _, _, _, summary, busy, waited = msg
            job = slot.current[0] if slot.current else None
            slot.current = None
            busy_total += busy
            wait_total += waited
            if job is not None:
                finish(job, summary)

    def drain(slot: _Slot) -> None:
        """Handle every message waiting on a worker's results pipe (none block)."""
        try:
            while not slot.results.closed and slot.results.poll():
                handle(slot.results.recv())
        except (EOFError, OSError):
            pass  # the worker is gone; step 3 sees it dead

    try:
        for wid in range(workers):
            start_worker(wid)
        decoder.start()
        while n_done < len(jobs):
            if stopping and all(s.current is None for s in slots.values()):
                break
            # 1. Hand work to idle workers: retries first, then clips decoded ahead.
            idle = [s for s in slots.values() if s.ready and s.current is None]
            while idle and not stopping:
                if retry:
                    item = retry.popleft()
                else:
                    try:
                        job, payload, _ = decoded_q.get_nowait()
                    except queue.Empty:
                        break
                    n_taken += 1
                    if isinstance(payload, _DecodeFailed):
                        finish(job, failed_summary(job, payload.error, payload.seconds))
                        continue
                    item = (job, payload, 1)
                slot = idle.pop()
                slot.current = item
                with contextlib.suppress(OSError):  # it died: step 3 retries the clip it was given
                    slot.tasks.send(item)
            # 2. Wait for a result. If workers are idle only because nothing is decoded yet, that wait is
            #    decode starvation; block briefly so a newly decoded clip is dispatched quickly.
            hungry = len(idle) if (idle and not stopping and not retry and n_taken < len(jobs)) else 0
            t0 = time.perf_counter()
            waitables: list[Any] = [s.results for s in slots.values()]
            waitables += [s.process.sentinel for s in slots.values()]
            wait(waitables, timeout=_POLL_S if hungry else 0.5)
            if hungry and first_ready is not None:
                starved += hungry * (time.perf_counter() - t0)
            for slot in list(slots.values()):
                drain(slot)
            # 3. A worker that died loses only the clip it held: retry it (bounded), replace the worker.
            for wid, slot in list(slots.items()):
                if slot.process.is_alive():
                    continue
                slot.process.join()
                drain(slot)  # its last result may have arrived with its death
                slot.tasks.close()
                slot.results.close()
                del slots[wid]
                if slot.current is not None:
                    job, payload, attempt = slot.current
                    if attempt <= max_retries:
                        retry.append((job, payload, attempt + 1))
                    else:
                        finish(job, failed_summary(
                            job,
                            f"the worker process died (exit code {slot.process.exitcode}) while explaining "
                            f"this clip, {attempt} time(s); check memory limits and the model",
                            attempts=attempt,
                        ))
                elif not slot.ready:
                    # Died while building its state without reporting an error (e.g. killed, OOM).
                    restarts += 1
                    if restarts > 2 * workers + 2:
                        raise OnnxcfpError(
                            "batch workers keep dying while loading the model: "
                            "check memory and the model file"
                        )
                if n_done < len(jobs) and not stopping:
                    restarts += 1
                    start_worker(next_wid)
                    next_wid += 1
    except BaseException:
        stop.set()
        _terminate(slots)
        raise
    stop.set()
    for slot in slots.values():
        with contextlib.suppress(OSError):
            slot.tasks.send(None)
    for slot in slots.values():
        slot.process.join(timeout=5)
    _terminate(slots)
    decoder.join(timeout=1)

    end = time.perf_counter()
    wall = end - wall_start
    phase = end - (first_ready or wall_start)
    steady = end - all_ready if all_ready is not None else 0.0
    return LocalStats(
        workers=workers,
        wall_seconds=wall,
        worker_busy_seconds=busy_total,
        worker_wait_seconds=wait_total,
        worker_wait_fraction=wait_total / (wait_total + busy_total) if busy_total + wait_total > 0 else 0.0,
        decode_starved_fraction=min(1.0, starved / (workers * phase)) if phase > 0 else 0.0,
        decode_seconds=decode_total[0],
        worker_restarts=restarts,
        startup_seconds=(all_ready or end) - wall_start,
        steady_clips_per_second=(n_done - done_when_all_ready) / steady if steady > 0 else 0.0,
    )


def _terminate(slots: Mapping[int, _Slot]) -> None:
    for slot in slots.values():
        if slot.process.is_alive():
            slot.process.terminate()
    for slot in slots.values():
        slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
