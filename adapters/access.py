"""``dae users``: the team stack's MLflow identities and what each may do.

Run by the stack's one-shot ``mlflow-users`` service as MLflow's admin (the standard
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), and again after a password
changes in ``.env``: it creates each identity or sets its password, and (re)grants its
permission on the registered model. People's own accounts are the admin's to create
(MLflow's UI or ``AuthServiceClient``); they read everything (``default_permission =
READ``) and change only what they are granted.

Least privilege as MLflow 3.17 allows it: the worker registers model versions and so holds
EDIT on ``dae-mnist-classifier``, and MLflow's basic-auth checks the same "update" right
for moving an alias (``validate_can_create_model_version`` and
``validate_can_set_model_or_prompt_version_alias`` both require it), so the identity that
registers versions can move ``@champion`` too; what EDIT withholds is deletion (models,
versions, aliases). The serving identity only reads. docs/deployment.md, "Security".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from dae_core.errors import EXIT_CONFIG, DaeError
from dae_core.summary import REGISTERED_MODEL

# MLflow's basic-auth refuses shorter passwords.
MIN_PASSWORD_LENGTH = 12


class AccessError(DaeError):
    """The identities cannot be set up (a variable missing, a refused admin login)."""

    exit_code = EXIT_CONFIG


def admin_refused(tracking_uri: str, why: str) -> AccessError:
    return AccessError(f"MLflow at {tracking_uri} refused the admin login ({why})",
                       "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD to the admin's "
                       "(MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD of .env)")


@dataclass(frozen=True)
class Identity:
    role: str
    username: str
    password: str
    model_permission: str  # MLflow's permission on the registered model


# role, environment prefix (<PREFIX>_USERNAME / <PREFIX>_PASSWORD), default user name, permission
ROLES = (
    ("worker", "DAE_WORKER", "dae-worker", "EDIT"),
    ("serving", "DAE_SERVING", "dae-serving", "READ"),
)


def identities_from_env(env: Mapping[str, str] = os.environ) -> list[Identity]:
    identities = []
    for role, prefix, default_user, permission in ROLES:
        password = env.get(f"{prefix}_PASSWORD", "")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccessError(f"{prefix}_PASSWORD is {'unset' if not password else 'too short'}: the {role} "
                              f"identity needs a password of at least {MIN_PASSWORD_LENGTH} characters",
                              f"set {prefix}_PASSWORD in .env (e.g. `openssl rand -hex 24`)")
        identities.append(Identity(role, env.get(f"{prefix}_USERNAME") or default_user, password, permission))
    return identities


def sync_identities(tracking_uri: str, identities: list[Identity]) -> list[str]:
    """Create or update each identity and its grant on the registered model; one line of
    report per identity. Idempotent: a second call changes nothing but the passwords."""
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    with warnings.catch_warnings():  # MLflow's server package imports a deprecated Starlette module
        warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
        from mlflow.server.auth.client import AuthServiceClient

    admin = AuthServiceClient(tracking_uri)
    registry = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        registry.create_registered_model(REGISTERED_MODEL)
    except RestException as error:
        if error.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise admin_refused(tracking_uri, error.error_code) from None
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    report = []
    for identity in identities:
        try:
            admin.get_user(identity.username)
        except RestException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            admin.create_user(identity.username, identity.password)
            done = "created"
        else:
            admin.update_user_password(identity.username, identity.password)
            done = "password set"
        # A grant cannot be overwritten, only replaced (the creator of the model held MANAGE).
        try:
            admin.revoke_user_permission(identity.username, "registered_model", REGISTERED_MODEL)
        except RestException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        admin.grant_user_permission(identity.username, "registered_model", REGISTERED_MODEL,
                                    identity.model_permission)
        report.append(f"{identity.role} {identity.username}: {done}; "
                      f"{identity.model_permission} on registered model {REGISTERED_MODEL}")
    return report
