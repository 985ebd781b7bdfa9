import pytest

from dae_core.config import PRESETS, ConfigError, ExperimentConfig, build_config, parse_overrides


def test_lecture_preset_holds_the_lecture_hyperparameters():
    config = build_config("lecture")
    assert config.data.batch_size == 1000
    assert (config.pretrain.epochs, config.pretrain.optimizer, config.pretrain.lr) == (20, "adam", 1e-3)
    assert (config.pretrain.noise.mean, config.pretrain.noise.std) == (0.1, 0.2)
    assert config.pretrain.hidden_units == 400
    assert config.classifier.epochs == 10
    assert config == ExperimentConfig()


def test_overrides_are_parsed_as_json_values():
    assert parse_overrides(["pretrain.lr=0.01", "seed=3", "pretrain.noise.enabled=false",
                            "data.dataset=fashion_mnist"]) == {
        "pretrain": {"lr": 0.01, "noise": {"enabled": False}}, "seed": 3,
        "data": {"dataset": "fashion_mnist"}}


def test_overrides_merge_into_the_preset():
    config = build_config("smoke", ["pretrain.optimizer=sgd", "pretrain.momentum=0.9"])
    assert config.pretrain.optimizer == "sgd" and config.pretrain.momentum == 0.9
    assert config.data.train_limit == PRESETS["smoke"]["data"]["train_limit"]


@pytest.mark.parametrize("assignment, fragments", [
    (["pretrain.lr=-1"], ["pretrain.lr", "-1", "greater than 0"]),
    (["pretrain.optimizer=rmsprop"], ["pretrain.optimizer", "rmsprop", "'adam' or 'sgd'"]),
    (["pretrain.learning_rate=0.1"], ["pretrain.learning_rate", "not permitted"]),
    (["data.batch_size=0"], ["data.batch_size", "greater than or equal to 1"]),
    (["runtime.dtype=float16"], ["runtime.dtype", "'float32' or 'float64'"]),
    (["classifier.epochs=ten"], ["classifier.epochs", "ten", "integer"]),
])
def test_bad_values_are_refused_naming_field_value_and_allowed(assignment, fragments):
    with pytest.raises(ConfigError) as refused:
        build_config("lecture", assignment)
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_sgd_options_with_adam_are_contradictory():
    with pytest.raises(ConfigError, match="momentum"):
        build_config("lecture", ["pretrain.momentum=0.9"])


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="lecture"):
        build_config("nope")


def test_malformed_override_is_refused():
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["pretrain.lr"])


def test_flat_keys_are_dotted_paths():
    flat = build_config("lecture").flat()
    assert flat["pretrain.noise.std"] == 0.2 and flat["seed"] == 0 and flat["data.dataset"] == "mnist"
