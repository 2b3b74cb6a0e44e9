"""The bundled model zoo: every committed model loads, runs in onnxruntime, matches its card, holds what
its builder declared, and (when trained) reaches its stated accuracy on fresh clips. No torch here."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxcfp import zoo
from onnxcfp.datasets import CLASS_NAMES, make_clips
from onnxcfp.errors import ConfigError, ModelLoadError, OnnxcfpError

MODELS = Path(__file__).resolve().parent.parent / "models"
CARDS = sorted(MODELS.glob("*.json"))
FRESH_SEED = 424242  # neither the training (1000) nor the card's evaluation seed (2000)
FRESH_N = 48


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _preprocess(frames: np.ndarray, card: zoo.ModelCard) -> np.ndarray:
    """An independent restatement of the card's preprocessing: per channel ((x / scale) - mean) / std,
    then NTHWC -> the card's layout. Clips are generated at the card's size, so no resize is involved."""
    pre = card.preprocessing
    x = frames.astype(np.float64) / pre.scale
    for c in range(3):
        x[..., c] = (x[..., c] - pre.mean[c]) / pre.std[c]
    if card.input.layout == "NCTHW":
        x = np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.fixture(scope="module")
def fresh_clips():
    return make_clips(FRESH_N, seed=FRESH_SEED, frames=16, size=64)


def test_zoo_holds_every_family_with_both_exporters():
    cards = zoo.list_models()
    by_arch: dict[str, set[str]] = {}
    for card in cards:
        by_arch.setdefault(card.architecture, set()).add(card.exporter)
    for arch in ("r3d_basic", "r3d_bottleneck", "resnext3d", "mfnet", "i3d", "r2plus1d", "x3d", "s3d"):
        assert by_arch.get(arch) == {"legacy", "dynamo"}, arch
    assert any(c.exporter == "helper" and c.input.layout == "NTHWC" for c in cards)


def test_zoo_files_are_small():
    sizes = {p.name: p.stat().st_size for p in MODELS.glob("*.onnx")}
    assert sizes and max(sizes.values()) < 1_000_000, sizes
    assert sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file() and "_work" not in p.parts) < 20e6


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_model_matches_its_card_and_runs(card_path: Path):
    card = zoo.load_card(card_path)
    assert card.path.is_file() and card.name == card_path.stem
    model = onnx.load(str(card.path))
    assert model.ir_version <= 10
    onnx.checker.check_model(model)
    (graph_input,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert graph_input.name == card.input.name
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and card.input.dtype == "float32"
    dims = graph_input.type.tensor_type.shape.dim
    assert len(dims) == len(card.input.shape) == 5
    assert dims[0].dim_param  # symbolic batch: batched runs work
    assert [d.dim_value for d in dims[1:]] == list(card.input.shape[1:])
    channel_axis = card.input.layout.index("C")
    assert card.input.shape[channel_axis] == 3 and card.input.shape[card.input.layout.index("T")] == 16

    # the declared structure must be in the file: one Conv node per declared conv, and the head's size
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["Conv"] == card.declared.num_convs
    assert ops["Concat"] >= card.declared.channel_concats
    assert card.declared.head.num_classes == len(card.classes)
    weights = {t.name: t for t in model.graph.initializer}
    group_counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            assert node.input[1] in weights  # both exporters write conv weights as initializers
            if group > 1:
                group_counts[str(group)] += 1
    assert dict(group_counts) == card.declared.groups

    session = _session(card.path)
    clip = np.random.default_rng(0).standard_normal((2, *card.input.shape[1:])).astype(np.float32)
    (logits,) = session.run(None, {card.input.name: clip})
    assert logits.shape == (2, len(card.classes)) and np.isfinite(logits).all()
    # batch items are independent (no BN in training mode, nothing mixing the batch)
    (single,) = session.run(None, {card.input.name: clip[1:]})
    np.testing.assert_allclose(single[0], logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_trained_model_reaches_stated_accuracy_on_fresh_clips(card_path: Path, fresh_clips):
    card = zoo.load_card(card_path)
    if not card.trained:
        assert card.accuracy.held_out is None
        pytest.skip(f"{card.name} is untrained")
    assert card.classes == CLASS_NAMES
    stated = card.accuracy.held_out
    assert stated is not None and stated >= 0.9 and card.accuracy.n >= 200
    (logits,) = _session(card.path).run(None, {card.input.name: _preprocess(fresh_clips.frames, card)})
    accuracy = float((logits.argmax(1) == fresh_clips.labels).mean())
    # Both figures are binomial estimates of the same true accuracy p: the difference has variance
    # p(1-p)(1/n_fresh + 1/n_card). Three standard deviations (plus one clip of rounding) keeps a false
    # alarm below ~0.2 % per model while an untrained (1/8) or broken model fails by a wide margin.
    p = min(max(stated, 0.5), 0.98)  # floor the variance: a stated 1.0 must not give a zero tolerance
    tolerance = 3 * math.sqrt(p * (1 - p) * (1 / FRESH_N + 1 / card.accuracy.n)) + 1 / FRESH_N
    assert accuracy >= stated - tolerance, (card.name, accuracy, stated, tolerance)


def test_find_model_by_name_architecture_and_suffix():
    assert zoo.find_model("r3d_basic_dynamo") == MODELS / "r3d_basic_dynamo.onnx"
    assert zoo.find_model("r3d_basic_dynamo.onnx") == MODELS / "r3d_basic_dynamo.onnx"
    assert zoo.find_model("r3d_basic") == MODELS / "r3d_basic_legacy.onnx"
    assert zoo.find_model("tfstyle").name == "tfstyle_helper.onnx"
    with pytest.raises(ConfigError) as err:
        zoo.find_model("no_such_net")
    assert "no_such_net" in str(err.value) and "\n" not in str(err.value)


def _write_card(folder: Path, **overrides) -> Path:
    raw = json.loads((MODELS / "r3d_basic_legacy.json").read_text())
    raw.update(overrides)
    path = folder / "r3d_basic_legacy.json"
    path.write_text(json.dumps(raw))
    return path


def test_bad_cards_give_one_line_typed_errors(tmp_path: Path):
    cases = {
        "missing": tmp_path / "absent.json",
        "not json": tmp_path / "broken.json",
        "no field": tmp_path / "nofield.json",
        "bad layout": tmp_path / "layout.json",
    }
    cases["not json"].write_text("{not json")
    raw = json.loads((MODELS / "r3d_basic_legacy.json").read_text())
    del raw["declared"]
    cases["no field"].write_text(json.dumps(raw))
    raw = json.loads((MODELS / "r3d_basic_legacy.json").read_text())
    raw["input"]["layout"] = "NHWC"
    cases["bad layout"].write_text(json.dumps(raw))
    for what, path in cases.items():
        with pytest.raises(ModelLoadError) as err:
            zoo.load_card(path)
        message = str(err.value)
        assert isinstance(err.value, OnnxcfpError) and "\n" not in message and str(path) in message, what


def test_models_folder_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _write_card(tmp_path, name="r3d_basic_legacy")
    monkeypatch.setenv("ONNXCFP_MODELS", str(tmp_path))
    (card,) = zoo.list_models()
    assert card.path == tmp_path / "r3d_basic_legacy.onnx"
    monkeypatch.setenv("ONNXCFP_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError):
        zoo.list_models()
