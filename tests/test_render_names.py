"""Output file names (short, stable, collision safe), reuse of encoded bytes in the report, the small
kernel GIFs, and all-or-nothing writing of a whole explanation."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

import onnxcfp.render as render
from onnxcfp.render import (
    LayerTube,
    Prediction,
    RenderOptions,
    kernel_file_stems,
    level_file_stems,
    render_explanation,
)


def test_level_stems_are_short_and_unique():
    assert level_file_stems([1, 2, 3]) == ["level1", "level2", "level3"]
    assert level_file_stems([1, 1, 2, 1]) == ["level1", "level1_2", "level2", "level1_3"]


def test_kernel_stems_are_collision_safe_and_order_independent():
    long_a, long_b = "x" * 90 + "a", "x" * 90 + "b"  # equal after the 80-character cut
    nodes = [("a/b", 3), ("a:b", 3), ("layer4.0.conv2", 7), (long_a, 1), (long_b, 1), ("a/b", 4)]
    stems = kernel_file_stems(nodes)
    assert stems[("layer4.0.conv2", 7)] == "layer4.0.conv2_c7"  # no clash: the plain slug
    assert len(set(stems.values())) == len(nodes)  # every node its own file
    assert stems[("a/b", 3)].startswith("a_b-") and stems[("a/b", 3)].endswith("_c3")
    assert stems[("a/b", 3)][:-3] == stems[("a/b", 4)][:-3]  # one layer, one stem
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", s) for s in stems.values())
    assert kernel_file_stems(nodes[::-1]) == stems


def _frames(t: int = 6, h: int = 32, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (t, 1, 1, 3), dtype=np.uint8)
    ramp = np.linspace(0, 60, w, dtype=np.uint8)[None, None, :, None]
    return (np.broadcast_to(base, (t, h, w, 3)) // 2 + ramp).astype(np.uint8)


def _pyramid() -> dict:
    return {
        "levels": [
            {
                "level": 1,
                "shape": [2, 4, 5],
                "nodes": [
                    {"id": "blk/c:0", "layer": "blk/c", "channel": 0, "score": 1.0, "relevance": 1.0,
                     "parents": []},
                    {"id": "blk:c:1", "layer": "blk:c", "channel": 1, "score": 0.5, "relevance": 0.5,
                     "parents": []},
                ],
            }
        ]
    }  # fmt: skip


def _tubes() -> list[LayerTube]:
    rng = np.random.default_rng(5)
    vol = rng.random((2, 4, 5)).astype(np.float32)
    return [
        LayerTube("level 1 relevance (2/8 channels, 2x4x5)", 1, vol, ("F",)),
        LayerTube("level 2 relevance", 2, vol[:, ::-1].copy(), ("G",)),
        LayerTube("k0", 1, rng.random((2, 4, 5)), (), ("blk/c", 0)),
        LayerTube("k1", 1, rng.random((2, 4, 5)), (), ("blk:c", 1)),
    ]


def _report_data(path) -> dict:
    page = path.read_text()
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert blob
    return json.loads(blob.group(1))


def _decode_gif(uri: str) -> np.ndarray:
    import imageio.v3 as iio

    assert uri.startswith("data:image/gif;base64,")
    return iio.imread(base64.b64decode(uri.split(",", 1)[1]), index=None, mode="RGB")


def test_render_writes_short_names_and_reuses_bytes(tmp_path):
    pred = Prediction.from_logits(np.array([0.0, 1.0]), None, ["a", "b"])
    opts = RenderOptions(
        formats=frozenset({"mp4", "gif", "png", "stack", "report", "json"}), kernel_videos=True,
        kernel_max_side=20,
    )  # fmt: skip
    res = render_explanation(tmp_path, _frames(), _tubes(), _pyramid(), pred, options=opts)
    stems = kernel_file_stems([("blk/c", 0), ("blk:c", 1)])
    expected = {"level1.mp4", "level2.mp4", "level1.gif", "level2.gif", "stack_level1.png"}
    expected |= {"stack_level2.png", "report.html", "pyramid.json"}
    expected |= {f"frames/level{lv}/frame_{i:04d}.png" for lv in (1, 2) for i in range(6)}
    expected |= {f"kernels/{stems[n]}.{ext}" for n in stems for ext in ("mp4", "gif")}
    names = {p.relative_to(tmp_path).as_posix() for p in res.files}
    assert names == expected
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == expected  # nothing else, no temporary leftovers
    assert len({stems[("blk/c", 0)], stems[("blk:c", 1)]}) == 2  # "blk/c" and "blk:c" slug alike

    data = _report_data(tmp_path / "report.html")
    assert [layer["label"] for layer in data["layers"]] == [t.label for t in _tubes()[:2]]
    # The level GIF fits report_max_side, so the report embeds the file's bytes as they are.
    level1_uri = data["layers"][0]["gif"]
    assert base64.b64decode(level1_uri.split(",", 1)[1]) == (tmp_path / "level1.gif").read_bytes()
    # Kernel tubes in the report are small GIFs (longer side kernel_max_side), all frames kept.
    for nid in ("blk/c:0", "blk:c:1"):
        small = _decode_gif(data["kernels"][nid])
        assert small.shape == (6, 16, 20, 3)


def test_small_kernel_gif_shows_the_tube_where_it_is(tmp_path):
    """The kernel tube drawn straight at the small size puts its peak where the full-size one does."""
    frames = np.full((4, 40, 40, 3), 128, np.uint8)
    vol = np.zeros((2, 4, 4), np.float32)
    vol[1, 3, 0] = 1.0  # late frames, bottom-left corner
    tubes = [LayerTube("l", 1, vol, ("F",)), LayerTube("k", 1, vol, (), ("c", 0))]
    node = {"id": "c:0", "layer": "c", "channel": 0, "score": 1.0, "relevance": 1.0, "parents": []}
    pyramid = {"levels": [{"level": 1, "shape": [2, 4, 4], "nodes": [node]}]}
    opts = RenderOptions(formats=frozenset({"report"}), kernel_max_side=20, alpha=1.0)
    pred = Prediction.from_logits(np.array([1.0, 0.0]))
    render_explanation(tmp_path, frames, tubes, pyramid, pred, options=opts)
    small = _decode_gif(_report_data(tmp_path / "report.html")["kernels"]["c:0"]).astype(float)
    brightness = small.sum(axis=-1)  # viridis' top (yellow) is its brightest colour
    t, y, x = np.unravel_index(np.argmax(brightness), brightness.shape)
    assert t >= 2 and y >= 15 and x <= 4


def test_interrupted_render_leaves_no_file(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_png = render.encode_png

    def failing_png(image):
        calls["n"] += 1
        if calls["n"] == 2:  # after the videos started and the GIFs and first stack were written
            raise KeyboardInterrupt
        return real_png(image)

    monkeypatch.setattr(render, "encode_png", failing_png)
    opts = RenderOptions(formats=frozenset({"mp4", "gif", "stack", "report"}))
    pred = Prediction.from_logits(np.array([0.0, 1.0]))
    with pytest.raises(KeyboardInterrupt):
        render_explanation(tmp_path, _frames(), _tubes(), _pyramid(), pred, options=opts)
    assert calls["n"] == 2
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_gif_frames_are_not_dropped_or_reordered(tmp_path):
    from PIL import Image

    frames = _frames(t=5)
    render_explanation(
        tmp_path, frames, _tubes()[:1], None, Prediction.from_logits(np.array([1.0])),
        options=RenderOptions(formats=frozenset({"gif"}), fps=5.0),
    )  # fmt: skip
    with Image.open(io.BytesIO((tmp_path / "level1.gif").read_bytes())) as gif:
        assert gif.n_frames == 5 and gif.info["duration"] == 200


def test_display_size_scales_small_images_up_by_whole_factors():
    assert render.display_size(64, 64, 240) == (256, 256)  # x4: 3 would give 192
    assert render.display_size(60, 80, 240) == (180, 240)  # exactly reached: x3
    assert render.display_size(112, 100, 240) == (336, 300)
    assert render.display_size(300, 500, 240) == (300, 500)  # already large: never shrunk


def test_report_shows_small_clips_and_tubes_at_a_readable_size(tmp_path):
    """Each report image gets a display size that is its own decoded size times the smallest whole
    factor reaching the 240 px long side; a clip above report_max_side is still embedded at that bound."""
    frames = _frames(t=6, h=120, w=200)
    opts = RenderOptions(formats=frozenset({"report", "stack"}), report_max_side=100, kernel_max_side=20)
    pred = Prediction.from_logits(np.array([0.0, 1.0]))
    render_explanation(tmp_path, frames, _tubes(), _pyramid(), pred, options=opts)
    data = _report_data(tmp_path / "report.html")
    clip = _decode_gif(data["clip"]["gif"])
    assert clip.shape[1:3] == (60, 100)  # bytes bounded by report_max_side as before
    assert data["clip"]["display"] == [180, 300]  # 100 * 3 >= 240 > 100 * 2
    for layer in data["layers"]:
        assert _decode_gif(layer["gif"]).shape[1:3] == (60, 100) and layer["display"] == [180, 300]
    for uri in data["kernels"].values():
        assert _decode_gif(uri).shape[1:3] == (12, 20)
    assert data["kernel_display"] == [144, 240]  # 20 * 12
    # The report's stack picture is the file's, drawn from frames zoomed to a 160 px long side or more
    # (these 200 px frames are drawn as they are).
    stack = base64.b64decode(data["layers"][0]["stack"].split(",", 1)[1])
    assert stack == (tmp_path / "stack_level1.png").read_bytes()


def test_small_clip_stack_frames_are_drawn_at_least_160_px(tmp_path):
    from PIL import Image

    frames = _frames(t=6, h=24, w=32)
    opts = RenderOptions(formats=frozenset({"stack"}))
    pred = Prediction.from_logits(np.array([1.0]))
    render_explanation(tmp_path, frames, _tubes()[:1], None, pred, options=opts)
    with Image.open(tmp_path / "stack_level1.png") as im:
        width, height = im.size
    # Zoom 160 / 32 = 5: each frame 0.6 * 160 = 96 px wide (foreshortened), 120 px tall plus the shear.
    assert width == int(np.ceil(0.6 * 160 * (1 + 0.35 * 5) + 8))
    assert height == int(np.ceil(120 + 0.3 * 160 + 5 * 0.05 * 120 + 8))
