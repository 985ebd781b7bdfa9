"""Using the model: the first version becomes champion, `dae predict` on pictures people
have, loading where MLflow would pick CUDA, and batch scoring with its own MLflow run."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dae_core.config import build_config, closest_preset
from dae_core.summary import CHAMPION_URI, REGISTERED_MODEL
from tests.conftest import TINY, framed_digits, png_declaring, write_idx

BIN = Path(sys.executable).parent


def test_the_first_registered_version_becomes_champion_and_later_ones_do_not(champion_store):
    from flows.experiment import dae_experiment

    client = champion_store["client"]
    first = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert first.run_id == champion_store["first"].mlflow_run_id
    assert "first registered version" in client.get_run(first.run_id).data.tags["dae.champion"]
    root = champion_store["root"]
    second = dae_experiment(config=build_config("smoke", {**TINY, "seed": 1}), data_dir=str(root / "data"),
                            download=False, experiment_name="served", work_dir=str(root / "work"))
    assert client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version == first.version
    assert "dae.champion" not in client.get_run(second.mlflow_run_id).data.tags


def _dae_predict(store: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, **(env or {})}
    return subprocess.run([str(BIN / "dae"), "predict", *args], env=env, capture_output=True, text=True, timeout=120)


def test_dae_predict_reads_pictures_of_any_kind_like_the_idx_images(champion_store, tmp_path):
    images, labels = framed_digits(30, seed=2)
    write_idx(tmp_path / "digits.idx", images)
    pictures = []
    for index, image in enumerate(images):
        size = (97 + index, 61 + 2 * index) if index % 2 else (300, 301)  # odd sizes, either orientation
        scaled = Image.fromarray(image).resize((min(size),) * 2, Image.Resampling.BICUBIC)
        canvas = Image.new("L", size, 0)
        canvas.paste(scaled, (size[0] - min(size), 0))  # off-centre
        if index % 3 == 0:  # dark digit on light paper, in colour, as a scan or a phone photo
            canvas = Image.eval(canvas, lambda value: 235 - value * 200 // 255).convert("RGB")
        path = tmp_path / f"digit{index:02d}.{'jpg' if index % 3 == 0 else 'png'}"
        canvas.save(path)
        pictures.append(str(path))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    done = _dae_predict(champion_store["uri"], "--json", str(tmp_path / "digits.idx"), *pictures,
                        str(tmp_path / "broken.png"))
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "broken.png" in done.stderr
    assert "Traceback" not in done.stderr
    rows = json.loads(done.stdout)
    assert [row["file"] for row in rows] == [f"{tmp_path / 'digits.idx'}[{i}]" for i in range(30)] + pictures
    for row in rows:
        assert abs(sum(row["probabilities"]) - 1) < 1e-4 and row["probability"] == max(row["probabilities"])
        assert row["digit"] == int(np.argmax(row["probabilities"]))
    from_idx, from_pictures = [row["digit"] for row in rows[:30]], [row["digit"] for row in rows[30:]]
    assert np.mean(np.asarray(from_idx) == labels) >= 0.9
    assert np.mean(np.asarray(from_pictures) == np.asarray(from_idx)) >= 0.9

    plain = _dae_predict(champion_store["uri"], pictures[0])
    assert plain.returncode == 0 and plain.stdout.startswith(pictures[0]) and "%" in plain.stdout


@pytest.mark.slow
def test_dae_predict_keeps_a_versions_weights_and_answers_from_them_without_mlflow(champion_store, tmp_path):
    images, _ = framed_digits(20, seed=4)
    write_idx(tmp_path / "digits.idx", images)
    cache = tmp_path / "cache"
    no_mlflow = tmp_path / "no-mlflow"  # on PYTHONPATH: any import of MLflow fails
    (no_mlflow / "mlflow").mkdir(parents=True)
    (no_mlflow / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow was imported')\n")

    def predict(blocked: bool) -> list[list[float]]:
        env = {"DAE_MODEL_CACHE": str(cache), **({"PYTHONPATH": str(no_mlflow)} if blocked else {})}
        done = _dae_predict(champion_store["uri"], "--json", str(tmp_path / "digits.idx"), env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return [row["probabilities"] for row in json.loads(done.stdout)]

    through_mlflow = predict(blocked=False)
    crowned = str(champion_store["client"].get_model_version_by_alias(REGISTERED_MODEL, "champion").version)
    [kept] = cache.iterdir()
    assert kept.name.startswith(f"{REGISTERED_MODEL}-v{crowned}-")
    assert predict(blocked=True) == through_mlflow, "the kept weights answer exactly as MLflow's model"

    weights = kept / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # damaged on disk
    assert predict(blocked=False) == through_mlflow, "a damaged entry is loaded from the registry again"
    assert predict(blocked=True) == through_mlflow, "... and kept again"


# `dae predict` on one picture from kept weights, over `python -c "import torch"`, timed in
# turns in one test so that the machine's speed cancels: 1.17-1.31 on the 2-core AMD EPYC
# (docs/benchmarks.md, section 7). Issue 24's goal, import torch + 1.5 s, is 1.7 there.
PREDICT_OVER_IMPORT_TORCH = 1.3


@pytest.mark.slow
@pytest.mark.timing
def test_one_prediction_from_kept_weights_costs_little_more_than_importing_torch(champion_store, tmp_path):
    images, _ = framed_digits(1, seed=5)
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion_store["uri"], "DAE_MODEL_CACHE": str(tmp_path / "cache")}

    def seconds(command: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        return time.perf_counter() - started

    predict = [str(BIN / "dae"), "predict", str(tmp_path / "one.png")]
    seconds(predict)  # loads through MLflow once and keeps the weights
    ratios = sorted(seconds(predict) / seconds([sys.executable, "-c", "import torch"]) for _ in range(3))
    assert ratios[1] < PREDICT_OVER_IMPORT_TORCH * 1.35, ratios


def test_dae_predict_without_a_champion_says_what_to_do(tmp_path):
    Image.new("L", (30, 30), 0).save(tmp_path / "x.png")
    store = f"sqlite:///{tmp_path / 'empty.db'}"
    mlflow.MlflowClient(tracking_uri=store).search_experiments()  # a store with no model in it
    done = _dae_predict(store, str(tmp_path / "x.png"))
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and CHAMPION_URI in lines[0] and "dae run" in lines[1], done.stderr


def test_serving_loads_on_the_cpu_where_mlflow_would_pick_cuda(champion_store, monkeypatch):
    """A GPU host: MLflow's loader picks CUDA and refuses the CPU-exported program; the
    project's loader pins the serving device."""
    from adapters import model_registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(mlflow.exceptions.MlflowException, match="cuda"):
        mlflow.pyfunc.load_model(CHAMPION_URI)
    model = model_registry.load_serving_model(CHAMPION_URI)
    probabilities = np.asarray(model.predict(np.zeros((4, 784), np.float32)))
    assert probabilities.shape == (4, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_batch_scoring_records_predictions_accuracy_and_the_model_version(champion_store, tmp_path):
    from flows.score import dae_score

    client, raw = champion_store["client"], champion_store["raw"]
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    scored = dae_score(source=str(raw / "t10k-images-idx3-ubyte"), labels_file=str(raw / "t10k-labels-idx1-ubyte"),
                       work_dir=str(tmp_path))
    run = client.get_run(scored.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dae.model_version"] == str(champion.version)
    assert "batch scoring" in client.get_experiment(run.info.experiment_id).tags["mlflow.note.content"]
    # The same model on the same test images: the evaluation's accuracy, exactly.
    assert scored.accuracy == run.data.metrics["score/accuracy"] == \
        client.get_run(champion.run_id).data.metrics["test/accuracy"]
    # The champion's own test images: nothing drifts; the verdict, checks and figure are recorded.
    assert scored.monitor.verdict == "ok" and run.data.tags["dae.monitor.verdict"] == "ok"
    assert run.data.metrics["monitor/accuracy_drop"] == 0 and run.data.metrics["monitor/class_tvd"] == 0
    assert run.data.params["monitor.input_ks"] == "0.25"
    assert "monitoring/drift.png" in {f.path for f in client.list_artifacts(run.info.run_id, "monitoring")}
    table = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=scored.predictions_csv,
                                                dst_path=str(tmp_path / "out"))
    lines = Path(table).read_text().splitlines()
    assert len(lines) == 101 and lines[0].startswith("file,digit,probability,label,p0")

    folder = tmp_path / "inbox"
    images, labels = framed_digits(20, seed=5)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - image).save(folder / str(label) / f"{index}.png")
    (folder / "3" / "corrupt.png").write_text("no")
    (folder / "3" / "bomb.png").write_bytes(png_declaring(20000, 20000))  # decoded, a frame of 400 M pixels
    by_folder = dae_score(source=str(folder), work_dir=str(tmp_path))
    assert by_folder.images == 20 and len(by_folder.skipped) == 2, by_folder.skipped
    assert "corrupt.png" in by_folder.skipped[1] and "bomb.png: too large to be a digit" in by_folder.skipped[0]
    assert by_folder.accuracy is not None and by_folder.accuracy >= 80


