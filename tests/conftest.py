"""Shared fixtures. Keep it tidy: one section per area, fixtures named for what they give."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # lets tests import the shared builders: `import onnx_builders`
    sys.path.insert(0, str(TESTS))

# ---- model zoo -------------------------------------------------------------------------------------
ZOO_MODELS = sorted((ROOT / "models").glob("*.onnx"))


def zoo_card(model: Path) -> dict:
    """The model's card (models/<name>.json) as a dict."""
    return json.loads(model.with_suffix(".json").read_text())


@pytest.fixture(params=ZOO_MODELS, ids=[p.stem for p in ZOO_MODELS])
def zoo_models(request: pytest.FixtureRequest) -> Path:
    """Each committed zoo model in turn (models/*.onnx); skips when the zoo is empty."""
    return request.param
