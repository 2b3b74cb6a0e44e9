"""report.html in headless Chromium: no console errors, no network requests, and clicking a kernel node
shows its tube and parents. The page's #selftest hook performs the click on load and writes what it saw
into the DOM, which ``--dump-dom`` returns."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from onnxcfp.render import LayerTube, Prediction, RenderOptions, render_explanation

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless chromium is not installed (apt-get install chromium)"
    ),
]


def _selftest(page) -> tuple[dict, str]:
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri() + "#selftest",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r'<pre id="selftest">([^<]*)</pre>', proc.stdout)
    assert m, f"self-test did not run; chromium said: {proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1))), proc.stderr


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    pyramid = {
        "levels": [
            {
                "level": 1,
                "shape": [2, 4, 4],
                "nodes": [
                    {
                        "id": "c2:0",
                        "layer": "c2",
                        "channel": 0,
                        "score": 1.0,
                        "relevance": 1.0,
                        "parents": [],
                    },
                    {
                        "id": "c2:3",
                        "layer": "c2",
                        "channel": 3,
                        "score": 0.7,
                        "relevance": 0.7,
                        "parents": [],
                    },
                ],
            },
            {
                "level": 2,
                "shape": [4, 8, 8],
                "nodes": [
                    {
                        "id": "c1:<i>1",
                        "layer": "c1",
                        "channel": 1,
                        "score": 0.9,
                        "relevance": 0.8,
                        "parents": [{"node": "c2:0", "score": 0.9}, {"node": "c2:3", "score": 0.6}],
                    }
                ],
            },
        ]
    }
    tubes = [
        LayerTube("level 1", 1, rng.random((2, 4, 4)), ("F",)),
        LayerTube("level 2", 2, rng.random((4, 8, 8)), ("X2",)),
        LayerTube("kernel", 2, rng.random((4, 8, 8)), (), ("c1", "<i>1")),  # type: ignore[arg-type]
    ]
    pred = Prediction.from_logits(
        np.array([0.0, 2.0]), None, ['<img src=x onerror=console.error("xss")>', "b"]
    )
    render_explanation(
        out,
        frames,
        tubes,
        pyramid,
        pred,
        options=RenderOptions(formats=frozenset({"report"})),
        clip_source="<script>console.error('xss')</script>.mp4",
    )
    return out / "report.html"


def test_report_click_shows_kernel_tube_without_errors_or_network(report):
    result, stderr = _selftest(report)
    assert result["clicked"] == "c1:<i>1"
    assert result["tube_shown"] and result["tube_kind"] == "kernel"
    assert result["parents_listed"] == result["parents_expected"] == 2 == result["parents_highlighted"]
    assert result["resources"] == []  # nothing fetched: every asset is a data: URI
    assert result["errors"] == [] and _console_lines(stderr) == []  # the injected names never ran
    # The 32x32 clip, its level tubes and the kernel tube are laid out 8x larger (longer side >= 240).
    sizes = result["shown_sizes"]
    assert sizes["clip"] == sizes["detail"] == [256, 256]
    assert sizes["layers"] == [[256, 256], [256, 256]]


def test_selftest_catches_a_console_error(report, tmp_path):
    """Negative control: the harness does see console errors when a page has them."""
    bad = tmp_path / "bad.html"
    bad.write_text(report.read_text().replace("<body>", "<body><script>console.error('boom')</script>", 1))
    result, stderr = _selftest(bad)
    assert "boom" in result["errors"] or any("boom" in line for line in _console_lines(stderr))
