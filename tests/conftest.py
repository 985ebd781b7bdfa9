"""Shared fixtures: tiny generated IDX datasets, one Prefect test server for the whole
session, and MLflow on a temporary SQLite store."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from dae_core.config import build_config

# Generated bad input (Hypothesis): a small budget in the quick loop, a larger one in the full
# suite (tests/suite.py passes --hypothesis-profile=full). No deadline: a 2-core machine under
# the suite's own load takes its time, and a slow example is no failed promise.
settings.register_profile("fast", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("full", max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fast")

TRAIN_IMAGES, TEST_IMAGES = 240, 80


def write_idx(path: Path, array: np.ndarray) -> None:
    """Unsigned-byte IDX: magic 0x0000 08 <ndim>, big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's shape)."""
    import io
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten fixed random stroke templates on black, each image with its own brightness and
    a tenth of its stroke pixels missing: learnable and denoisable, like digits."""
    templates = np.random.default_rng(1234).random((10, 28, 28)) > 0.8
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    kept = rng.random((count, 28, 28)) > 0.1
    images = templates[labels] * kept * rng.uniform(200, 255, (count, 1, 1))
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_dataset(root: Path, folder: str = "MNIST", train: int = TRAIN_IMAGES, test: int = TEST_IMAGES) -> Path:
    raw = root / folder / "raw"
    for prefix, count, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = synthetic_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def unique_experiment() -> str:
    """A fresh MLflow experiment name: tests sharing the session's store never see each other's runs."""
    return f"test-{uuid.uuid4().hex[:8]}"


def runs_of(experiment: str, filter_string: str = "") -> list:
    """The runs of ``experiment`` in the current tracking store (none if it does not exist)."""
    import mlflow
    from mlflow import MlflowClient

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return MlflowClient().search_runs([found.experiment_id], filter_string)


def task_runs_of(flow_run_id: str, until: str, timeout_s: float = 120) -> list:
    """The task runs of a flow run, first started first, once one named ``until`` has reached
    a final state (Prefect 3 records task runs from events, a moment after they happen)."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    of_the_flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=of_the_flow_run)
            if any(run.name.startswith(until) and run.state and run.state.is_final() for run in runs):
                return sorted(runs, key=lambda run: run.start_time or run.expected_start_time)
            assert time.monotonic() < deadline, f"no final task run {until!r} of flow run {flow_run_id}"
            time.sleep(0.5)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


@pytest.fixture(scope="session")
def raw_dir(data_root) -> Path:
    return data_root / "MNIST" / "raw"


TINY = {
    "data": {"batch_size": 40, "train_limit": None, "test_limit": None},
    "pretrain": {"epochs": 30, "lr": 0.01, "hidden_units": 64},
    "classifier": {"epochs": 3, "lr": 0.5},
    "evaluation": {"figure_samples": 3},
    "runtime": {"device": "cpu", "threads": 1},
}


@pytest.fixture
def tiny_config():
    return build_config("smoke", TINY)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Where `dae predict` keeps registered versions' weights: the session's own, never the
    home folder's."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAE_MODEL_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for every flow test (starting one costs ~10 s)."""
    home = tmp_path_factory.mktemp("prefect-home")
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=90):
            yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    """The session server's URL, for subprocesses that must report to it."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def track_at(monkeypatch):
    """Points this test process's MLflow at a store until the test ends: the environment (what
    a subprocess reads) and MLflow's process-wide URI, which outranks the environment once
    anything set it (``mlflow_store`` does, for the rest of the session)."""
    import mlflow

    previous = mlflow.get_tracking_uri()

    def point(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield point
    # Restored, not reset: set_tracking_uri(None) means ./mlflow.db, whatever the environment says.
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite tracking store, migrated once up front (parallel first use races)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.MlflowClient().search_experiments()
        yield uri
    mlflow.set_tracking_uri(None)


def framed_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten blocky templates (a random 5x5 pattern in 4x4-pixel blocks) inside the 20x20 box
    that MNIST digits fill: framed like MNIST, so a picture of one comes back the same."""
    patterns = np.random.default_rng(99).random((10, 5, 5)) > 0.55
    templates = np.zeros((10, 28, 28), bool)
    templates[:, 4:24, 4:24] = patterns.repeat(4, axis=1).repeat(4, axis=2)
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = templates[labels] * rng.uniform(200, 255, (count, 1, 1)) * (rng.random((count, 28, 28)) > 0.05)
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory, prefect_server):
    """A store of its own where one `dae-experiment` run registered (and crowned) a model."""
    import mlflow
    from mlflow import MlflowClient

    from flows.experiment import dae_experiment

    root = tmp_path_factory.mktemp("served")
    raw = root / "data" / "MNIST" / "raw"
    for prefix, count, seed in (("train", 300, 1), ("t10k", 100, 2)):
        images, labels = framed_digits(count, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    uri, previous = f"sqlite:///{root / 'mlflow.db'}", mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        first = dae_experiment(config=build_config("smoke", TINY), data_dir=str(root / "data"), download=False,
                               experiment_name="served", work_dir=str(root / "work"))
        yield {"uri": uri, "root": root, "raw": raw, "first": first,
               "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}
    # Restored, not reset: set_tracking_uri(None) means ./mlflow.db, whatever the environment says.
    mlflow.set_tracking_uri(previous)
