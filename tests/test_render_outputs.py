"""Writers (atomic, round-tripped through imageio), tube stack, pyramid figure, importance, and the whole
render_explanation run including HTML escaping."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from onnxcfp.render import LayerTube, Prediction, RenderOptions, render_explanation, tube_stack
from onnxcfp.render.pyramid_figure import kernel_count_text, pyramid_figure
from onnxcfp.render.tube_stack import StackGeometry
from onnxcfp.render.writers import atomic_path, write_gif, write_mp4, write_png_frames, write_text


def _frames(t=8, h=40, w=48):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (t, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(base, (t, h, w, 3)).copy()  # flat colours: codecs keep them closely


def test_atomic_write_leaves_nothing_on_failure_and_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_mp4_gif_png_round_trip(tmp_path):
    import imageio.v3 as iio

    from onnxcfp.video import Preprocessing, read_clip

    frames = _frames(h=41, w=47)  # odd sizes: the MP4 writer pads one edge pixel
    mp4 = read_clip(write_mp4(tmp_path / "a.mp4", frames, 8), Preprocessing(frames=8))
    assert mp4.frames.shape == (8, 42, 48, 3) and mp4.fps == pytest.approx(8)
    assert np.abs(mp4.frames[:, :41, :47].astype(int) - frames).max() <= 6
    gif = iio.imread(write_gif(tmp_path / "a.gif", frames, 8), index=None, mode="RGB")
    assert gif.shape == frames.shape and np.abs(gif.astype(int) - frames).max() <= 8
    pngs = write_png_frames(tmp_path / "f", frames)
    assert len(pngs) == 8
    np.testing.assert_array_equal(iio.imread(pngs[5]), frames[5])
    assert not [p for p in tmp_path.rglob(".*tmp-*")]


def test_tube_stack_current_frame_is_opaque_and_whole():
    frames = np.zeros((6, 30, 40, 3), np.uint8)
    for t in range(6):
        frames[t] = (40 * t, 120, 200 - 30 * t)
    img = tube_stack(frames, current=2)
    geo = StackGeometry.fit(6, 30, 40)
    assert geo.zoom == 4.0 and img.shape[:2] == geo.canvas_size  # 40 px frames drawn 160 px wide
    exact = np.all(img == frames[2, 0, 0], axis=-1).sum()
    area = geo.squeeze * geo.zoom**2 * 40 * 30  # the sheared, zoomed frame is a parallelogram of this area
    assert 0.9 * area <= exact <= 1.02 * area
    # Other frames are translucent: their colour never appears unblended over a large area.
    assert np.all(img == frames[4, 0, 0], axis=-1).sum() < 0.05 * area


def _toy_pyramid():
    return {
        "schema": "onnxcfp.pyramid/1",
        "levels": [
            {
                "level": 1,
                "tensors": ["F"],
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
                "tensors": ["X2"],
                "shape": [4, 8, 8],
                "nodes": [
                    {
                        "id": "c1:1",
                        "layer": "c1",
                        "channel": 1,
                        "score": 0.9,
                        "relevance": 0.8,
                        "parents": [{"node": "c2:0", "score": 0.9}, {"node": "c2:3", "score": 0.6}],
                    }
                ],
            },
        ],
    }


def test_pyramid_figure_captions_count_kernels_in_the_right_number():
    """Level 2 of the toy pyramid has one kernel: its caption reads "1 kernel" (compared with the text
    drawn on its own), not "1 kernels"."""
    from PIL import Image, ImageDraw, ImageFont

    from onnxcfp.render.pyramid_figure import CELL_H, GAP_Y, HEADER_W

    assert [kernel_count_text(1), kernel_count_text(2), kernel_count_text(5, 3)] == [
        "1 kernel", "2 kernels", "5 kernels (+3 not shown)",
    ]  # fmt: skip
    img, _ = pyramid_figure(_toy_pyramid())
    top = 10 + 1 * (CELL_H + GAP_Y) + 32  # the third header line of the second row

    def caption(text: str) -> np.ndarray:
        canvas = Image.new("RGB", (HEADER_W - 10, 14), (255, 255, 255))
        ImageDraw.Draw(canvas).text((0, 0), text, fill=(60, 60, 60), font=ImageFont.load_default())
        return np.asarray(canvas)

    drawn = img[top : top + 14, 6 : HEADER_W - 4]
    np.testing.assert_array_equal(drawn, caption("1 kernel"))
    assert not np.array_equal(drawn, caption("1 kernels"))


def test_pyramid_figure_cells_and_edges():
    vols = {"c2:0": np.ones((2, 4, 4), np.float32) * np.arange(2)[:, None, None]}
    img, lay = pyramid_figure(_toy_pyramid(), vols)
    assert img.shape[:2] == lay.size and set(lay.boxes) == {"c2:0", "c2:3", "c1:1"}
    (l0, t0, r0, b0), (l1, t1, r1, _b1) = lay.boxes["c2:0"], lay.boxes["c1:1"]
    assert t1 > b0  # level 2 is drawn below level 1
    # The edge's midpoint is grey.
    mid = (((l0 + r0) // 2 + (l1 + r1) // 2) // 2, (b0 + t1) // 2)
    assert tuple(img[mid[1], mid[0]]) == (150, 150, 150)
    # The first strip frame of c2:0 is all zeros -> the colour map's bottom colour.
    from onnxcfp.render.colormap import colormap_lut

    np.testing.assert_array_equal(img[t0 + 10, l0 + 10], colormap_lut("viridis")[0])


def test_render_explanation_writes_everything_and_escapes_names(tmp_path):
    frames = _frames(t=8, h=32, w=32)
    vol = np.zeros((2, 4, 4), np.float32)
    vol[1, 2, 2] = 1.0  # all mass on the second half of the clip
    tubes = [LayerTube("level 1 <c2>", 1, vol, ("F",)), LayerTube("k", 1, vol, (), ("c2", 0))]
    evil = '<script>alert("x")</script>&'
    pred = Prediction.from_logits(np.array([0.1, 3.0, 0.5]), None, ["a", evil, "c"])
    assert pred.index == 1 and pred.top5[0].name == evil and len(pred.top5) == 3
    res = render_explanation(
        tmp_path,
        frames,
        tubes,
        _toy_pyramid(),
        pred,
        options=RenderOptions(formats=frozenset({"gif", "importance", "json", "report", "pyramid", "stack"})),
        clip_source='clip"<b>.mp4',
        source_frames=range(10, 18),
    )
    names = {p.relative_to(tmp_path).as_posix() for p in res.files}
    assert {"report.html", "pyramid.json", "pyramid.png", "importance.png", "importance.csv"} <= names
    assert {"level1.gif", "stack_level1.png"} <= names  # short stable names; the label stays inside
    assert not any(n.startswith("kernels/") for n in names)  # kernel files only with kernel_videos
    assert json.loads((tmp_path / "pyramid.json").read_text()) == _toy_pyramid()
    imp = res.importance["level 1 <c2>"]
    assert imp.sum() == pytest.approx(1.0) and imp[:4].sum() < 0.2  # the mass sits in frames 4..7
    with open(tmp_path / "importance.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["frame", "source_frame", "level 1 <c2>"] and rows[1][1] == "10" and len(rows) == 9
    page = (tmp_path / "report.html").read_text()
    assert evil not in page and "<b>" not in page and "<c2>" not in page
    assert "&lt;script&gt;" in page  # the title, escaped by the server side
    assert "level 1 \\u003cc2\\u003e" in page  # the descriptive label is inside the report
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
