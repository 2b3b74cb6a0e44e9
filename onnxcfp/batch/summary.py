"""``summary.csv`` and ``summary.json``: rewritten atomically while the batch runs (at most every
``interval`` seconds) and at the end, so a killed run always leaves a valid, if slightly stale, summary."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxcfp.batch.jobs import ClipSummary
from onnxcfp.batch.store import write_atomic

SUMMARY_SCHEMA = "onnxcfp.batch/1"
CSV_HEAD = ("clip", "predicted", "predicted_name", "target", "score")
CSV_TAIL = ("kept_total", "seconds", "status", "error", "attempts", "output", "source")


def summary_csv(rows: list[ClipSummary]) -> str:
    """One row per clip; one ``kept:<layer>`` column per layer (layers in order of first appearance)."""
    layers: dict[str, None] = {}
    for r in rows:
        for layer, _ in r.kept:
            layers.setdefault(layer, None)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_HEAD, *(f"kept:{layer}" for layer in layers), *CSV_TAIL])
    for r in rows:
        kept = dict(r.kept)
        w.writerow([
            r.clip,
            "" if r.predicted is None else r.predicted,
            r.predicted_name or "",
            "" if r.target is None else r.target,
            "" if r.score is None else f"{r.score:.6g}",
            *(kept.get(layer, "") for layer in layers),
            sum(kept.values()) if kept else "",
            "" if r.seconds is None else f"{r.seconds:.4f}",
            r.status,
            r.error or "",
            r.attempts,
            r.output,
            r.source,
        ])
    return buf.getvalue()


class SummaryWriter:
    """Collects per-clip summaries (in clip order) and writes both summary files atomically."""

    def __init__(self, out_root: Path, header: Mapping[str, Any], interval: float = 2.0) -> None:
        self.out_root = out_root
        self.header = dict(header)
        self.interval = interval
        self.rows: dict[int, ClipSummary] = {}
        self._last_write = float("-inf")

    def add(self, index: int, summary: ClipSummary) -> None:
        self.rows[index] = summary
        if time.monotonic() - self._last_write >= self.interval:
            self.write(finished=False)

    def ordered(self) -> list[ClipSummary]:
        return [self.rows[i] for i in sorted(self.rows)]

    def write(self, finished: bool, extra: Mapping[str, Any] | None = None) -> None:
        rows = self.ordered()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        doc = {
            "schema": SUMMARY_SCHEMA,
            **self.header,
            "finished": finished,
            "counts": counts,
            **(dict(extra) if extra else {}),
            "clips": [r.to_json() for r in rows],
        }
        write_atomic(self.out_root / "summary.csv", summary_csv(rows).encode())
        write_atomic(self.out_root / "summary.json", json.dumps(doc, indent=1).encode())
        self._last_write = time.monotonic()
