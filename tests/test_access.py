"""`dae users` without a server: which identities it makes, and what it refuses (the
real-stack test runs it against MLflow's login)."""

from __future__ import annotations

import pytest

from adapters.access import AccessError, identities_from_env
from dae_cli.main import main

PASSWORDS = {"DAE_WORKER_PASSWORD": "w" * 12, "DAE_SERVING_PASSWORD": "s" * 12}


def test_identities_default_to_the_stack_names_with_their_grants():
    worker, serving = identities_from_env(PASSWORDS)
    assert (worker.username, worker.model_permission) == ("dae-worker", "EDIT")
    assert (serving.username, serving.model_permission) == ("dae-serving", "READ")
    assert identities_from_env({**PASSWORDS, "DAE_SERVING_USERNAME": "scorer"})[1].username == "scorer"


@pytest.mark.parametrize("password, says", [("", "unset"), ("eleven-char", "too short")])
def test_a_missing_or_short_password_is_named_with_the_fix(password, says):
    with pytest.raises(AccessError, match=f"(?s)DAE_SERVING_PASSWORD is {says}.*fix: set DAE_SERVING_PASSWORD"):
        identities_from_env({**PASSWORDS, "DAE_SERVING_PASSWORD": password})


def test_dae_users_needs_a_server(monkeypatch, track_at, capsys):
    for name, value in PASSWORDS.items():
        monkeypatch.setenv(name, value)
    track_at("sqlite:///never-created.db")
    assert main(["users"]) == 4
    assert "needs an MLflow server" in capsys.readouterr().err
