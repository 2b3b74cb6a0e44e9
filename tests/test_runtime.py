"""runtime.run: logits and activations against the reference evaluator, batching, cache, errors, memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_runtime_fixtures import (
    assert_close_to_reference,
    clip_batch,
    graph_of,
    plain_ort,
    reference,
    tiny_r3d,
)

from onnxcfp import runtime
from onnxcfp.errors import ConfigError, InputShapeError, MemoryBudgetError
from onnxcfp.runtime import RuntimeConfig, exposed_bytes, run

CPU1 = RuntimeConfig(provider="cpu", intra_threads=1)
CONV_OUTPUTS = ["stem.conv", "layer1.0.conv1.conv", "layer1.0.conv2.conv", "layer2.0.conv1.conv",
                "layer2.0.conv2.conv", "layer2.0.downsample.conv"]
PYRAMID_LIKE = ["layer2.0.out", "layer2.0.conv1.relu", "layer1.0.out", "pooled"]


@pytest.fixture(autouse=True)
def fresh_cache():
    runtime.SESSIONS.clear()
    yield
    runtime.SESSIONS.clear()


@pytest.fixture(scope="module")
def dynamic_graph():
    return graph_of(tiny_r3d(batch="N"))


@pytest.fixture(scope="module")
def fixed_graph():
    return graph_of(tiny_r3d(batch=1))


@pytest.mark.parametrize("fold_bn", [False, True])
def test_run_matches_plain_model_and_reference_evaluator(fold_bn):
    graph = graph_of(tiny_r3d(batch="N", fold_bn=fold_bn))
    x = clip_batch(3)
    tensors = [*PYRAMID_LIKE, *CONV_OUTPUTS]
    trace = run(graph, x, activations=tensors, config=CPU1)
    (plain,) = plain_ort(graph.model, {"video": x})
    assert trace.logits.shape == (3, 5)
    assert np.abs(trace.logits - plain).max() <= 1e-5
    ref = reference(graph.model, ["logits", *tensors], {"video": x})
    assert_close_to_reference(trace.logits, ref["logits"], "logits")
    assert list(trace.activations) == tensors
    for name in tensors:
        assert trace.activations[name].dtype == np.float32
        assert_close_to_reference(trace.activations[name], ref[name], name)
    np.testing.assert_array_equal(trace.predicted, plain.argmax(axis=1))
    assert trace.gradients == {} and trace.target is None


def test_fixed_batch_model_runs_clip_by_clip(fixed_graph):
    x = clip_batch(3, seed=7)
    trace = run(fixed_graph, x, activations=["layer1.0.out"], config=CPU1)
    assert trace.logits.shape == (3, 5) and trace.activations["layer1.0.out"].shape == (3, 4, 4, 8, 8)
    for i in range(3):
        ref = reference(fixed_graph.model, ["logits", "layer1.0.out"], {"video": x[i : i + 1]})
        assert_close_to_reference(trace.logits[i : i + 1], ref["logits"], f"logits[{i}]")
        assert_close_to_reference(trace.activations["layer1.0.out"][i : i + 1], ref["layer1.0.out"], "act")
    assert runtime.SESSIONS.builds == 1  # one session for all three clips


def test_batched_and_one_by_one_agree(dynamic_graph):
    x = clip_batch(4, seed=3)
    together = run(dynamic_graph, x, activations=["layer2.0.out"], config=CPU1)
    for i in range(4):
        alone = run(dynamic_graph, x[i : i + 1], activations=["layer2.0.out"], config=CPU1)
        np.testing.assert_allclose(alone.logits[0], together.logits[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            alone.activations["layer2.0.out"][0], together.activations["layer2.0.out"][i],
            rtol=1e-5, atol=1e-6,
        )


def test_session_cache_builds_once_per_model_outputs_and_config(dynamic_graph):
    x = clip_batch(1)
    for seed in range(3):
        run(dynamic_graph, clip_batch(1, seed=seed), activations=["stem.relu"], config=CPU1)
    assert runtime.SESSIONS.builds == 1 and runtime.SESSIONS.hits == 2
    run(dynamic_graph, x, activations=["stem.relu", "stem.relu"], config=CPU1)  # same set, deduplicated
    assert runtime.SESSIONS.builds == 1
    run(dynamic_graph, x, activations=["layer1.0.out"], config=CPU1)
    basic = RuntimeConfig(provider="cpu", optimization="basic")
    run(dynamic_graph, x, activations=["stem.relu"], config=basic)
    assert runtime.SESSIONS.builds == 3


def test_session_cache_is_bounded_lru(dynamic_graph):
    x = clip_batch(1)
    limit = runtime.SESSIONS.max_entries
    names = [o for n in dynamic_graph.model.graph.node for o in n.output][: limit + 2]
    for name in names:
        run(dynamic_graph, x, activations=[name], config=CPU1)
    assert len(runtime.SESSIONS) == limit
    run(dynamic_graph, x, activations=[names[-1]], config=CPU1)  # most recent: still cached
    assert runtime.SESSIONS.builds == limit + 2
    run(dynamic_graph, x, activations=[names[0]], config=CPU1)  # oldest: evicted, rebuilt
    assert runtime.SESSIONS.builds == limit + 3


def test_session_options_follow_config(dynamic_graph):
    config = RuntimeConfig(provider="cpu", intra_threads=1, inter_threads=1, optimization="disabled")
    prepared = runtime.prepare_session(dynamic_graph, ["stem.relu"], config=config)
    options = prepared.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == runtime.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert prepared.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("clip", "fragment"),
    [
        (np.zeros((1, 3, 5, 16, 16), np.float32), "T must be 4"),
        (np.zeros((1, 3, 4, 16, 17), np.float32), "W must be 16"),
        (np.zeros((1, 4, 4, 16, 16), np.float32), "C must be 3"),
        (np.zeros((3, 4, 16, 16), np.float32), "[3, 4, 16, 16]"),
        (np.zeros((1, 3, 4, 16, 16), np.float64), "float64"),
        (np.zeros((1, 3, 4, 16, 16), np.uint8), "uint8"),
        (np.zeros((0, 3, 4, 16, 16), np.float32), "empty"),
    ],
)
def test_bad_clip_is_one_line_naming_expected_and_given(dynamic_graph, clip, fragment):
    with pytest.raises(InputShapeError) as err:
        run(dynamic_graph, clip, config=CPU1)
    message = str(err.value)
    assert "\n" not in message and fragment in message
    assert "[N, 3, 4, 16, 16]" in message and "expects float32" in message
    assert f"given {clip.dtype.name} [{', '.join(map(str, clip.shape))}]" in message


def test_bad_clip_rejected_for_fixed_batch_too(fixed_graph):
    with pytest.raises(InputShapeError, match=r"\[1, 3, 4, 16, 16\].*given float32 \[2, 3, 4, 8, 8\]"):
        run(fixed_graph, np.zeros((2, 3, 4, 8, 8), np.float32), config=CPU1)
    with pytest.raises(InputShapeError, match="given a list"):
        run(fixed_graph, [[0.0]], config=CPU1)  # type: ignore[arg-type]


def test_exposed_bytes_equals_the_bytes_actually_returned(dynamic_graph):
    x = clip_batch(3)
    tensors = [*PYRAMID_LIKE, "video", "stem.conv"]
    trace = run(dynamic_graph, x, activations=tensors, config=CPU1)
    returned = sum(a.nbytes for a in trace.activations.values())
    assert exposed_bytes(dynamic_graph, tensors, x.shape) == returned
    assert exposed_bytes(dynamic_graph, [*tensors, "stem.conv"], x.shape) == returned  # counted once


def test_exposed_bytes_without_inferred_shapes_uses_shape_inference(dynamic_graph):
    # symbolic dims that are not the input's own names (as exporters write: "unk__3") force inference
    graph = graph_of(tiny_r3d(batch="N"))
    renamed = {k: tuple("unk" if isinstance(d, str) else d for d in v) for k, v in graph.shapes.items()}
    graph.shapes.clear()
    graph.shapes.update({k: v for k, v in renamed.items() if k != "layer1.0.out"})
    x = clip_batch(2)
    trace = run(graph, x, activations=["layer1.0.out", "stem.relu"], config=CPU1)
    want = sum(a.nbytes for a in trace.activations.values())
    assert exposed_bytes(graph, ["layer1.0.out", "stem.relu"], (2, 3, 4, 16, 16)) == want


def test_memory_budget_error_before_running(dynamic_graph):
    x = clip_batch(2)
    need = exposed_bytes(dynamic_graph, CONV_OUTPUTS, x.shape)
    with pytest.raises(MemoryBudgetError) as err:
        run(dynamic_graph, x, activations=CONV_OUTPUTS,
            config=RuntimeConfig(provider="cpu", memory_budget=need - 1))
    message = str(err.value)
    assert str(need) in message and str(need - 1) in message and "\n" not in message
    assert runtime.SESSIONS.builds == 0  # refused before any session was built
    just_enough = RuntimeConfig(provider="cpu", memory_budget=need)
    trace = run(dynamic_graph, x, activations=CONV_OUTPUTS, config=just_enough)
    assert set(trace.activations) == set(CONV_OUTPUTS)


def test_unknown_activation_name_is_config_error(dynamic_graph):
    with pytest.raises(ConfigError, match="no_such"):
        run(dynamic_graph, clip_batch(1), activations=["no_such"], config=CPU1)


@pytest.mark.parametrize(
    "kwargs",
    [{"provider": "tpu"}, {"optimization": "max"}, {"intra_threads": 0}, {"inter_threads": -2},
     {"memory_budget": 0}],
)
def test_runtime_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError) as err:
        RuntimeConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_auto_provider_falls_back_quietly_and_logs_once(dynamic_graph, capfd, caplog):
    runtime.cuda_status.cache_clear()
    runtime._log_provider_choice.cache_clear()
    usable, why = runtime.cuda_status()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # no onnxruntime error spew from the probe
    with caplog.at_level(logging.INFO, logger="onnxcfp.runtime"):
        run(dynamic_graph, clip_batch(1), config=RuntimeConfig(provider="auto"))
        run(dynamic_graph, clip_batch(1), activations=["stem.relu"], config=RuntimeConfig(provider="auto"))
    said = [r.getMessage() for r in caplog.records if "using" in r.getMessage()]
    assert len(said) == 1 and why in said[0]
    if usable:
        assert "CUDAExecutionProvider" in said[0]
        assert runtime.resolve_providers(RuntimeConfig(provider="cuda"))[0] == "CUDAExecutionProvider"
    else:
        assert "CPUExecutionProvider" in said[0]
        with pytest.raises(ConfigError, match="provider 'cuda' cannot run here"):
            run(dynamic_graph, clip_batch(1), config=RuntimeConfig(provider="cuda"))
