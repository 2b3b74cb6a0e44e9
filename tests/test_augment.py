"""expose(): only the requested tensors become outputs, typed; values match the reference evaluator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runtime_fixtures import (
    assert_close_to_reference,
    clip_batch,
    plain_ort,
    reference,
    tiny_r3d,
)

from onnxcfp.errors import ConfigError, OnnxcfpError
from onnxcfp.graph.augment import expose

MODEL = tiny_r3d()
NODE_OUTPUTS = [o for n in MODEL.graph.node for o in n.output]


def test_expose_adds_exactly_the_requested_tensors_in_order_with_inferred_types():
    wanted = ["layer2.0.out", "stem.conv", "layer1.0.conv1.relu"]
    out = expose(MODEL, wanted)
    assert [o.name for o in out.graph.output] == ["logits", *wanted]
    infos = {vi.name: vi for vi in MODEL.graph.value_info}
    for name in wanted:
        added = next(o for o in out.graph.output if o.name == name)
        assert added.type == infos[name].type  # same elem type and (symbolic-batch) shape
    # the input model is untouched, and nothing else changed
    assert [o.name for o in MODEL.graph.output] == ["logits"]
    assert len(out.graph.node) == len(MODEL.graph.node)
    assert len(out.graph.initializer) == len(MODEL.graph.initializer)


def test_expose_does_not_duplicate_existing_outputs_or_repeated_names():
    out = expose(MODEL, ["logits", "stem.relu", "stem.relu"])
    assert [o.name for o in out.graph.output] == ["logits", "stem.relu"]


def test_expose_unknown_tensor_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        expose(MODEL, ["stem.relu", "no_such_tensor"])
    assert isinstance(err.value, OnnxcfpError)
    assert "no_such_tensor" in str(err.value) and "\n" not in str(err.value)


def test_expose_types_tensors_of_a_model_without_value_info():
    bare = onnx.ModelProto()
    bare.CopyFrom(MODEL)
    del bare.graph.value_info[:]
    out = expose(bare, ["layer1.0.out"])
    added = out.graph.output[-1]
    dims = [d.dim_value or d.dim_param for d in added.type.tensor_type.shape.dim]
    assert added.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims == ["N", 4, 4, 8, 8]


def test_exposing_the_graph_input_returns_the_clip():
    x = clip_batch(1)
    _logits, video = plain_ort(expose(MODEL, ["video"]), {"video": x})
    np.testing.assert_array_equal(video, x)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.sampled_from(NODE_OUTPUTS), min_size=1, max_size=6), st.integers(1, 3))
def test_exposed_model_keeps_logits_and_matches_reference(tensors, n):
    x = clip_batch(n, seed=n)
    (plain_logits,) = plain_ort(MODEL, {"video": x})
    values = plain_ort(expose(MODEL, tensors), {"video": x})
    names = ["logits", *dict.fromkeys(t for t in tensors if t != "logits")]
    assert len(values) == len(names)
    # exposing stops some fusions; the class scores must not move beyond float32 reordering noise
    assert np.abs(values[0] - plain_logits).max() <= 1e-5
    ref = reference(MODEL, names, {"video": x})
    for name, got in zip(names, values, strict=True):
        assert_close_to_reference(got, ref[name], name)
