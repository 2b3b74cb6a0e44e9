"""User mistakes end in one ``error: ...`` line and exit code 2, never a traceback, and as early as they can:
bad options before a model is loaded or a batch starts, output paths blocked by a file or a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from onnxcfp.cli import app
from onnxcfp.errors import ConfigError
from onnxcfp.explain import Explainer, ExplainOptions
from onnxcfp.render.writers import AtomicBatch, write_json

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "r3d_basic_legacy.onnx"
runner = CliRunner()


def _one_error_line(result) -> str:
    """The single ``error:`` line a failed command printed (asserting there is nothing else)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an escaped exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depth", 0),
        ("depth", True),
        ("theta", -1.0),
        ("theta", 1.5),
        ("top_n", 0),
        ("method", "foo"),
        ("residual", "foo"),
        ("tube", "foo"),
        ("normalise", "foo"),
        ("normalise", "original"),  # the authors' normalisation belongs to the weights method only
        ("score", "weights"),  # a runtime score, but not one a class label can be explained by
        ("fill", "foo"),
        ("device", "foo"),
        ("threads", 0),
        ("formats", frozenset({"tiff"})),
        ("colormap", "nope"),
    ],
)
def test_explain_options_refuse_each_bad_value_naming_it(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        ExplainOptions(**{field: value})
    message = str(err.value)
    assert "\n" not in message
    named = {"device": "provider", "threads": "intra_threads", "formats": "format", "colormap": "colour map"}
    assert named.get(field, field) in message


def test_explain_options_accept_the_documented_values() -> None:
    ExplainOptions()  # each of these would raise if a valid value were refused
    ExplainOptions(method="weights", normalise="original", tube="sum", residual="all", score="probability")
    ExplainOptions(theta=0, depth=1, top_n=1, fill="pad", device="cpu", threads=1, formats=frozenset({"mp4"}))


def test_bad_option_is_reported_before_the_model_is_looked_at(tmp_path: Path) -> None:
    # the model does not exist: the option error still wins, so it was checked first
    result = runner.invoke(app, ["explain", str(tmp_path / "nope.onnx"), "clip.npy", "--theta", "-1"])
    assert "theta" in _one_error_line(result)


def test_unknown_label_fails_when_the_explainer_is_built() -> None:
    with pytest.raises(ConfigError, match="label 99 is out of range"):
        Explainer(MODEL, ExplainOptions(label=99, kernel_tubes=False))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--top-n", "0"], "top_n"), (["--tube", "foo"], "tube"), (["--retries", "-1"], "--retries")],
)
def test_batch_refuses_bad_options_before_any_clip(tmp_path: Path, extra: list[str], needle: str) -> None:
    np.save(tmp_path / "clip.npy", np.zeros((16, 64, 64, 3), np.uint8))
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(MODEL), str(tmp_path / "clip.npy"), "-o", str(out), *extra])
    assert needle in _one_error_line(result)
    assert not (out / "summary.csv").exists()  # refused up front, not recorded as a failed clip


def test_writers_name_the_file_that_blocks_an_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    with pytest.raises(ConfigError, match=r"notes\.txt is a file, not a folder"):
        write_json(blocker / "sub" / "pyramid.json", {})
    with pytest.raises(ConfigError, match=r"notes\.txt is a file, not a folder"), AtomicBatch() as batch:
        batch.write_text(blocker / "a.txt", "x")
    folder = tmp_path / "report.json"
    folder.mkdir()
    with pytest.raises(ConfigError, match="it is a folder"):
        write_json(folder, {})
    assert blocker.read_text() == "keep me" and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json"]  # no temp files


def test_explain_into_a_file_is_one_line(tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((16, 64, 64, 3), np.uint8))
    blocker = tmp_path / "out.txt"
    blocker.write_text("")
    args = ["explain", str(MODEL), str(clip), "-o", str(blocker), "--formats", "json"]
    assert "is a file, not a folder" in _one_error_line(runner.invoke(app, args))


def test_regress_zoo_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "zoo.txt").write_text("")
    result = runner.invoke(app, ["regress", str(tmp_path / "zoo.txt"), "--golden", str(tmp_path)])
    assert "zoo folder" in _one_error_line(result) and "is a file" in result.output


def test_unreachable_dask_scheduler_address_is_one_line() -> None:
    pytest.importorskip("distributed")
    from onnxcfp.batch.on_dask import connect

    with pytest.raises(ConfigError, match="tcp://host:port or local:N") as err, connect("not-an-address"):
        pass
    assert "\n" not in str(err.value)
