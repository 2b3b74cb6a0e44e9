"""run(..., gradients=...) through onnxcfp.gradients.add_gradients, checked against closed forms for the
linear head (d logit_c/d F = W[c]/(T·H·W) broadcast over F) and central finite differences for the input."""

from __future__ import annotations

import numpy as np
import pytest
from test_runtime_fixtures import clip_batch, graph_of, tiny_r3d

from onnxcfp import runtime
from onnxcfp.errors import ConfigError
from onnxcfp.runtime import RuntimeConfig, run

CPU1 = RuntimeConfig(provider="cpu", intra_threads=1)
F = "layer2.0.out"  # [N, 8, 2, 4, 4]: the last block's output, which the head pools and reads


@pytest.fixture(autouse=True)
def fresh_cache():
    runtime.SESSIONS.clear()
    yield
    runtime.SESSIONS.clear()


@pytest.fixture(scope="module", params=["N", 1], ids=["dynamic_batch", "fixed_batch"])
def graph(request):
    return graph_of(tiny_r3d(batch=request.param))


def _head_gradient(graph, weights: np.ndarray, f_shape) -> np.ndarray:
    """d(Σ_k weights[n,k]·logit_k)/dF for GlobalAveragePool → Gemm: (weights @ W)[n, c] / (T·H·W)."""
    w = graph.head.weight  # [K, C]
    per_channel = weights @ w / np.prod(f_shape[2:])
    return np.broadcast_to(per_channel[:, :, None, None, None], f_shape)


def test_logit_gradient_for_top1_class_matches_closed_form(graph):
    x = clip_batch(3, seed=11)
    trace = run(graph, x, activations=[F], gradients=[F], config=CPU1)
    np.testing.assert_array_equal(trace.target, trace.logits.argmax(axis=1))
    onehot = np.eye(5)[trace.target]
    want = _head_gradient(graph, onehot, trace.activations[F].shape)
    np.testing.assert_allclose(trace.gradients[F], want, rtol=1e-5, atol=1e-7)
    assert trace.score_kind == "logit"


def test_given_targets_per_clip_and_broadcast(graph):
    x = clip_batch(2, seed=5)
    trace = run(graph, x, gradients=[F], target=[4, 1], config=CPU1)
    np.testing.assert_array_equal(trace.target, [4, 1])
    want = _head_gradient(graph, np.eye(5)[[4, 1]], (2, 8, 2, 4, 4))
    np.testing.assert_allclose(trace.gradients[F], want, rtol=1e-5, atol=1e-7)
    same = run(graph, x, gradients=[F], target=2, config=CPU1)
    np.testing.assert_array_equal(same.target, [2, 2])


def test_probability_score_gradient(graph):
    x = clip_batch(2, seed=9)
    trace = run(graph, x, gradients=[F], target=[0, 3], score="probability", config=CPU1)
    p = trace.probabilities
    # d p_c / d z_k = p_c (δ_ck − p_k)
    dz = np.stack([p[n, c] * (np.eye(5)[c] - p[n]) for n, c in enumerate([0, 3])])
    want = _head_gradient(graph, dz, (2, 8, 2, 4, 4))
    np.testing.assert_allclose(trace.gradients[F], want, rtol=1e-4, atol=1e-8)
    assert trace.score_kind == "probability"


def test_weights_score_gradient(graph):
    weights = np.array([0.5, -1.0, 0.0, 2.0, 0.25], np.float32)
    trace = run(graph, clip_batch(2, seed=2), gradients=[F], target=weights, score="weights", config=CPU1)
    want = _head_gradient(graph, np.tile(weights, (2, 1)), (2, 8, 2, 4, 4))
    np.testing.assert_allclose(trace.gradients[F], want, rtol=1e-5, atol=1e-7)
    assert trace.target is None


def test_input_gradient_matches_central_differences(graph):
    x = clip_batch(2, seed=4)
    trace = run(graph, x, gradients=["video", "layer1.0.out"], target=[1, 2], config=CPU1)
    direction = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    eps = 1e-2
    up = run(graph, x + eps * direction, config=CPU1).logits
    down = run(graph, x - eps * direction, config=CPU1).logits
    for n, c in enumerate([1, 2]):
        fd = (up[n, c] - down[n, c]) / (2 * eps)
        analytic = float(np.sum(trace.gradients["video"][n] * direction[n]))
        # piecewise-linear net: FD is exact away from ReLU kinks; float32 logits give ~1e-4 noise
        assert abs(fd - analytic) <= 2e-2 * max(1.0, abs(analytic)), (n, fd, analytic)
    assert trace.gradients["layer1.0.out"].shape == (2, 4, 4, 8, 8)


def test_gradient_sessions_are_cached_and_bad_targets_rejected(graph):
    x = clip_batch(1)
    run(graph, x, gradients=[F], config=CPU1)
    run(graph, clip_batch(1, seed=1), gradients=[F], target=3, config=CPU1)
    assert runtime.SESSIONS.builds == 1
    with pytest.raises(ConfigError, match=r"\[0, 5\)"):
        run(graph, x, gradients=[F], target=5, config=CPU1)
    with pytest.raises(ConfigError, match="2 class indices for 1 clips"):
        run(graph, x, gradients=[F], target=[1, 2], config=CPU1)
    with pytest.raises(ConfigError, match="weight vector"):
        run(graph, x, gradients=[F], score="weights", config=CPU1)
    with pytest.raises(ConfigError, match="score must be one of"):
        run(graph, x, gradients=[F], score="softmax", config=CPU1)
