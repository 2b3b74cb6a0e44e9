"""Regression of explanations over a model zoo: recompute every model's explanation of fixed clips and compare
it with stored golden files — prediction, kept kernels per level (Jaccard), level tubes (correlation, max
difference). Timing is never compared.

Golden files, per model: ``<name>.json`` (options, and per clip the prediction and each level's kept nodes)
and ``<name>.npz`` (each level tube at feature resolution, float16, compressed).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcfp.datasets import make_clips
from onnxcfp.errors import ConfigError
from onnxcfp.explain import Explainer, ExplainOptions, Explanation
from onnxcfp.render.writers import write_bytes, write_json
from onnxcfp.zoo import ModelCard, list_models

GOLDEN_SCHEMA = "onnxcfp.golden/1"
CLIP_SEED = 20261125  # the fixed clips every golden file is computed on
NUM_CLIPS = 2
# What the golden explanations are computed with: the defaults users get, without per-kernel tubes.
GOLDEN_OPTIONS = ExplainOptions(kernel_tubes=False)


@dataclass(frozen=True)
class Tolerances:
    """Limits beyond which an explanation has drifted."""

    jaccard: float = 0.9  # kept nodes of a level, golden vs now
    correlation: float = 0.99  # level tube, golden vs now (Pearson, at feature resolution)
    max_diff: float = 0.05  # level tube, largest voxel difference (tubes are in [0, 1])

    def __post_init__(self) -> None:
        if not (0 <= self.jaccard <= 1 and -1 <= self.correlation <= 1 and self.max_diff >= 0):
            raise ConfigError("tolerances: jaccard in [0, 1], correlation in [-1, 1], max_diff >= 0")


@dataclass(frozen=True)
class Drift:
    """One comparison that failed: ``what`` is "prediction", "target", "levels", "kept", "tube" or
    "missing"; ``value`` what was measured and ``limit`` what it had to meet."""

    model: str
    clip: int
    what: str
    level: int | None
    value: Any
    limit: Any


@dataclass(frozen=True)
class ModelCheck:
    model: str
    clips: int
    worst_jaccard: float | None = None
    worst_correlation: float | None = None
    worst_max_diff: float | None = None
    drifts: tuple[Drift, ...] = ()
    updated: bool = False


@dataclass(frozen=True)
class RegressReport:
    zoo: str
    golden: str
    tolerances: Tolerances
    models: tuple[ModelCheck, ...] = field(default=())

    @property
    def drifted(self) -> bool:
        return any(m.drifts for m in self.models)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "onnxcfp.regress/1",
            "zoo": self.zoo,
            "golden": self.golden,
            "tolerances": asdict(self.tolerances),
            "drifted": self.drifted,
            "models": [asdict(m) for m in self.models],
        }


def fixed_clips(card: ModelCard) -> np.ndarray:
    """The clips a model's golden explanations are computed on: generated, seeded, at the model's size."""
    shape = dict(zip(card.input.layout, card.input.shape, strict=True))
    return make_clips(NUM_CLIPS, CLIP_SEED, frames=int(shape["T"]), size=int(shape["H"])).frames


def _record(expl: Explanation) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    pyr = expl.pyramid
    levels = [[node.id for node in pyr.nodes(lv)] for lv in range(1, len(pyr.levels) + 1)]
    entry = {"predicted": int(expl.trace.predicted[0]), "target": pyr.class_index, "levels": levels}
    tubes = {f"level{t.level}": t.volume.astype(np.float16) for t in expl.level_tubes}
    return entry, tubes


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def _tube_agreement(golden: np.ndarray, now: np.ndarray) -> tuple[float, float]:
    """(Pearson correlation, max abs difference); two constant tubes that are equal correlate 1."""
    g, n = golden.astype(np.float64).ravel(), now.astype(np.float64).ravel()
    diff = float(np.abs(g - n).max()) if g.size else 0.0
    if g.std() == 0 or n.std() == 0:
        return (1.0 if diff == 0 else 0.0), diff
    return float(np.corrcoef(g, n)[0, 1]), diff


def _compare(
    name: str,
    golden: dict[str, Any],
    golden_tubes: Any,
    now: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
    tol: Tolerances,
) -> ModelCheck:
    drifts: list[Drift] = []
    jac: list[float] = []
    cor: list[float] = []
    mdiff: list[float] = []
    for i, (entry, tubes) in enumerate(now):
        if i >= len(golden["clips"]):
            drifts.append(Drift(name, i, "missing", None, "no golden entry", "present"))
            continue
        want = golden["clips"][i]
        for key in ("predicted", "target"):
            if entry[key] != want[key]:
                drifts.append(Drift(name, i, key, None, entry[key], want[key]))
        if len(entry["levels"]) != len(want["levels"]):
            drifts.append(Drift(name, i, "levels", None, len(entry["levels"]), len(want["levels"])))
        for lv, (got_ids, want_ids) in enumerate(zip(entry["levels"], want["levels"], strict=False), start=1):
            j = _jaccard(got_ids, want_ids)
            jac.append(j)
            if j < tol.jaccard:
                drifts.append(Drift(name, i, "kept", lv, round(j, 4), tol.jaccard))
        for key, volume in tubes.items():
            stored = f"clip{i}_{key}"
            level = int(key.removeprefix("level"))
            if stored not in golden_tubes.files:
                drifts.append(Drift(name, i, "missing", level, "no golden tube", "present"))
                continue
            want_tube = golden_tubes[stored]
            if want_tube.shape != volume.shape:
                drifts.append(Drift(name, i, "tube", level, list(volume.shape), list(want_tube.shape)))
                continue
            c, d = _tube_agreement(want_tube, volume)
            cor.append(c)
            mdiff.append(d)
            if c < tol.correlation or d > tol.max_diff:
                drifts.append(
                    Drift(
                        name,
                        i,
                        "tube",
                        level,
                        {"corr": round(c, 4), "max_diff": round(d, 4)},
                        {"corr": tol.correlation, "max_diff": tol.max_diff},
                    )
                )
    return ModelCheck(
        model=name,
        clips=len(now),
        worst_jaccard=min(jac) if jac else None,
        worst_correlation=min(cor) if cor else None,
        worst_max_diff=max(mdiff) if mdiff else None,
        drifts=tuple(drifts),
    )


def _golden_options(stored: dict[str, Any]) -> ExplainOptions:
    opts = dict(stored)
    opts["formats"] = frozenset(opts.get("formats", ()))
    return ExplainOptions(**opts)


def check_model(card: ModelCard, golden_dir: Path, update: bool, tol: Tolerances) -> ModelCheck:
    """Explain the fixed clips with one model and compare with (or, with ``update``, rewrite) its golden."""
    json_path, npz_path = golden_dir / f"{card.name}.json", golden_dir / f"{card.name}.npz"
    golden = None if update or not json_path.is_file() else json.loads(json_path.read_text())
    options = GOLDEN_OPTIONS if golden is None else _golden_options(golden["options"])
    explainer = Explainer(card.path, options)
    now = [_record(explainer.explain(frames)) for frames in fixed_clips(card)]
    if golden is None and not update:
        return ModelCheck(
            card.name,
            len(now),
            drifts=(Drift(card.name, 0, "missing", None, "no golden file", str(json_path)),),
        )
    if update:
        arrays = {f"clip{i}_{k}": v for i, (_, tubes) in enumerate(now) for k, v in tubes.items()}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_bytes(npz_path, buf.getvalue())
        write_json(
            json_path,
            {
                "schema": GOLDEN_SCHEMA,
                "model": card.name,
                "clip_seed": CLIP_SEED,
                "options": options.fingerprint(),
                "clips": [entry for entry, _ in now],
            },
        )
        return ModelCheck(card.name, len(now), 1.0, 1.0, 0.0, updated=True)
    assert golden is not None
    with np.load(npz_path) as golden_tubes:
        return _compare(card.name, golden, golden_tubes, now, tol)


def regress(
    zoo_dir: str | Path, golden_dir: str | Path, update: bool = False, tolerances: Tolerances | None = None
) -> RegressReport:
    """Check every model of the zoo folder against its golden explanations (or rewrite them)."""
    zoo, golden = Path(zoo_dir), Path(golden_dir)
    if not zoo.is_dir():
        problem = "is a file" if zoo.exists() else "does not exist"
        raise ConfigError(f"zoo folder {zoo} {problem}: pass the folder holding the .onnx files and cards")
    cards = list_models(zoo)
    if not cards:
        raise ConfigError(f"no model cards (*.json beside *.onnx) in {zoo}")
    if not update and not golden.is_dir():
        if golden.exists():
            raise ConfigError(f"golden folder {golden} is a file: pass the folder of golden explanations")
        raise ConfigError(f"golden folder {golden} does not exist: create it with --update")
    tol = tolerances or Tolerances()
    checks = tuple(check_model(card, golden, update, tol) for card in cards)
    return RegressReport(str(zoo), str(golden), tol, checks)
