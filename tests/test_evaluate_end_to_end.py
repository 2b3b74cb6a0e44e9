"""End-to-end evaluation on a zoo model, the user-data reader, and the ``onnxcfp evaluate`` command.

Oracles: for a Gemm head on globally pooled features, d logit_c / d F is W[c] / (T·H·W) at every
position, so Grad-CAM must equal the class activation map ReLU(Σ_k W[c,k] F_k) (Zhou et al.), computed
here from the head's weights and a forward-only run; a random map's expected energy is the mask's
volume fraction; a map that is the same on every frame has temporal AUROC exactly 0.5; masks read from
PNGs must come out cropped exactly as the frames were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onnxcfp.cli import app
from onnxcfp.datasets import make_clips
from onnxcfp.errors import ConfigError
from onnxcfp.evaluate import (
    METRICS,
    ClipScore,
    EvaluationOptions,
    EvaluationResult,
    ModelEvaluator,
    energy_in_mask,
    evaluate_model,
    from_synthetic,
    random_tube,
    read_masked_clips,
)
from onnxcfp.evaluate.data import masks_for_model, source_masks
from onnxcfp.evaluate.report import bar_chart, markdown_summary, write_results
from onnxcfp.runtime import RuntimeConfig, run
from onnxcfp.video import Preprocessing, read_clip
from onnxcfp.volume import normalise01, resize_volume

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "r3d_basic_legacy.onnx"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="zoo model r3d_basic_legacy not built")

FAST = EvaluationOptions(
    steps=4,
    occlusion_patch=(8, 32, 32),
    occlusion_stride=(8, 32, 32),
    runtime=RuntimeConfig(provider="cpu", intra_threads=1),
)


@pytest.fixture(scope="module")
def result():
    return evaluate_model(MODEL, make_clips(3, seed=11), options=FAST)


def test_every_method_scores_every_clip_with_finite_numbers_in_range(result) -> None:
    expected = {"gradcam", "gradcam-frames", "occlusion", "random-tube", "centre-prior"}
    expected |= {f"{k} L{lv}" for k in ("cfp-gradients", "cfp-weights") for lv in (1, 2, 3)}
    expected |= {f"random-ch/{k} L{lv}" for k in ("gradients", "weights") for lv in (1, 2, 3)}
    # a deeper level can be empty on a clip (no kept children): its row is then missing for that clip
    deeper = {m for m in expected if m.endswith(("L2", "L3"))}
    assert expected - deeper <= set(result.methods) <= expected
    for s in result.summary():
        assert s.n == 3 or (s.method in deeper and 1 <= s.n < 3), (s.method, s.n)
        for metric in METRICS:
            assert 0.0 <= s.mean[metric] <= 1.0, (s.method, metric, s.mean[metric])
            assert np.isfinite(s.std[metric])
    assert result.gradient_score == "logit" and result.curve_score == "probability"
    assert result.target_rule == "true label"
    data = make_clips(3, seed=11)
    for r in result.rows:  # the target is the true label; the mask fraction is the clip's
        i = int(r.clip.rsplit("_", 1)[1])
        assert r.target == r.label == int(data.labels[i])
        assert r.mask_fraction == pytest.approx(float(data.masks[i].mean()))


def test_random_channel_subsets_have_the_level_sets_size(result) -> None:
    rows = {(r.clip, r.method): r for r in result.rows}
    for (clip, method), r in rows.items():
        if method.startswith("cfp-"):
            kind, level = method[4:].split(" ")
            assert rows[(clip, f"random-ch/{kind} {level}")].channels == r.channels


def test_centre_prior_has_no_temporal_preference(result) -> None:
    assert np.allclose(result.scores("centre-prior", "temporal_auroc"), 0.5)


def test_random_tube_energy_is_about_the_mask_fraction() -> None:
    """Over many seeds the mean energy of a random tube is the mask's volume fraction."""
    data = make_clips(3, seed=11)
    for mask in data.masks:
        energies = [energy_in_mask(random_tube(mask.shape, seed=s), mask) for s in range(40)]
        assert np.mean(energies) == pytest.approx(mask.mean(), rel=0.2)
    # and the evaluation's own random-tube rows are that kind of map: same order of magnitude
    res = evaluate_model(MODEL, data, methods=["random-tube"], options=FAST)
    ratio = res.scores("random-tube", "energy") / np.array([r.mask_fraction for r in res.rows])
    assert np.all((ratio > 0.2) & (ratio < 3.0))


