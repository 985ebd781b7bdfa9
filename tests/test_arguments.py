"""Every flag and path of `dae`, checked before any work: the promise of docs/reliability.md
("one line of cause, one of fix, the documented exit code, nothing left behind") over
generated values."""

from __future__ import annotations

import math
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dae_cli.main import build_parser
from dae_cli.main import main as dae_main
from dae_core.comparison import MAX_PARALLEL, MAX_SEEDS, MAX_TRIALS
from dae_core.config import ConfigError

# (command, flag, lowest, highest) of every counted flag.
COUNTS = [("compare", "--seeds", 1, MAX_SEEDS), ("compare", "--parallel", 1, MAX_PARALLEL),
          ("tune", "--trials", 1, MAX_TRIALS), ("tune", "--parallel", 1, MAX_PARALLEL),
          ("serve", "--port", 1, 65535), ("serve", "--workers", 1, 64), ("setup", "--zombie-after", 45, 7 * 24 * 3600),
          ("bench", "--epochs", 1, 100), ("run", "--seed", 0, 2**31 - 1)]
VALUES = st.one_of(st.integers(), st.integers(-3, 70_000), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12))


def _parsed(*arguments: str):
    return build_parser().parse_args(list(arguments))


def _refused_in_two_lines(error: ConfigError) -> None:
    lines = str(error).splitlines()
    assert error.exit_code == 2 and len(lines) == 2 and lines[1].startswith("  fix: "), lines


@pytest.mark.parametrize(("command", "flag", "low", "high"), COUNTS, ids=lambda value: str(value))
@given(value=VALUES)
def test_a_count_is_taken_in_its_range_and_anything_else_refused_in_two_lines(command, flag, low, high, value):
    text = str(value)
    try:
        parsed = _parsed(command, f"{flag}={text}")
    except ConfigError as refused:
        _refused_in_two_lines(refused)
        assert flag in str(refused)
        try:
            number = int(text)
        except ValueError:
            return
        assert not low <= number <= high, f"{text} refused"
        return
    assert getattr(parsed, flag.removeprefix("--").replace("-", "_")) == int(text)
    assert low <= int(text) <= high


@given(value=VALUES)
def test_the_body_limit_is_a_finite_size_up_to_a_gibibyte(value):
    try:
        parsed = _parsed("serve", f"--max-body-mb={value}")
    except ConfigError as refused:
        _refused_in_two_lines(refused)
        try:
            number = float(str(value))
        except ValueError:
            return
        assert not (math.isfinite(number) and 0 < number <= 1024), f"{value} refused"
        return
    assert 0 < parsed.max_body_mb <= 1024


def test_an_unknown_flag_or_command_is_refused_in_two_lines():
    for arguments in (["run", "--bogus"], ["nonsense"], ["compare", "--cells", "no-such-cell"]):
        with pytest.raises(ConfigError) as refused:
            _parsed(*arguments)
        _refused_in_two_lines(refused.value)


@pytest.fixture
def untouched_store(tmp_path, monkeypatch, track_at):
    """The tracking store a refused command must not create."""
    store = tmp_path / "store" / "mlflow.db"
    track_at(f"sqlite:///{store}")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    yield store
    assert not store.parent.exists(), "a refused command made a store"
    assert not (tmp_path / "prefect-home").exists(), "a refused command started a Prefect server"


def _paths(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {"a file": a_file, "a folder under a file": a_file / "below", "a folder": tmp_path}


@pytest.mark.parametrize("command", ["run", "compare", "tune"])
@pytest.mark.parametrize("where", ["a file", "a folder under a file"])
def test_a_work_dir_that_cannot_be_a_folder_is_refused_before_anything_starts(untouched_store, tmp_path, capsys,
                                                                              command, where):
    work = _paths(tmp_path)[where]
    assert dae_main([command, "--preset", "smoke", "--work-dir", str(work), "--no-download"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and f"--work-dir {work}" in said[0] and said[1].startswith("  fix: "), said


@pytest.mark.parametrize("command", ["run", "compare", "tune"])
@pytest.mark.parametrize("where", ["a folder", "a folder under a file"])
def test_a_summary_that_cannot_be_written_is_refused_before_anything_starts(untouched_store, tmp_path, capsys,
                                                                            command, where):
    summary = _paths(tmp_path)[where]
    assert dae_main([command, "--preset", "smoke", "--summary-json", str(summary), "--work-dir",
                     str(tmp_path / "work"), "--no-download"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and f"--summary-json {summary}" in said[0], said
    assert not (tmp_path / "work").exists(), "nothing left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_a_folder_nobody_may_write_is_refused(untouched_store, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert dae_main(["run", "--preset", "smoke", "--work-dir", str(locked / "work"), "--no-download"]) == 2
    assert "may not be written by this user" in capsys.readouterr().err


@given(host=st.sampled_from(["256.1.1.1", "no-such-host.invalid", "10.255.255.254", "::ffff:1:1"]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=4)
def test_serve_refuses_an_address_it_cannot_listen_on_before_fetching_a_model(untouched_store, capsys, host):
    assert dae_main(["serve", "--host", host, "--port", "5999"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and "cannot listen there" in said[0], said


def test_serve_refuses_a_port_in_use_before_fetching_a_model(untouched_store, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert dae_main(["serve", "--port", str(port)]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and f"--port {port}: cannot listen there" in said[0], said


@pytest.mark.parametrize("arguments", [["predict", "/nonexistent.png"], ["champion"], ["serve", "--port", "5998"]])
def test_reading_commands_never_create_a_store(untouched_store, capsys, arguments, tmp_path):
    """A store that does not exist is named, not made (nor is any other file)."""
    picture = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(picture)
    if arguments[0] == "predict":
        arguments = ["predict", str(picture)]
    assert dae_main(arguments) == 4
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-2].startswith("dae: no tracking store at sqlite:///") and said[-1].startswith("  fix: "), said


@given(name=st.one_of(st.text(max_size=20), st.text(min_size=490, max_size=520)))
def test_an_experiment_name_is_one_line_of_1_to_500_characters(name):
    """An empty or overlong name used to reach MLflow inside the flow: a traceback."""
    if name.startswith("-"):
        name = f"x{name}"  # argparse reads a leading dash as a flag
    try:
        parsed = _parsed("run", f"--experiment={name}")
    except ConfigError as refused:
        _refused_in_two_lines(refused)
        assert not name.strip() or len(name) > 500 or any(ord(c) < 32 or ord(c) == 127 for c in name)
        return
    assert parsed.experiment == name and 0 < len(name) <= 500


# Put together here: the repository's secret scan (test_reliability.py) flags a password written in a URL.
@pytest.mark.parametrize("storage", ["garbage://x", "not a url", "postgresql+nodriver://user:" + "secret" + "@host/db"])
def test_tune_refuses_a_studies_url_sqlalchemy_cannot_open_without_echoing_it(untouched_store, tmp_path, capsys,
                                                                             data_root, storage):
    assert dae_main(["tune", "--preset", "smoke", "--storage", storage, "--work-dir", str(tmp_path / "work"),
                     "--data-dir", str(data_root), "--no-download"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and "no database URL SQLAlchemy can open" in said[0] and "secret" not in said[0], said
