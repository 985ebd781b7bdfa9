"""The champion rule, and moves of @champion that happen whole or not at all."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dae_core.summary import REGISTERED_MODEL
from tasks.champion import decide


def test_first_model_becomes_champion():
    decision = decide("1", 91.0, None, None, margin=0.1)
    assert decision.action == "first-champion"


def test_promotion_needs_the_margin():
    assert decide("2", 91.2, "1", 91.0, margin=0.1).action == "promoted"
    held = decide("2", 91.05, "1", 91.0, margin=0.1)
    assert held.action == "challenger" and "margin 0.10" in held.reason
    assert decide("2", 90.0, "1", 91.0, margin=0.0).action == "challenger"


def test_a_non_finite_score_never_gets_an_alias():
    with pytest.raises(ValueError, match="refusing"):
        decide("3", math.nan, "1", 91.0, margin=0.1)


# Moving @champion and recording the move happen both or neither (docs/reliability.md): every
# value is checked before the first write; a write refused after the alias moved undoes the rest.

@pytest.fixture
def two_versions(tmp_path, monkeypatch, track_at):
    """A store of its own holding versions 1 (champion, with one recorded move) and 2 of the
    registered model, each from a finished run with a test accuracy: no training needed."""
    from mlflow import MlflowClient

    from adapters import champion

    track_at(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    client = MlflowClient()
    client.create_registered_model(REGISTERED_MODEL)
    for _ in range(2):
        run = client.create_run(client.create_experiment(f"e{time.time_ns()}"))
        client.log_metric(run.info.run_id, "test/accuracy", 90.0)
        client.set_terminated(run.info.run_id)
        client.create_model_version(REGISTERED_MODEL, source=str(tmp_path / "model"), run_id=run.info.run_id)
    champion.move_champion("1", "the first", "a test", decision=("first-champion", "the first"))
    return client


def _registry_state(client) -> tuple:
    from adapters import champion

    versions = [client.get_model_version(REGISTERED_MODEL, v) for v in ("1", "2")]
    return (champion.champion_history(), [(v.description or "", v.tags.get("champion_decision")) for v in versions],
            str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version))


REFUSABLE = ("set_registered_model_tag", "update_model_version", "set_model_version_tag")


@pytest.mark.parametrize("refused_write", REFUSABLE)
def test_a_move_whose_record_is_refused_moves_nothing_and_says_so(two_versions, monkeypatch, capsys, refused_write):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from dae_cli.main import main as dae_main

    before = _registry_state(two_versions)

    def refuse(*args, **kwargs):
        raise MlflowException("refused for the test")

    monkeypatch.setattr(MlflowClient, refused_write, refuse)
    assert dae_main(["champion", "--set", "2", "--reason", "a move the registry refuses to record"]) == 4
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and "nothing moved, @champion is version 1 as before" in said[0], said
    assert said[1].startswith("  fix: ") and "refused for the test" in said[0]
    monkeypatch.undo()
    assert _registry_state(two_versions) == before, "the alias, the history and the versions' records as they were"


def test_a_move_that_cannot_be_undone_says_it_is_half_made_and_how_to_mend_it(two_versions, monkeypatch, capsys):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from dae_cli.main import main as dae_main

    set_alias, calls = MlflowClient.set_registered_model_alias, []

    def alias_once(self, *args, **kwargs):  # the move goes through; the registry is gone for its undo
        calls.append(args)
        if len(calls) > 1:
            raise MlflowException("the registry went away")
        return set_alias(self, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise MlflowException("refused for the test")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", alias_once)
    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", refuse)
    assert dae_main(["champion", "--set", "2", "--reason", "half made"]) == 4
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 2 and "is half made" in said[0] and "the registry went away" in said[0], said
    assert 'dae champion --set 1 --reason "undo a half-made move"' in said[1]


@given(reason=st.text(max_size=700))
def test_a_reason_is_kept_as_one_line_of_the_history_exactly_or_refused_before_any_write(reason):
    from adapters.champion import ChampionMove, ChampionRefused, checked_reason

    try:
        kept = checked_reason(reason)
    except ChampionRefused as refused:
        assert refused.exit_code == 2 and refused.fix
        return
    line = ChampionMove(version="2", previous="1", at="2026-12-06T00:00:00Z", by="someone", reason=kept).line()
    assert "\n" not in line and len(line.splitlines()) == 1 and ChampionMove.from_line(line).reason == kept
    assert kept == reason.strip() and 0 < len(kept) <= 500


@given(number=st.integers(1, 10**12), written=st.sampled_from(["{}", " {} ", "0{}", "v{}", "V{}", "version {}"]))
def test_a_version_is_understood_however_a_person_writes_it(number, written):
    from adapters.champion import version_named

    assert version_named(written.format(number)) == str(number)


@given(text=st.text(max_size=20).filter(lambda text: not text.strip().lstrip("vV").strip().isdigit()))
def test_anything_but_a_version_number_is_refused(text):
    from adapters.champion import ChampionRefused, version_named

    with pytest.raises(ChampionRefused):
        version_named(text)


def test_a_bad_version_or_reason_is_refused_before_the_store_is_opened(tmp_path, track_at, capsys):
    from dae_cli.main import main as dae_main

    track_at(f"sqlite:///{tmp_path / 'never.db'}")
    for arguments, says in ((["--set", "two", "--reason", "x"], "'two' is not a version number"),
                            (["--set", "2", "--reason", "x" * 100_000], "the history keeps at most 500"),
                            (["--set", "2", "--reason", "ok\n2026-01-01 | 1 -> 9 | admin | forged"], "line break"),
                            (["--set", "2", "--reason", "   "], "--reason is empty")):
        assert dae_main(["champion", *arguments]) == 2
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 2 and says in said[0] and said[1].startswith("  fix: "), said
    assert not (tmp_path / "never.db").exists(), "refused before any store was opened or made"
