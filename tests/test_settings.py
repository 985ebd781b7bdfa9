"""The process's settings: read from the environment given, once, into one typed value."""

import socket
from pathlib import Path

from adapters.settings import Settings


def test_settings_come_from_the_environment_given_with_defaults_where_unset_or_empty(tmp_path):
    given = Settings.from_env({"DAE_DATA_DIR": str(tmp_path / "mnist"), "DAE_WORK_DIR": "runs",
                               "DAE_TUNING_STORAGE": "postgresql+psycopg://dae@db/studies",
                               "DAE_WORKER_NAME": "gpu-box-2", "DAE_NOTIFY_WEBHOOK_URL": ""})
    assert given.data_dir == tmp_path / "mnist" and given.work_dir == Path("runs").resolve()
    assert given.tuning_storage == "postgresql+psycopg://dae@db/studies" and given.worker_name == "gpu-box-2"
    assert given.notify_webhook_url is None, "an empty variable is unset"
    default = Settings.from_env({})
    assert (default.data_dir, default.work_dir) == (Path("data").resolve(), Path("dae-work").resolve())
    assert default.worker_name == socket.gethostname() and default.tuning_storage is None