def test_the_registry_card_says_what_each_version_scored_and_why_it_is_champion(champion_store):
    from adapters.champion import MODEL_DESCRIPTION, champion_history

    client, first = champion_store["client"], champion_store["first"]
    model = client.get_registered_model(REGISTERED_MODEL)
    assert model.description == MODEL_DESCRIPTION and "(N, 784)" in model.description
    version = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert version.run_id == first.mlflow_run_id
    assert version.tags["test_accuracy"] == f"{first.test.accuracy:.2f}"
    assert version.tags["noisy_accuracy"] == f"{first.test.noisy_accuracy:.2f}"
    assert version.tags["preset"] == closest_preset(build_config("smoke", TINY))[0]
    assert len(version.tags["dataset_digest"]) == 64
    assert version.tags["champion_decision"] == "first-champion"
    assert version.description.startswith(f"Version {version.version}: test accuracy {first.test.accuracy:.2f}%")
    assert first.mlflow_run_id in version.description and "first-champion" in version.description
    assert "training runs of `dae`" in client.get_experiment_by_name("served").tags["mlflow.note.content"]
    (move,) = [m for m in champion_history() if m.version == str(version.version)]
    assert move.previous is None and move.by.startswith("flow run ") and "first registered version" in move.reason


@pytest.mark.slow  # trains one more model
def test_dae_champion_rolls_back_with_a_reason_and_predict_follows(champion_store, tmp_path, capsys):
    from dae_cli.main import main as dae_main
    from flows.experiment import dae_experiment

    client, root = champion_store["client"], champion_store["root"]
    crowned = str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version)
    other = dae_experiment(config=build_config("smoke", {**TINY, "seed": 5}), data_dir=str(root / "data"),
                           download=False, experiment_name="served", work_dir=str(root / "work"))
    version = str(client.search_model_versions(f"name='{REGISTERED_MODEL}' and run_id='{other.mlflow_run_id}'")[0]
                  .version)
    images, _ = framed_digits(10, seed=3)
    write_idx(tmp_path / "digits.idx", images)

    def predicted(*model: str) -> list[list[float]]:
        assert dae_main(["predict", "--json", str(tmp_path / "digits.idx"), *model]) == 0
        return [row["probabilities"] for row in json.loads(capsys.readouterr().out)]

    before = predicted()  # the champion's weights are kept now: a move must not serve them

    assert dae_main(["champion", "--set", version, "--reason", "rollforward for the test"]) == 0
    said = capsys.readouterr().out
    assert f"version {crowned} -> version {version}" in said and "rollforward for the test" in said
    moved = client.get_model_version(REGISTERED_MODEL, version)
    assert moved.tags["champion_decision"] == "manual" and "rollforward for the test" in moved.description
    assert predicted() == predicted("--model", f"models:/{REGISTERED_MODEL}/{version}") != before
    assert before == predicted("--model", f"models:/{REGISTERED_MODEL}/{crowned}")

    assert dae_main(["champion", "--set", crowned, "--reason", "rollback"]) == 0
    capsys.readouterr()
    assert dae_main(["champion", "--set", crowned, "--reason", "rollback again"]) == 0
    assert capsys.readouterr().out == f"@champion is already version {crowned}: nothing moved\n"
    assert dae_main(["champion"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f"@champion: version {crowned} (test accuracy ")
    me = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    assert listed[-2].endswith(f"{crowned} -> {version:<3}  by {me}: rollforward for the test")
    assert listed[-1].split("  by ")[-1].endswith(": rollback")

    for refused, says in ((["--set", "999", "--reason", "x"], f"{REGISTERED_MODEL} has no version '999'"),
                          (["--set", version], "--set needs --reason TEXT")):
        assert dae_main(["champion", *refused]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 2 and says in lines[0] and lines[1].startswith("  fix: "), lines
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version) == crowned


def test_a_batch_of_inverted_digits_is_flagged_as_drift(champion_store, tmp_path):
    from flows.score import dae_score

    raw = champion_store["raw"]
    images = np.fromfile(raw / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    write_idx(tmp_path / "inverted-idx3-ubyte", 255 - images)
    scored = dae_score(source=str(tmp_path / "inverted-idx3-ubyte"), work_dir=str(tmp_path))
    drifted = {check.name for check in scored.monitor.checks if check.drift}
    assert scored.monitor.verdict == "drift" and {"input_ks_brightness", "input_ks_ink"} <= drifted
    run = champion_store["client"].get_run(scored.mlflow_run_id)
    assert run.data.tags["dae.monitor.verdict"] == "drift" and run.data.metrics["monitor/input_ks_brightness"] > 0.9


@given(card=st.one_of(st.binary(max_size=64),
                      st.sampled_from([b"[]", b"null", b"{}", b'"x"', b'{"weights_sha256": 1}'])),
       weights=st.one_of(st.none(), st.binary(max_size=256)), sha_of_weights=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_cache_entry_of_any_shape_is_loaded_from_the_registry_again(tmp_path, card, weights, sha_of_weights):
    """Whatever a kept entry holds (a card that is no JSON object, weights that are no
    classifier's, even bytes matching their card), ``load`` answers None (the registry's
    road then) or a working model, never an exception."""
    import hashlib

    from adapters.model_registry import ModelVersion, WeightCache
    from dae_core.model import ClassProbabilities, EncoderClassifier

    cache = WeightCache(tmp_path / "cache")
    version = ModelVersion(REGISTERED_MODEL, "1", "models:/m-1", "run")
    model = ClassProbabilities(EncoderClassifier(torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.Tanh())))
    cache.save("sqlite:///store.db", version, model.state_dict())
    entry = cache.folder("sqlite:///store.db", version)
    assert cache.load("sqlite:///store.db", version) is not None
    if weights is not None:
        (entry / "weights.pt").write_bytes(weights)
        if sha_of_weights:
            card = json.dumps({"weights_sha256": hashlib.sha256(weights).hexdigest()}).encode()
    (entry / "version.json").write_bytes(card)
    loaded = cache.load("sqlite:///store.db", version)
    assert loaded is None or loaded(torch.zeros(1, 784)).shape == (1, 10)