def test_gradcam_equals_the_class_activation_map() -> None:
    data = make_clips(1, seed=5)
    evaluator = ModelEvaluator(MODEL, FAST, data.class_names)
    clip = from_synthetic(data).clips[0]
    maps = evaluator.saliency_maps(clip)
    head = evaluator.graph.head
    assert head is not None and head.kind == "gemm" and head.weight is not None
    x = read_clip(data.frames[0], evaluator.explainer.preprocessing).tensor
    trace = run(evaluator.graph, x, activations=[head.features], config=FAST.runtime)
    f = trace.activations[head.features][0]
    cam = np.maximum(np.tensordot(head.weight[int(data.labels[0])].astype(np.float64), f, axes=1), 0.0)
    expected = normalise01(resize_volume(normalise01(cam), (16, 64, 64)))
    np.testing.assert_allclose(maps["gradcam"], expected, atol=1e-4)
    # with one weight per channel AND frame the map is the same here: the gradient is constant in t
    np.testing.assert_allclose(maps["gradcam-frames"], expected, atol=1e-4)


def test_results_are_written_as_csv_png_and_json(result, tmp_path: Path) -> None:
    files = write_results(result, tmp_path)
    assert {f.name for f in files} == {
        "evaluation_summary.csv",
        "evaluation_clips.csv",
        "evaluation.png",
        "evaluation.json",
    }
    lines = (tmp_path / "evaluation_clips.csv").read_text().splitlines()
    assert len(lines) == 1 + len(result.rows)
    summary = (tmp_path / "evaluation_summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(result.methods)
    img = np.asarray(Image.open(tmp_path / "evaluation.png"))
    assert img.shape == bar_chart(result).shape and img.shape[2] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


# ---- user data ------------------------------------------------------------------------------------


def _write_user_data(root: Path, n: int = 2) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Clips of 20 frames of 80x64 (taller than the model's 64x64: the centre crop drops 8 rows top and
    bottom) as .npy, masks as PNGs; the actor is a box that starts inside the dropped rows."""
    data, masks = root / "clips", root / "masks"
    data.mkdir()
    frames = np.zeros((n, 20, 80, 64, 3), np.uint8)
    truth = np.zeros((n, 20, 80, 64), bool)
    rng = np.random.default_rng(3)
    for i in range(n):
        frames[i] = rng.integers(0, 255, size=frames[i].shape, dtype=np.uint8)
        truth[i, 3:15, 2 + 10 * i : 30 + 10 * i, 20:40] = True
        np.save(data / f"clip{i}.npy", frames[i])
        (masks / f"clip{i}").mkdir(parents=True)
        for t in range(20):
            Image.fromarray(truth[i, t].astype(np.uint8) * 255).save(masks / f"clip{i}" / f"{t}.png")
    (data / "labels.csv").write_text("clip,label\nclip0,1\nclip1,grow\n")
    return data, masks, frames, truth


def test_user_data_reader_pairs_clips_masks_and_labels(tmp_path: Path) -> None:
    names = tuple(make_clips(1, seed=0).class_names)
    data, masks, _, truth = _write_user_data(tmp_path)
    clips = read_masked_clips(data, masks, names)
    assert [c.name for c in clips.clips] == ["clip0", "clip1"]
    assert clips.clips[0].label == 1 and clips.clips[1].label == names.index("grow")
    pre = Preprocessing(size=(64, 64), frames=16)
    loaded = read_clip(clips.clips[0].source, pre)
    src = source_masks(clips.clips[0], loaded.frame_indices, loaded.frames.shape[1:3])
    np.testing.assert_array_equal(src, truth[0, :16])
    model_mask = masks_for_model(src, loaded, (64, 64))
    np.testing.assert_array_equal(model_mask, truth[0, :16, 8:72])  # the same rows the crop kept


def test_user_data_reader_refuses_missing_masks_in_one_line(tmp_path: Path) -> None:
    data, masks, _, _ = _write_user_data(tmp_path, n=1)
    np.save(data / "orphan.npy", np.zeros((16, 64, 64, 3), np.uint8))
    with pytest.raises(ConfigError, match="orphan") as err:
        read_masked_clips(data, masks)
    assert "\n" not in str(err.value)


def test_evaluation_on_user_data_uses_the_cropped_masks(tmp_path: Path) -> None:
    data, masks, _, truth = _write_user_data(tmp_path, n=1)
    (data / "labels.csv").unlink()
    res = evaluate_model(
        MODEL, read_masked_clips(data, masks), methods=["centre-prior", "random-tube"], options=FAST
    )
    assert res.target_rule == "top-1 prediction" and np.isnan(res.accuracy)
    row = res.rows[0]
    assert row.target == row.predicted
    assert row.mask_fraction == pytest.approx(truth[0, :16, 8:72].mean())
    # action frames come from the masks (frames 3..14 of 16): a centre prior cannot tell them apart
    assert row.temporal_auroc == pytest.approx(0.5)


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_evaluate_synthetic_writes_table_and_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(MODEL),
            "--synthetic",
            "1",
            "--steps",
            "2",
            "--methods",
            "gradcam,centre-prior",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "gradcam" in res.output and "centre-prior" in res.output and "logit" in res.output
    for name in ("evaluation_summary.csv", "evaluation_clips.csv", "evaluation.png", "evaluation.json"):
        assert (out / name).is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["--synthetic", "1", "--data", "x", "--masks", "y"],
        [],
        ["--data", "x"],
        ["--synthetic", "1", "--methods", "nonsense"],
    ],
)
def test_cli_evaluate_errors_are_one_line(args: list[str], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["evaluate", str(MODEL), *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output


def _row(clip: str, method: str, energy: float, deletion: float) -> ClipScore:
    return ClipScore(
        clip=clip, method=method, family=method, level=None, channels=None, target=0, label=0, predicted=0,
        target_probability=0.5, mask_fraction=0.1, energy=energy, pointing=0.0,
        temporal_auroc=float("nan"), deletion_auc=deletion, insertion_auc=0.5,
    )  # fmt: skip


def test_paired_comparison_and_summary_on_known_rows() -> None:
    rows = []
    for i in range(10):  # "a" beats "b" on energy on 9 clips of 10 by 0.1, loses one by 0.1
        e = 0.1 if i < 9 else -0.1
        rows += [_row(f"c{i}", "a", 0.5 + e, 0.2), _row(f"c{i}", "b", 0.5, 0.3)]
    res = EvaluationResult(
        model="m.onnx", data="hand-made", options=FAST, rows=tuple(rows), gradient_score="logit",
        curve_score="probability", target_rule="true label", accuracy=1.0, seconds=0.0,
    )  # fmt: skip
    c = res.compare("a", "b", "energy")
    assert (c.n, c.wins) == (10, 0.9) and c.mean_difference == pytest.approx(0.08)
    assert c.p_sign == pytest.approx(22 / 1024)  # P(|wins - 5| >= 4) of Binomial(10, 1/2)
    assert c.better
    d = res.compare("a", "b", "deletion_auc")  # lower deletion is better: a wins every clip
    assert d.wins == 1.0 and d.better and d.mean_difference == pytest.approx(-0.1)
    a = {s.method: s for s in res.summary()}["a"]
    assert a.mean["energy"] == pytest.approx(0.58)
    assert a.std["energy"] == pytest.approx(np.std([0.6] * 9 + [0.4], ddof=1))
    assert np.isnan(a.mean["temporal_auroc"])  # undefined everywhere: NaN, not a made-up number
    table = markdown_summary(res).splitlines()
    assert len(table) == 4 and table[2].startswith("| a | 10 | 0.580±")


def test_random_subset_tube_on_a_hand_made_level() -> None:
    """Tensor "a" keeps all 3 of its channels with equal weights, so any same-size subset is the whole
    tensor and the tube must be the plain channel sum; tensor "b" keeps none, so it adds nothing."""
    from types import SimpleNamespace

    from onnxcfp.evaluate import random_subset_tube
    from onnxcfp.pyramid import Level
    from onnxcfp.trace import Trace

    rng = np.random.default_rng(0)
    a = rng.random((1, 3, 2, 4, 4)).astype(np.float32)
    b = rng.random((1, 5, 2, 4, 4)).astype(np.float32)
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0)
    level = Level(
        level=2, tensors=("a", "b"), shapes={"a": (2, 4, 4), "b": (2, 4, 4)}, node_layer=(),
        node_channel=empty_i, node_score=empty_f, node_relevance=empty_f, edge_child=empty_i,
        edge_parent=empty_i, edge_parent_level=empty_i, edge_score=empty_f,
        entry_tensor=np.zeros(3, np.int64), entry_channel=np.arange(3), entry_weight=np.full(3, 0.5),
        at_node=empty_i, at_entry=empty_i,
    )  # fmt: skip
    trace = Trace(logits=np.zeros((1, 2), np.float32), activations={"a": a, "b": b})
    pyramid = SimpleNamespace(channel_axes={}, clip=0)
    tube = random_subset_tube(pyramid, level, trace, "relevance", seed=1)  # type: ignore[arg-type]
    assert (tube.num_channels, tube.tensor_channels) == (3, 8)
    expected = normalise01(resize_volume(a[0].sum(axis=0), (4, 8, 8)))
    np.testing.assert_allclose(tube.to_clip((4, 8, 8)), expected, atol=1e-5)


def test_table_order_does_not_depend_on_which_clip_came_first() -> None:
    rows = [_row("c0", m, 0.5, 0.5) for m in ("cfp-gradients L1", "gradcam", "random-tube")]
    rows += [_row("c1", m, 0.5, 0.5) for m in ("cfp-gradients L3", "random-ch/gradients L1", "centre-prior")]
    res = EvaluationResult(
        model="m.onnx", data="hand-made", options=FAST, rows=tuple(rows), gradient_score="logit",
        curve_score="probability", target_rule="true label", accuracy=1.0, seconds=0.0,
    )  # fmt: skip
    assert res.methods == (
        "cfp-gradients L1", "cfp-gradients L3", "random-ch/gradients L1", "gradcam", "random-tube",
        "centre-prior",
    )  # fmt: skip
