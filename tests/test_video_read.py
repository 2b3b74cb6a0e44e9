"""Reading clips from every supported container, frame folders and .npy; clip selection; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcfp.errors import VideoReadError
from onnxcfp.video import Preprocessing, natural_key, read_clip, read_clips, select_frames

T, H, W = 12, 32, 48


def _gray_clip(n: int = T) -> np.ndarray:
    """Frame t is uniformly grey level 10 + 20 t, so each frame's index can be read back from its pixels."""
    return np.repeat((10 + 20 * np.arange(n, dtype=np.uint8))[:, None, None, None], H * W * 3).reshape(
        n, H, W, 3
    )


def _frame_ids(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 10) / 20) for f in frames]


@pytest.mark.parametrize(
    ("ext", "codec", "params"),
    [
        (".mp4", "libx264", ["-qp", "0"]),
        (".avi", "mpeg4", ["-q:v", "1"]),
        (".webm", "libvpx", ["-b:v", "2M"]),
        (".mkv", "libx264", ["-qp", "0"]),
    ],
)
def test_video_containers_round_trip(tmp_path, ext, codec, params):
    import imageio.v2 as iio2

    frames = _gray_clip()
    path = tmp_path / f"clip{ext}"
    writer = iio2.get_writer(
        path,
        fps=12,
        codec=codec,
        macro_block_size=1,
        quality=None,
        ffmpeg_log_level="error",
        output_params=params,
    )
    for f in frames:
        writer.append_data(f)
    writer.close()
    clip = read_clip(path, Preprocessing(frames=T))
    assert clip.frames.shape == (T, H, W, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(12.0)
    # Lossy codecs on flat grey: within a few levels of the original.
    assert np.abs(clip.frames.astype(int) - frames.astype(int)).max() <= 4
    assert clip.tensor.shape == (1, 3, T, H, W)


def test_gif_round_trip(tmp_path):
    import imageio.v3 as iio

    frames = _gray_clip()
    frames[:, :, : W // 2, 0] = 200  # some colour, still representable exactly in a 256-colour palette
    path = tmp_path / "clip.gif"
    iio.imwrite(path, frames, duration=100, loop=0)
    clip = read_clip(path, Preprocessing(frames=T))
    assert clip.frames.shape == (T, H, W, 3)
    np.testing.assert_array_equal(clip.frames, frames)
    assert clip.fps == pytest.approx(10.0)


def test_frames_folder_natural_order(tmp_path):
    import imageio.v3 as iio

    frames = _gray_clip()
    for t, f in enumerate(frames):  # names that sort wrongly as plain strings: f1, f10, f11, f2...
        iio.imwrite(tmp_path / f"f{t + 1}.png", f)
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = read_clip(tmp_path, Preprocessing(frames=T))
    np.testing.assert_array_equal(clip.frames, frames)
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]


def test_frames_folder_jpg(tmp_path):
    import imageio.v3 as iio

    frames = _gray_clip(4)
    for t, f in enumerate(frames):
        iio.imwrite(tmp_path / f"{t:03d}.jpg", f, quality=95)
    clip = read_clip(tmp_path, Preprocessing(frames=4))
    assert np.abs(clip.frames.astype(int) - frames.astype(int)).max() <= 3


def test_npy_uint8_float_and_gray(tmp_path):
    frames = _gray_clip()
    np.save(tmp_path / "u8.npy", frames)
    np.save(tmp_path / "f.npy", frames.astype(np.float32) / 255.0)
    np.save(tmp_path / "g.npy", frames[..., 0])
    for name in ("u8.npy", "f.npy", "g.npy"):
        clip = read_clip(tmp_path / name, Preprocessing(frames=T))
        np.testing.assert_array_equal(clip.frames, frames)


def test_selection_start_stride_seconds_and_several_clips(tmp_path):
    np.save(tmp_path / "c.npy", _gray_clip())
    pre = Preprocessing(frames=4)
    assert _frame_ids(read_clip(tmp_path / "c.npy", pre, start=2, stride=3).frames) == [2, 5, 8, 11]
    clip = read_clip(tmp_path / "c.npy", pre, start_seconds=0.5, fps=10)
    assert _frame_ids(clip.frames) == [5, 6, 7, 8]
    np.testing.assert_array_equal(clip.frame_indices, [5, 6, 7, 8])
    clips = read_clips(tmp_path / "c.npy", pre, clips=3)
    assert [_frame_ids(c.frames)[0] for c in clips] == [0, 4, 8]  # spread evenly, last one ends at 11


def test_loop_and_pad_fill(tmp_path):
    np.save(tmp_path / "c.npy", _gray_clip(5))
    pre = Preprocessing(frames=8)
    loop = read_clip(tmp_path / "c.npy", pre, fill="loop")
    pad = read_clip(tmp_path / "c.npy", pre, fill="pad")
    assert _frame_ids(loop.frames) == [0, 1, 2, 3, 4, 0, 1, 2] and loop.filled == 3
    assert _frame_ids(pad.frames) == [0, 1, 2, 3, 4, 4, 4, 4] and pad.filled == 3


def test_too_short_says_counts_and_offers_fill(tmp_path):
    np.save(tmp_path / "c.npy", _gray_clip(5))
    with pytest.raises(VideoReadError) as err:
        read_clip(tmp_path / "c.npy", Preprocessing(frames=16))
    msg = str(err.value)
    assert "5 frames" in msg and "16" in msg and "--loop" in msg and "--pad" in msg and "\n" not in msg
    assert err.value.exit_code == 2


def test_select_frames_matches_naive_statement():
    for count, length, start, stride in [(30, 8, 0, 1), (30, 8, 3, 2), (60, 16, 10, 3)]:
        (idx,) = select_frames(count, length, start=start, stride=stride)
        assert idx.tolist() == [start + k * stride for k in range(length)]


def test_bad_inputs_are_one_line_video_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 40)
    (tmp_path / "nothing").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    import imageio.v3 as iio

    iio.imwrite(mixed / "1.png", np.zeros((8, 8, 3), np.uint8))
    iio.imwrite(mixed / "2.png", np.zeros((8, 10, 3), np.uint8))
    cases = {
        "empty.mp4": "empty",
        "junk.mp4": "cannot read",
        "nothing": "no .jpg",
        "mixed": "mixed sizes",
        "missing.avi": "does not exist",
    }
    for name, words in cases.items():
        with pytest.raises(VideoReadError) as err:
            read_clip(tmp_path / name, Preprocessing(frames=2))
        assert words in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
