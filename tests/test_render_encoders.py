"""The fast encoders and writers behind rendering, each against an independent oracle: the shared GIF
palette against a brute-force nearest colour, GIF and MP4 files decoded back with imageio, the batched
atomic writer's all-or-nothing behaviour, the boxed tube stack against the plain full-canvas
composition, and resize_volume against its interpolation-matrix definition."""

from __future__ import annotations

import io

import numpy as np
import pytest

from onnxcfp.render.tube_stack import MIN_FRAME_SIDE, StackGeometry, tube_stack
from onnxcfp.render.writers import AtomicBatch, GifPalette, PendingMp4s, encode_gif, encode_png
from onnxcfp.volume import linear_resize_matrix, resize_volume


def _moving_frames(t: int = 6, h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    """Smooth many-coloured frames, different from one another (so no GIF frame gets merged)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    frames = [
        np.dstack([(xx * 9 + 17 * k + base[0]) % 256, (yy * 11 + base[1]) % 256, (xx * yy + 5 * k) % 256])
        for k in range(t)
    ]
    return np.stack(frames).astype(np.uint8)


def test_palette_keeps_exact_colours_when_there_are_few():
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    frames = colours[rng.integers(0, 40, (5, 12, 10))]
    palette = GifPalette.from_images([frames])
    np.testing.assert_array_equal(palette.colours[palette.indices(frames)], frames)


def test_palette_lookup_is_near_the_brute_force_nearest_colour():
    frames = _moving_frames()
    palette = GifPalette.from_images([frames])
    assert 200 <= len(palette.colours) <= 256  # more than 256 colours in: a full palette out
    mapped = palette.colours[palette.indices(frames)].astype(np.float64)
    pixels = frames.reshape(-1, 3).astype(np.float64)
    brute = np.sqrt(((pixels[:, None, :] - palette.colours[None].astype(np.float64)) ** 2).sum(-1)).min(1)
    ours = np.sqrt(((pixels - mapped.reshape(-1, 3)) ** 2).sum(-1))
    # The table maps a 4x4x4 cell by its centre, at most sqrt(3) * 1.5 from any pixel in it; by the
    # triangle inequality the chosen colour is at most twice that further than the nearest one.
    assert np.all(ours <= brute + 2 * np.sqrt(3) * 1.5 + 1e-9)
    assert ours.mean() <= brute.mean() + 0.5  # and almost always it is the nearest itself


def test_shared_palette_gif_decodes_to_the_palette_colours(tmp_path):
    import imageio.v3 as iio

    frames = _moving_frames(t=5)
    other = frames[:, ::-1].copy()
    palette = GifPalette.from_images([frames, other])
    for clip in (frames, other):
        expected = palette.colours[palette.indices(clip)]
        decoded = iio.imread(encode_gif(clip, 10.0, palette), index=None, mode="RGB")
        np.testing.assert_array_equal(decoded, expected)  # GIF itself is lossless given the palette
    # Identical consecutive frames merge into one frame whose delay is the sum: timing is kept.
    from PIL import Image

    doubled = np.concatenate([frames[:1], frames[:1], frames[1:3]])
    with Image.open(io.BytesIO(encode_gif(doubled, 10.0, palette))) as gif:
        delays = []
        for i in range(gif.n_frames):
            gif.seek(i)
            delays.append(gif.info["duration"])
    assert delays == [200, 100, 100]


def test_encode_png_is_lossless():
    import imageio.v3 as iio

    image = _moving_frames(t=1)[0]
    np.testing.assert_array_equal(iio.imread(encode_png(image)), image)
    with pytest.raises(ValueError):
        encode_png(_moving_frames(t=2))


def test_one_ffmpeg_process_writes_several_videos(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(2)
    # Flat colours per frame (codecs keep them closely), odd sizes (padded by one edge pixel), and clips
    # of different lengths: each output must hold exactly its own clip.
    clips = [
        np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), (n, 17, 23, 3)).copy()
        for n in (4, 7, 5)
    ]
    paths = PendingMp4s([(tmp_path / f"v{i}.mp4", c) for i, c in enumerate(clips)], fps=6).wait()
    assert paths == [tmp_path / f"v{i}.mp4" for i in range(3)]
    for path, clip in zip(paths, clips, strict=True):
        decoded = iio.imread(path, index=None)
        assert decoded.shape == (len(clip), 18, 24, 3)
        assert np.abs(decoded[:, :17, :23].astype(int) - clip).max() <= 6
        assert iio.immeta(path)["fps"] == pytest.approx(6)


def test_mp4_failure_is_reported_and_sizes_must_agree(tmp_path):
    clip = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(OSError, match="ffmpeg could not write"):
        PendingMp4s([(tmp_path / "missing-folder" / "a.mp4", clip)], fps=8).wait()
    with pytest.raises(ValueError, match="one size"):
        PendingMp4s([(tmp_path / "a.mp4", clip), (tmp_path / "b.mp4", clip[:, :4])], fps=8)


def test_atomic_batch_is_all_or_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), AtomicBatch() as batch:
        batch.write_text(tmp_path / "a.txt", "a")
        batch.write_text(tmp_path / "keep.txt", "new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"
    with AtomicBatch() as batch:
        batch.write_text(tmp_path / "a.txt", "a")
        batch.write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
        # Until the commit only hidden temporary names exist.
        assert not (tmp_path / "a.txt").exists() and not (tmp_path / "sub" / "b.bin").exists()
    assert (tmp_path / "a.txt").read_text() == "a"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert not list(tmp_path.rglob(".*tmp-*"))


def _naive_stack(
    frames: np.ndarray, current: int, geo: StackGeometry, ghost_alpha: float = 0.35
) -> np.ndarray:
    """The stack composed on the whole canvas for every frame (no boxes): the plain definition."""
    from PIL import Image, ImageDraw

    t_count, h, w = frames.shape[:3]
    ch, cw = geo.canvas_size
    canvas = np.full((ch, cw, 3), 255.0, np.float32)
    a, s, z = geo.squeeze, geo.shear, geo.zoom
    for t in [*(t for t in range(t_count - 1, -1, -1) if t != current), current]:
        ox, oy = geo.origin(t)
        rgba = np.dstack([frames[t], np.full((h, w), 255, np.uint8)])
        # Inverse of X = ox + a z x, Y = oy + z (y - s x) over the whole canvas.
        warped = np.asarray(
            Image.fromarray(rgba, "RGBA").transform(
                (cw, ch),
                Image.Transform.AFFINE,
                (1.0 / (a * z), 0.0, -ox / (a * z), s / (a * z), 1.0 / z, -oy / z - s * ox / (a * z)),
                resample=Image.Resampling.BILINEAR,
                fillcolor=(0, 0, 0, 0),
            )
        ).astype(np.float32)
        alpha = warped[..., 3:] / 255.0 * (1.0 if t == current else ghost_alpha)
        canvas = canvas * (1.0 - alpha) + warped[..., :3] * alpha
        if t != current:
            ring_img = Image.new("L", (cw, ch), 0)
            corners = [geo.project(t, x, y) for x, y in ((0, 0), (w, 0), (w, h), (0, h))]
            ImageDraw.Draw(ring_img).polygon(corners, outline=255)
            ring = (np.asarray(ring_img, np.float32) / 255.0)[..., None]
            canvas = canvas * (1.0 - 0.5 * ring) + 45.0 * ring
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("t", "h", "w", "current", "zoom"),
    [(6, 30, 40, 2, 1.0), (3, 9, 13, 0, 1.0), (8, 24, 20, 7, 1.0), (4, 9, 13, 1, 2.5), (5, 16, 12, 4, 3.0)],
)
def test_boxed_tube_stack_matches_full_canvas_composition(t, h, w, current, zoom):
    frames = np.random.default_rng(t).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    geo = StackGeometry(t, h, w, zoom=zoom)
    fast, naive = tube_stack(frames, current, geometry=geo), _naive_stack(frames, current, geo)
    assert fast.shape == naive.shape
    assert np.abs(fast.astype(int) - naive).max() <= 1  # float rounding of the shifted coordinates


def test_small_frames_are_stacked_at_a_readable_size_with_pixels_where_projected():
    """A 64x48 clip's stack draws each frame with its longer side >= MIN_FRAME_SIDE px; a lone bright
    pixel of the opaque frame lands where the documented map X = ox + a z x, Y = oy + z (y - s x) sends
    its centre (checked by hand-written arithmetic, not by the geometry class)."""
    t_count, h, w, current, (py, px) = 6, 48, 64, 3, (10, 40)
    frames = np.zeros((t_count, h, w, 3), np.uint8)
    frames[current, py, px] = 255
    img = tube_stack(frames, current, background=(0, 0, 0))
    z = MIN_FRAME_SIDE / 64
    a, s, margin = 0.6, 0.3, 4
    ox = margin + current * a * z * w * 0.35
    oy = margin + s * z * w + (t_count - 1 - current) * 0.05 * z * h
    x_c, y_c = ox + a * z * (px + 0.5), oy + z * (py + 0.5 - s * (px + 0.5))
    bright = np.argwhere(img.min(axis=-1) > 150)  # the white pixel, bilinearly spread; outlines are grey
    assert len(bright)
    cy, cx = bright.mean(axis=0) + 0.5
    assert abs(cx - x_c) <= 1.0 and abs(cy - y_c) <= 1.0
    # Canvas: the squeezed frames' spread plus margins, at the zoomed size.
    assert img.shape[1] == int(np.ceil(a * z * w * (1 + 0.35 * (t_count - 1)) + 2 * margin))
    # A large clip is left at its size (zoom 1), never shrunk.
    assert StackGeometry.fit(2, 300, 200).zoom == 1.0 and StackGeometry.fit(2, 40, 80).zoom == 2.0


def test_resize_volume_matches_the_interpolation_matrices():
    rng = np.random.default_rng(5)
    for _ in range(60):
        nd = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(1, 9, nd))
        size = tuple(int(n) for n in rng.integers(1, 30, nd))
        vol = rng.normal(size=shape)
        expected = vol
        for axis, n_out in enumerate(size):  # out = M_axis applied along each axis in turn
            m = linear_resize_matrix(expected.shape[axis], n_out)
            expected = np.moveaxis(np.tensordot(m, np.moveaxis(expected, axis, 0), axes=1), 0, axis)
        got = resize_volume(vol, size)
        assert got.shape == size and got.dtype == np.float32
        np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-6)
