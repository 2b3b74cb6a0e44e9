"""Deletion/insertion curves, batched prediction and occlusion: known answers, naive per-step
re-statements, and an ONNX model with a fixed batch run by onnxruntime vs the reference evaluator."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcfp.errors import ConfigError
from onnxcfp.evaluate import occlusion, predict_batched, saliency_curves, saliency_order

SHAPE = (3, 4, 6, 6)  # C, T, H, W
VOXEL = (2, 3, 1)  # the (t, h, w) the toy model looks at


class OneVoxelModel:
    """p(class 1) = sigmoid(4 * mean over channels of x[:, t, h, w] - 2): looks at ONE voxel only.
    Records the batch sizes it was called with."""

    def __init__(self, layout: str = "NCTHW") -> None:
        self.layout = layout
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        t, h, w = VOXEL
        v = batch[:, :, t, h, w] if self.layout == "NCTHW" else batch[:, t, h, w, :]
        z = 4.0 * v.mean(axis=1) - 2.0
        p1 = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1.0 - p1, p1], axis=1)


def _clip(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 0.1, size=(1, *SHAPE)).astype(np.float32)
    x[0, :, VOXEL[0], VOXEL[1], VOXEL[2]] = 3.0  # the evidence; the clip mean stays near 0
    return x


def _saliency_with_rank(rng: np.random.Generator, rank: int) -> np.ndarray:
    """Distinct random values where exactly ``rank`` voxels outrank VOXEL."""
    values = rng.permutation(np.prod(SHAPE[1:])).astype(np.float64)
    sal = values.reshape(SHAPE[1:])
    target_value = np.sort(values)[::-1][rank]
    where = np.argwhere(sal == target_value)[0]
    sal[tuple(where)], sal[VOXEL] = sal[VOXEL], target_value
    return sal


@pytest.mark.parametrize("rank", [0, 17, 100, 143])
def test_deletion_drops_and_insertion_rises_at_the_right_step(rank: int) -> None:
    rng = np.random.default_rng(rank)
    clip, sal = _clip(rng), _saliency_with_rank(rng, rank)
    model = OneVoxelModel()
    curves = saliency_curves(model, clip, sal, target=1, steps=16)
    assert model.calls == [34]  # both curves, all 17 points each: ONE call
    deletion, insertion = curves["deletion"], curves["insertion"]
    removed = deletion.voxels > rank  # steps at which VOXEL has been replaced by the mean
    assert removed.any() and not removed[0]
    high, low = deletion.scores[0], insertion.scores[0]
    assert high > 0.99 and low < 0.2
    np.testing.assert_allclose(deletion.scores[~removed], high, atol=1e-6)
    np.testing.assert_allclose(deletion.scores[removed], low, atol=0.02)
    np.testing.assert_allclose(insertion.scores[removed], high, atol=0.02)
    np.testing.assert_allclose(insertion.scores[~removed], low, atol=1e-6)
    # AUC by hand: trapezoids over the recorded points.
    f, s = deletion.fractions, deletion.scores
    assert deletion.auc == pytest.approx(float(np.sum((f[1:] - f[:-1]) * (s[1:] + s[:-1]) / 2)))


def _naive_curve(predict, clip: np.ndarray, sal: np.ndarray, target: int, steps: int, kind: str):
    """Step by step: copy the clip, overwrite the k most salient voxels, one predict call per step."""
    x = clip[0].astype(np.float64)
    mean = x.mean(axis=(1, 2, 3))
    order = saliency_order(sal, seed=0)
    n = sal.size
    out = []
    for i in range(steps + 1):
        k = round(i * n / steps)
        y = x.copy() if kind == "deletion" else np.broadcast_to(mean[:, None, None, None], x.shape).copy()
        for flat in order[:k]:
            t, h, w = np.unravel_index(flat, sal.shape)
            y[:, t, h, w] = mean if kind == "deletion" else x[:, t, h, w]
        out.append(predict(y[None].astype(np.float32))[0, target])
    return np.array(out)


def test_curves_match_naive_per_step_loop_in_both_layouts() -> None:
    rng = np.random.default_rng(3)
    clip = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    sal = rng.random(SHAPE[1:])
    sal[1:3] = 0.25  # a plateau: ties must be broken the same documented way
    weights = rng.normal(size=(2, int(np.prod(SHAPE))))

    def linear_model(batch: np.ndarray) -> np.ndarray:
        z = batch.reshape(batch.shape[0], -1) @ weights.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    curves = saliency_curves(linear_model, clip, sal, target=0, steps=7)
    for kind in ("deletion", "insertion"):
        naive = _naive_curve(linear_model, clip, sal, 0, 7, kind)
        np.testing.assert_allclose(curves[kind].scores, naive, rtol=1e-5, atol=1e-7)

    # Channels-last: same model on transposed input gives the same curves.
    def linear_model_nthwc(batch: np.ndarray) -> np.ndarray:
        return linear_model(np.ascontiguousarray(np.moveaxis(batch, -1, 1)))

    last = saliency_curves(
        linear_model_nthwc, np.moveaxis(clip, 1, -1), sal, target=0, steps=7, layout="NTHWC"
    )
    for kind in ("deletion", "insertion"):
        np.testing.assert_allclose(last[kind].scores, curves[kind].scores, rtol=1e-6)


def test_blur_fill_and_errors() -> None:
    rng = np.random.default_rng(4)
    clip, sal = _clip(rng), _saliency_with_rank(rng, 0)
    curves = saliency_curves(OneVoxelModel(), clip, sal, target=1, steps=4, fill="blur")
    # Blurring the lone bright voxel into its neighbourhood removes most of its evidence.
    assert curves["deletion"].scores[-1] < curves["deletion"].scores[0] - 0.5
    with pytest.raises(ConfigError):
        saliency_curves(OneVoxelModel(), clip, sal[:, :3], target=1)
    with pytest.raises(ConfigError):
        saliency_curves(OneVoxelModel(), clip, sal, target=1, fill="zero")
    with pytest.raises(ConfigError):
        saliency_curves(OneVoxelModel(), clip[0], sal, target=1)


def test_saliency_order_breaks_ties_randomly_most_salient_first() -> None:
    flat = np.zeros((2, 4, 4))
    order = saliency_order(flat, seed=1)
    assert sorted(order.tolist()) == list(range(32)) and order.tolist() != list(range(32))
    ranked = np.arange(32.0).reshape(2, 4, 4)
    assert saliency_order(ranked).tolist() == list(range(31, -1, -1))


def test_predict_batched_fixed_batch_pads_and_keeps_order() -> None:
    model = OneVoxelModel()
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(7, *SHAPE)).astype(np.float32)
    whole = model(rows)
    model.calls.clear()
    out = predict_batched(model, iter([rows[:2], rows[2:]]), batch_size=3)
    assert model.calls == [3, 3, 3]
    np.testing.assert_allclose(out, whole)
    with pytest.raises(ConfigError):
        predict_batched(model, rows, batch_size=0)
    with pytest.raises(ConfigError):
        predict_batched(lambda b: np.zeros(len(b)), rows)


def _naive_occlusion(predict, clip, target, patch, stride):
    x = clip[0]
    mean = x.mean(axis=(1, 2, 3))
    p0 = predict(clip)[0, target]
    dims = x.shape[1:]
    total, cover = np.zeros(dims), np.zeros(dims)
    axes = []
    for n, p, s in zip(dims, patch, stride, strict=True):
        starts = list(range(0, n - p + 1, s))
        if starts[-1] != n - p:
            starts.append(n - p)
        axes.append(starts)
    for t in axes[0]:
        for h in axes[1]:
            for w in axes[2]:
                y = x.copy()
                y[:, t : t + patch[0], h : h + patch[1], w : w + patch[2]] = mean[:, None, None, None]
                box = (slice(t, t + patch[0]), slice(h, h + patch[1]), slice(w, w + patch[2]))
                total[box] += p0 - predict(y[None])[0, target]
                cover[box] += 1
    return total / cover


def test_occlusion_matches_naive_and_finds_the_voxel() -> None:
    rng = np.random.default_rng(6)
    clip = _clip(rng)
    model = OneVoxelModel()
    sal = occlusion(model, clip, target=1, patch=(2, 3, 3), stride=(2, 2, 2), chunk=5)
    assert max(model.calls) <= 5
    np.testing.assert_allclose(sal, _naive_occlusion(model, clip, 1, (2, 3, 3), (2, 2, 2)), atol=1e-6)
    # Only patches covering VOXEL change the prediction: the map is zero wherever no such patch reaches.
    assert sal[VOXEL] == sal.max() and sal.max() > 0.5
    assert np.all(np.abs(sal[0]) < 1e-6)  # frames 0-1 are never in a patch with frame 2
    model.calls.clear()
    fixed = occlusion(model, clip, target=1, patch=(2, 3, 3), stride=(2, 2, 2), batch_size=4)
    assert set(model.calls) == {4}
    np.testing.assert_allclose(fixed, sal, atol=1e-6)


def _tiny_onnx(batch: int) -> onnx.ModelProto:
    """Conv3d -> ReLU -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, with a FIXED batch size."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.normal(0, 0.3, size=(4, 3, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 1.0, size=(3, 4)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 6),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *SHAPE])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [batch, 3])],
        [w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def test_fixed_batch_onnx_model_runs_in_chunks_and_agrees_with_reference() -> None:
    model = _tiny_onnx(batch=4)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(model)
    rng = np.random.default_rng(8)
    clip = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    sal = rng.random(SHAPE[1:])
    calls: list[int] = []

    def ort_predict(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return session.run(["p"], {"x": batch})[0]

    def ref_predict(batch: np.ndarray) -> np.ndarray:
        padded = np.concatenate([batch, np.repeat(batch[-1:], 3, axis=0)])
        return reference.run(None, {"x": padded.astype(np.float32)})[0][:1]

    curves = saliency_curves(ort_predict, clip, sal, target=2, steps=5, batch_size=4)
    assert set(calls) == {4} and len(calls) == 3  # 12 points in 3 calls of exactly 4
    naive = _naive_curve(ref_predict, clip, sal, 2, 5, "deletion")
    np.testing.assert_allclose(curves["deletion"].scores, naive, rtol=1e-4, atol=1e-6)
