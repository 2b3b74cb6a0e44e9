"""The bundled model zoo: small trained video 3D-CNNs in ``models/`` with a JSON card beside each file.

A card says what the model expects (input name, layout, shape; preprocessing), what it predicts (class
names), how good it is (held-out accuracy on the synthetic actions, ``onnxcfp.datasets``), how it was built,
and what its builder declared about its structure (conv kinds, groups, residual adds, concats, splits, head)
so the graph layer can be checked against it. Reading cards needs no torch: ``models/build_zoo.py``
(torch, the ``zoo`` extra) writes them.

The zoo folder is ``$ONNXCFP_MODELS`` when set, else ``models/`` beside the package (a source checkout or
an editable install).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcfp.errors import ConfigError, ModelLoadError

CARD_LAYOUTS = ("NCTHW", "NTHWC")
EXPORTERS = ("legacy", "dynamo", "helper")
HEAD_KINDS = ("gemm", "matmul", "conv1x1", "mlp")
CONV_KINDS = ("3d", "grouped", "depthwise", "pointwise", "spatial", "temporal", "2d")


@dataclass(frozen=True)
class CardInput:
    name: str
    layout: str  # "NCTHW" | "NTHWC"
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class CardPreprocessing:
    """Preprocessed tensor = ((frame / scale) - mean) / std per channel, after resizing the shorter side
    to ``size`` and centre-cropping."""

    size: tuple[int, int]  # (H, W)
    resize: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str


@dataclass(frozen=True)
class CardAccuracy:
    held_out: float | None  # fraction correct on ``n`` fresh clips of make_clips(n, seed); None if untrained
    n: int
    seed: int


@dataclass(frozen=True)
class DeclaredHead:
    kind: str  # "gemm" | "matmul" | "conv1x1" | "mlp"
    num_classes: int
    feature_channels: int


@dataclass(frozen=True)
class DeclaredStructure:
    """What the builder put in the model. ``conv_kinds`` counts every Conv node by ConvKind value (SE
    convs and a 1x1x1 conv head included); ``groups`` counts convs per group value > 1 (depthwise
    included); ``residual_adds`` counts Adds of two feature tensors; ``channel_concats`` Concats on the
    channel axis; ``channel_splits`` counts TENSORS taken apart into channel ranges (one per fibre split,
    whether the exporter wrote one Split or several Slices)."""

    conv_kinds: dict[str, int]
    groups: dict[str, int]
    residual_adds: int
    channel_concats: int
    channel_splits: int
    head: DeclaredHead

    @property
    def num_convs(self) -> int:
        return sum(self.conv_kinds.values())


@dataclass(frozen=True)
class ModelCard:
    """One zoo model's card. ``path`` is the .onnx file; ``raw`` the card JSON as read (for consumers that
    build their own objects from the dict, e.g. video preprocessing)."""

    name: str
    path: Path
    architecture: str
    exporter: str  # "legacy" | "dynamo" | "helper"
    input: CardInput
    preprocessing: CardPreprocessing
    classes: tuple[str, ...]
    accuracy: CardAccuracy
    trained: bool
    build_command: str
    declared: DeclaredStructure
    raw: dict[str, Any]

    @property
    def card_path(self) -> Path:
        return self.path.with_suffix(".json")


def models_dir() -> Path:
    """The zoo folder: ``$ONNXCFP_MODELS`` if set, else ``models/`` next to the onnxcfp package."""
    override = os.environ.get("ONNXCFP_MODELS")
    folder = Path(override) if override else Path(__file__).resolve().parent.parent / "models"
    if not folder.is_dir():
        raise ModelLoadError(
            f"model zoo folder {folder} not found: set ONNXCFP_MODELS to the folder holding the zoo's "
            ".onnx files and .json cards (the source checkout's models/)"
        )
    return folder


def _require(mapping: dict[str, Any], key: str, where: Path) -> Any:
    if key not in mapping:
        raise ModelLoadError(
            f"model card {where} lacks the field {key!r}: rebuild it with models/build_zoo.py"
        )
    return mapping[key]


def load_card(path: str | Path) -> ModelCard:
    """Read one card (``<name>.json``, or the ``<name>.onnx`` beside it) into a ModelCard."""
    path = Path(path)
    card_path = path.with_suffix(".json") if path.suffix == ".onnx" else path
    try:
        raw = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"model card {card_path} not found: pass a zoo card .json or its .onnx"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({err}): rebuild it") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"model card {card_path} is not a JSON object: rebuild it")
    try:
        inp = _require(raw, "input", card_path)
        pre = _require(raw, "preprocessing", card_path)
        acc = _require(raw, "accuracy", card_path)
        dec = _require(raw, "declared", card_path)
        head = _require(dec, "head", card_path)
        card = ModelCard(
            name=str(_require(raw, "name", card_path)),
            path=card_path.parent / str(_require(raw, "file", card_path)),
            architecture=str(_require(raw, "architecture", card_path)),
            exporter=str(_require(raw, "exporter", card_path)),
            input=CardInput(
                str(inp["name"]), str(inp["layout"]), tuple(int(d) for d in inp["shape"]), str(inp["dtype"])
            ),
            preprocessing=CardPreprocessing(
                size=(int(pre["size"][0]), int(pre["size"][1])),
                resize=str(pre["resize"]),
                scale=float(pre["scale"]),
                mean=tuple(float(v) for v in pre["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
                channel_order=str(pre["channel_order"]),
            ),
            classes=tuple(str(c) for c in _require(raw, "classes", card_path)),
            accuracy=CardAccuracy(
                None if acc["held_out"] is None else float(acc["held_out"]), int(acc["n"]), int(acc["seed"])
            ),
            trained=bool(_require(raw, "trained", card_path)),
            build_command=str(_require(raw, "build_command", card_path)),
            declared=DeclaredStructure(
                conv_kinds={str(k): int(v) for k, v in dec["conv_kinds"].items()},
                groups={str(k): int(v) for k, v in dec["groups"].items()},
                residual_adds=int(dec["residual_adds"]),
                channel_concats=int(dec["channel_concats"]),
                channel_splits=int(dec["channel_splits"]),
                head=DeclaredHead(str(head["kind"]), int(head["num_classes"]), int(head["feature_channels"])),
            ),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ModelLoadError(f"model card {card_path} has a malformed field ({err!r}): rebuild it") from None
    problems = []
    if card.input.layout not in CARD_LAYOUTS:
        problems.append(f"layout {card.input.layout!r} not in {CARD_LAYOUTS}")
    if card.exporter not in EXPORTERS:
        problems.append(f"exporter {card.exporter!r} not in {EXPORTERS}")
    if card.declared.head.kind not in HEAD_KINDS:
        problems.append(f"head kind {card.declared.head.kind!r} not in {HEAD_KINDS}")
    if unknown := sorted(set(card.declared.conv_kinds) - set(CONV_KINDS)):
        problems.append(f"conv kinds {unknown} not in {CONV_KINDS}")
    if len(card.preprocessing.mean) != 3 or len(card.preprocessing.std) != 3:
        problems.append("mean and std need 3 values each")
    if problems:
        raise ModelLoadError(f"model card {card_path} is invalid: {'; '.join(problems)}")
    return card


def list_models(folder: str | Path | None = None) -> list[ModelCard]:
    """Every card in ``folder`` (default: the zoo folder), sorted by name."""
    return [load_card(p) for p in sorted(Path(folder or models_dir()).glob("*.json"))]


def find_model(name: str) -> Path:
    """The .onnx file of a zoo model: its full name (``r3d_basic_legacy``, with or without ``.onnx``), or
    an architecture name alone (``r3d_basic``), which picks its legacy export (else the first export)."""
    folder = models_dir()
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    exact = folder / f"{stem}.onnx"
    if exact.is_file() and (folder / f"{stem}.json").is_file():
        return exact
    cards = list_models()
    same_arch = [c for c in cards if c.architecture == stem]
    if same_arch:
        same_arch.sort(key=lambda c: (EXPORTERS.index(c.exporter) if c.exporter in EXPORTERS else 99, c.name))
        return same_arch[0].path
    names = ", ".join(c.name for c in cards)
    raise ConfigError(f"no zoo model named {name!r}: choose one of {names} (or an architecture name)")
