"""Dask mode on an in-process LocalCluster of 2 worker processes: same outputs as local mode, a raising
clip recorded, a worker killed by pid mid-batch costs nothing but a retry, and each worker builds its state
once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import test_batch_support  # noqa: E402
from test_batch_support import FakePipeline, expected_mean, write_npy_clip  # noqa: E402

from onnxcfp.batch import MANIFEST, batch_explain, folder_name  # noqa: E402

# Dask workers cannot import the tests folder: ship the fake pipeline's module by value.
cloudpickle.register_pickle_by_value(test_batch_support)


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _clips(root: Path, n: int) -> dict[str, np.ndarray]:
    return {f"c{i:02d}.npy": write_npy_clip(root / f"c{i:02d}.npy", 100 + i) for i in range(n)}


def _manifest_files(folder: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((folder / MANIFEST).read_text())["files"]}


def test_dask_outputs_equal_local_and_raising_clip_is_recorded(client, tmp_path: Path) -> None:
    clips = _clips(tmp_path / "in", 6)
    log = tmp_path / "builds.log"
    pipe = FakePipeline(tag="same", raise_on="c03", build_log=str(log))
    local = batch_explain(pipe, tmp_path / "in", tmp_path / "local", workers=1, progress=False)
    on_dask = batch_explain(pipe, tmp_path / "in", tmp_path / "dask", client=client, progress=False)
    assert on_dask.mode == "dask" and local.mode == "local"

    def strip(c):
        return (c.clip, c.status, c.predicted, c.predicted_name, c.target, c.score, c.kept, c.error)

    assert [strip(c) for c in on_dask.clips] == [strip(c) for c in local.clips]
    failed = {c.clip: c.error for c in on_dask.clips if c.status == "failed"}
    assert failed == {"c03.npy": "ValueError: deliberate failure for c03.npy second line"}
    for cid, frames in clips.items():
        if cid == "c03.npy":
            assert not (tmp_path / "dask" / cid).exists()
            continue
        folder = tmp_path / "dask" / folder_name(cid)
        np.testing.assert_array_equal(np.load(folder / "mean.npy"), expected_mean(frames))
        # byte-identical outputs to local mode
        assert _manifest_files(folder) == _manifest_files(tmp_path / "local" / folder_name(cid))
    # worker-local cache: 1 build in the local worker + at most one per Dask worker process
    assert len(log.read_text().split()) <= 1 + 2
    # resume across modes: the Dask run's folders are accepted by a local resume, and vice versa
    resumed = batch_explain(pipe, tmp_path / "in", tmp_path / "dask", workers=1, resume=True, progress=False)
    assert {c.clip: c.status for c in resumed.clips if c.status != "skipped"} == {"c03.npy": "failed"}
    resumed = batch_explain(pipe, tmp_path / "in", tmp_path / "local", client=client, resume=True,
                            progress=False)
    assert resumed.count("skipped") == 5


def test_worker_killed_mid_batch_loses_only_its_clip(client, tmp_path: Path) -> None:
    n = 8
    clips = _clips(tmp_path / "in", n)
    out = tmp_path / "out"
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed: list[int] = []

    def kill_when_started() -> None:
        # Kill once the batch is under way and the victim holds a clip (temp folder exists, none done).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.is_dir() and any(p.name.startswith(".tmp-c") for p in out.iterdir()):
                time.sleep(0.1)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    report = batch_explain(FakePipeline(tag="kill", sleep=0.4), tmp_path / "in", out, client=client,
                           progress=False)
    killer.join()
    assert killed == [victim]
    assert [c.status for c in report.clips] == ["ok"] * n  # every clip done, and recorded once
    assert [c.clip for c in report.clips] == sorted(clips)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half output left
    for cid, frames in clips.items():
        np.testing.assert_array_equal(np.load(out / folder_name(cid) / "mean.npy"), expected_mean(frames))
    client.wait_for_workers(2, timeout=30)  # the nanny restarted the killed worker


MODEL = Path(__file__).resolve().parents[1] / "models" / "r3d_basic_legacy.onnx"


@pytest.mark.skipif(not MODEL.is_file(), reason="model zoo not built")
def test_real_explainer_on_dask_matches_local(client, tmp_path: Path) -> None:
    from onnxcfp.datasets import make_clips
    from onnxcfp.explain import ExplainOptions
    from onnxcfp.pyramid import Pyramid

    clips = make_clips(3, seed=7)
    (tmp_path / "in").mkdir()
    for i, frames in enumerate(clips.frames):
        np.save(tmp_path / "in" / f"clip{i}.npy", frames)
    pipe = test_batch_support.TubeSavingPipeline.create(MODEL, ExplainOptions(formats=frozenset({"json"})))
    local = batch_explain(pipe, tmp_path / "in", tmp_path / "local", workers=1, progress=False)
    on_dask = batch_explain(pipe, tmp_path / "in", tmp_path / "dask", client=client, progress=False)
    assert [c.status for c in local.clips] == ["ok"] * 3 == [c.status for c in on_dask.clips]
    for a, b in zip(local.clips, on_dask.clips, strict=True):
        assert (a.predicted, a.target, a.kept) == (b.predicted, b.target, b.kept)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        pa = json.loads((tmp_path / "local" / a.output / "pyramid.json").read_text())
        pb = json.loads((tmp_path / "dask" / b.output / "pyramid.json").read_text())
        assert Pyramid.from_json(pa).to_json() == Pyramid.from_json(pb).to_json()
        assert [lv["nodes"] for lv in pa["levels"]] == [lv["nodes"] for lv in pb["levels"]]
        ta = np.load(tmp_path / "local" / a.output / "tubes.npz")
        tb = np.load(tmp_path / "dask" / b.output / "tubes.npz")
        assert sorted(ta.files) == sorted(tb.files) and len(ta.files) >= 1
        for key in ta.files:
            assert ta[key].shape == tb[key].shape
            np.testing.assert_allclose(ta[key], tb[key], atol=1e-6, rtol=0)


def test_ctrl_c_cancels_outstanding_futures_and_keeps_finished_clips(client, tmp_path: Path) -> None:
    import _thread

    from onnxcfp.batch import discover_clips, verify_clip_folder

    n = 12
    _clips(tmp_path / "in", n)
    out = tmp_path / "out"
    pipe = FakePipeline(tag="ctrl-c", sleep=0.3)

    def ctrl_c_once_a_clip_landed() -> None:  # Ctrl-C as the main thread receives it, mid-batch
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir()):
                break
            time.sleep(0.01)
        _thread.interrupt_main()

    interrupter = threading.Thread(target=ctrl_c_once_a_clip_landed)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        batch_explain(pipe, tmp_path / "in", out, client=client, progress=False)
    interrupter.join()
    # Tasks already running when cancelled finish (Dask does not kill them): wait for them to land.
    deadline = time.monotonic() + 30
    while [t for t in client.processing().values() if t] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in client.processing().values() if t]  # nothing left queued or running
    folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert 1 <= len(folders) < n
    for name in folders:  # whatever landed is complete
        (job,) = discover_clips([tmp_path / "in" / name])
        assert verify_clip_folder(out / name, job, pipe.fingerprint()) is not None
    doc = json.loads((out / "summary.json").read_text())
    assert doc["finished"] is False and doc["interrupted"] is True
    assert {c["clip"] for c in doc["clips"]} <= folders


def test_scheduler_strings_are_checked() -> None:
    from onnxcfp.batch.on_dask import connect
    from onnxcfp.errors import ConfigError

    for bad in ("local:0", "local:x"):
        with pytest.raises(ConfigError, match="local:N"), connect(bad):
            pass
