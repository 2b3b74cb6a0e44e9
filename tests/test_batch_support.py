"""Helpers for the batch/Dask tests: a small, fully deterministic ClipPipeline (no model) and clip makers.

``FakePipeline`` decodes with ``onnxcfp.video.open_source`` (the real reader) and "explains" a clip as
its per-channel mean, so every output can be re-derived independently from the clip file. It can raise,
sleep, or kill its own process for clips whose id contains a marker, to drive the batch's error paths."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np

from onnxcfp.batch import ClipJob, ExplainerPipeline
from onnxcfp.errors import VideoReadError


def expected_mean(frames: np.ndarray) -> np.ndarray:
    """The fake explanation, restated: mean over T,H,W of each RGB channel, float32."""
    return frames.reshape(-1, 3).astype(np.float64).mean(axis=0).astype(np.float32)


@dataclass(frozen=True)
class FakePipeline:
    tag: str = "fake"
    sleep: float = 0.0
    raise_on: str | None = None  # clip ids containing this raise in explain()
    die_on: str | None = None  # clip ids containing this kill their worker process (os._exit)
    die_once_marker: str | None = None  # with die_on: die only while this file does not exist yet
    build_log: str | None = None  # one line per build() call: "pid"

    def cache_key(self) -> str:
        return f"fake:{self.tag}"

    def fingerprint(self) -> dict[str, Any]:
        return {"pipeline": "fake", "tag": self.tag}

    def build(self) -> dict[str, Any]:
        if self.build_log:
            with open(self.build_log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return {"pid": os.getpid()}

    def decode(self, job: ClipJob) -> np.ndarray:
        from onnxcfp.video import open_source

        src = open_source(job.source)
        frames = src.read(list(range(src.count)))
        if frames.size == 0:
            raise VideoReadError(f"{job.source} has no frames")
        return frames

    def explain(self, state: Any, decoded: np.ndarray, job: ClipJob, folder: Path) -> dict[str, Any]:
        if self.sleep:
            time.sleep(self.sleep)
        if self.raise_on and self.raise_on in job.clip:
            raise ValueError(f"deliberate failure for {job.clip}\nsecond line")
        if self.die_on and self.die_on in job.clip:
            marker = Path(self.die_once_marker) if self.die_once_marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.write_text("died once")
                os._exit(3)
        mean = expected_mean(decoded)
        np.save(folder / "mean.npy", mean)
        (folder / "nested").mkdir()
        (folder / "nested" / "info.json").write_text(json.dumps({"frames": int(decoded.shape[0])}))
        predicted = int(np.argmax(mean))
        return {
            "predicted": predicted,
            "predicted_name": "RGB"[predicted],
            "target": predicted if job.label is None else int(job.label),
            "score": float(mean[predicted]),
            "kept": {"conv1": int(decoded.shape[0]), "conv2": 2},
        }


def write_npy_clip(path: Path, seed: int, frames: int = 4, size: int = 8) -> np.ndarray:
    clip = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, clip)
    return clip


def write_frames_folder(path: Path, seed: int, frames: int = 3, size: int = 8) -> np.ndarray:
    clip = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    path.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip):
        iio.imwrite(path / f"frame_{i:03d}.png", frame)
    return clip


def write_corrupt_video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video" * 4)


@dataclass(frozen=True)
class TubeSavingPipeline(ExplainerPipeline):
    """The real Explainer pipeline, plus the level tubes' volumes saved as ``tubes.npz`` so that runs
    can be compared numerically (the renderers write only images)."""

    def explain(self, state: Any, decoded: Any, job: ClipJob, folder: Path) -> dict[str, Any]:
        clip = decoded if decoded is not None else job.source
        explanation = state.explain(clip, label=job.label)
        explanation.save(folder)
        np.savez_compressed(
            folder / "tubes.npz", **{f"level{t.level}": t.volume for t in explanation.level_tubes}
        )
        return explanation.summary()
