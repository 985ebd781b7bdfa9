"""Typed, bounded experiment configuration and the named presets.

Every stage has its own pydantic model; unknown keys and out-of-range values are
refused with a ``ConfigError`` whose message names the dotted field, the value
and what is allowed.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dae_core.errors import EXIT_CONFIG, DaeError


class ConfigError(DaeError, ValueError):
    """A configuration was refused; the message names each offending field."""

    exit_code = EXIT_CONFIG


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    # The lecture's batch size; 60 optimiser steps per MNIST epoch.
    batch_size: int = Field(1000, ge=1, le=60_000)
    # Use only the first N images of a split: smoke runs and tests, never the lecture.
    train_limit: int | None = Field(None, ge=1, le=60_000)
    test_limit: int | None = Field(None, ge=1, le=10_000)
    # Images held out of the training split (a seeded draw) for validation: tuning's
    # objective (`dae tune`), never the test set. 0 trains on all of them, as the lecture.
    validation_size: int = Field(0, ge=0, le=30_000)

    @model_validator(mode="after")
    def _batch_fits_the_data(self) -> DataConfig:
        if self.train_limit is not None and self.batch_size > self.train_limit:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than train_limit={self.train_limit}; "
                f"use a batch_size of at most {self.train_limit}"
            )
        if self.train_limit is not None and self.validation_size >= self.train_limit:
            raise ValueError(f"validation_size={self.validation_size} leaves no training images of "
                             f"train_limit={self.train_limit}; hold out fewer")
        return self


class NoiseConfig(_Strict):
    enabled: bool = True
    # Additive Gaussian corruption, then a clamp to [0, 1] (the lecture's mean 0.1, std 0.2).
    mean: float = Field(0.1, ge=-1.0, le=1.0)
    std: float = Field(0.2, ge=0.0, le=1.0)


class PretrainConfig(_Strict):
    # 0 skips pretraining: the classifier then starts from a random encoder (the baseline).
    epochs: int = Field(20, ge=0, le=1000)
    optimizer: Literal["adam", "sgd"] = "adam"
    # Wide enough for a search to find vanilla SGD's best rate (docs/comparison.md); a rate
    # that is too large ends in TrainingDiverged, not in silent nonsense.
    lr: float = Field(1e-3, gt=0.0, le=1000.0)
    # Only meaningful for sgd; refused with adam so that a config never claims what it did not do.
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    hidden_units: int = Field(400, ge=1, le=4096)
    # Weight of the L1 penalty on the hidden code, applied to the *mean* absolute activation
    # over batch and units (see dae_core.model.l1_sparsity). docs/reproduction.md explains
    # why the lecture's 0.1 cannot be a per-unit sum.
    sparsity_weight: float = Field(1e-4, ge=0.0, le=10.0)
    noise: NoiseConfig = NoiseConfig()

    @model_validator(mode="after")
    def _momentum_needs_sgd(self) -> PretrainConfig:
        if self.optimizer == "adam" and self.momentum != 0.0:
            raise ValueError(
                f"momentum={self.momentum} only applies to optimizer 'sgd'; "
                "with optimizer 'adam' it must be 0"
            )
        return self


class ClassifierConfig(_Strict):
    epochs: int = Field(10, ge=1, le=1000)
    # Vanilla SGD (no momentum, no weight decay), as in the lecture; the lecture does not
    # show the rate: docs/reproduction.md records how this one was found.
    lr: float = Field(0.1, gt=0.0, le=10.0)
    # Train the new head only, on the pretrained features as they are (a linear probe):
    # what pretraining alone gives, before fine-tuning changes the encoder.
    freeze_encoder: bool = False
    # Corrupt the training images while fine-tuning (off: clean images, as the lecture).
    train_noise: NoiseConfig = NoiseConfig(enabled=False)


class EvaluationConfig(_Strict):
    # Number of test digits drawn clean / noisy / reconstructed in the reconstruction figure.
    figure_samples: int = Field(10, ge=1, le=32)
    # Corruption of the noisy test set (and of the figure's inputs). Independent of
    # pretrain.noise, so that runs pretrained with and without noise face the same test.
    test_noise: NoiseConfig = NoiseConfig()

    @model_validator(mode="after")
    def _test_noise_is_on(self) -> EvaluationConfig:
        if not self.test_noise.enabled:
            raise ValueError("test_noise.enabled must be true: the noisy test needs noise")
        return self


# How pretraining computes its gradients: autograd on DenoisingAutoencoder.forward, or the
# hand-written step of dae_core.pretrain_step (the same numbers within float rounding;
# measured faster on CPU, docs/benchmarks.md; valid for this exact architecture only).
PretrainGradients = Literal["autograd", "handwritten"]
Autocast = Literal["none", "bfloat16", "float16"]
CompileStep = Literal["none", "default", "reduce-overhead"]


class RuntimeConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The lecture computed in float64; float32 gives the same curves within run-to-run
    # noise at twice the speed (docs/reproduction.md).
    dtype: Literal["float32", "float64"] = "float32"
    # None leaves torch's default (one per core).
    threads: int | None = Field(None, ge=1, le=256)
    pretrain_gradients: PretrainGradients = "autograd"
    # Mixed precision (dae_core/precision.py): 16-bit matmuls, float32 weights and optimizer
    # state. "none" keeps the lecture's float32 numbers bit for bit.
    autocast: Autocast = "none"
    # torch.compile of the pretraining step's forward and loss (dae_core/pretrain_step.py);
    # "reduce-overhead" replays it as a CUDA graph on a GPU. On a CPU it measured no faster
    # (docs/benchmarks.md) and each process first compiles for ~20 s.
    compile_step: CompileStep = "none"

    @model_validator(mode="after")
    def _compile_fits(self) -> RuntimeConfig:
        if self.compile_step != "none" and self.pretrain_gradients != "autograd":
            raise ValueError(f"compile_step={self.compile_step!r} needs pretrain_gradients='autograd' (the "
                             "hand-written step is not compiled)")
        return self

    @model_validator(mode="after")
    def _autocast_fits(self) -> RuntimeConfig:
        if self.autocast == "none":
            return self
        if self.dtype != "float32":
            raise ValueError(f"autocast={self.autocast!r} needs dtype='float32' (its weights), not {self.dtype!r}")
        if self.pretrain_gradients != "autograd":
            raise ValueError(f"autocast={self.autocast!r} needs pretrain_gradients='autograd' (the hand-written "
                             "step computes in its own float32 buffers)")
        if self.autocast == "float16" and self.device == "cpu":
            raise ValueError("autocast='float16' is for GPUs; on a CPU use 'bfloat16'")
        return self


class ExperimentConfig(_Strict):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def flat(self) -> dict[str, Any]:
        """The config as ``{"pretrain.noise.std": 0.2, ...}``, for MLflow params."""
        return flat_fields(self.model_dump())


# The lecture preset as a value (immutable): the flows' parameter default.
LECTURE_CONFIG = ExperimentConfig()

PRESETS: dict[str, dict[str, Any]] = {
    # Reproduces the lecture's printed curves on the full MNIST (docs/reproduction.md).
    "lecture": {},
    # Seconds on a laptop: for tests, dry runs and checking an installation. It must still
    # learn (~85% test accuracy on its 500 images): 200 SGD steps at the lecture's rate; lr 0.5
    # at batch 100 diverged, and a newcomer would take the result for a broken install.
    "smoke": {
        "data": {"batch_size": 50, "train_limit": 1000, "test_limit": 500},
        "pretrain": {"epochs": 2},
        "classifier": {"epochs": 10, "lr": 0.1},
        "evaluation": {"figure_samples": 4},
        "runtime": {"device": "cpu"},
    },
}


def closest_preset(config: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """The preset ``config`` differs least from, and the flat fields where it differs (the
    seed aside): how run names and descriptions say what was run."""
    flat = config.flat()

    def changes(preset: str) -> dict[str, Any]:
        base = build_config(preset, {"seed": config.seed}).flat()
        return {key: value for key, value in flat.items() if base[key] != value}

    preset = min(PRESETS, key=lambda name: len(changes(name)))
    return preset, changes(preset)


def run_name(config: ExperimentConfig, cell: str | None = None) -> str:
    """``<cell>-seed<N>`` for a comparison cell, else ``<preset>-seed<N>``."""
    return f"{cell or closest_preset(config)[0]}-seed{config.seed}"


def flat_fields(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"pretrain": {"lr": 0.01}}`` -> ``{"pretrain.lr": 0.01}``: ``nested_fields`` undone."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_value(text: str) -> Any:
    """``--set`` values are JSON where they parse (numbers, true, null), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def nested_fields(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"pretrain.lr": 0.01, "seed": 3}`` -> ``{"pretrain": {"lr": 0.01}, "seed": 3}``, the
    shape of config overrides."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        keys = path.split(".")
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {path}={value!r}: {key} is set twice")
        node[keys[-1]] = value
    return nested


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["pretrain.lr=0.01", "seed=3"]`` into a nested dict."""
    flat: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"override {assignment!r}: expected section.field=value")
        flat[path.strip()] = parse_value(raw.strip())
    return nested_fields(flat)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "config"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{field}{shown}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(
    preset: str = "lecture", overrides: dict[str, Any] | list[str] | None = None
) -> ExperimentConfig:
    """A preset with overrides applied, validated as a whole."""
    if preset not in PRESETS:
        raise ConfigError(f"preset = {preset!r}: allowed presets are {sorted(PRESETS)}")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    merged = deep_merge(PRESETS[preset], overrides or {})
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
