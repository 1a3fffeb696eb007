"""Every choice list, declared once: the values each categorical setting takes, and the
compared methods.

Each list is the ``Literal`` type its ``Config`` field (or function argument) has;
``choices`` reads its values and ``check_choice`` rejects any other with one line that
names the key. This module imports nothing of ``mmcore``, so the lowest layers (losses,
metrics, runtime, the data base) take their types from here.
"""
from __future__ import annotations

from typing import Any, Literal, get_args


class ConfigError(ValueError):
    """A configuration key, type or value is invalid; the message names it."""


TaskType = Literal["multiclass", "multilabel", "binary"]  # picks the task loss and metrics
Preset = Literal["offline", "paper"]  # encoder weights (mmcore.weights.PRESETS)
PeftMode = Literal["bitfit", "frozen", "layernorm", "full", "lora"]
Fill = Literal["predict", "zero", "dummy", "mean"]
Modalities = Literal["both", "image", "text"]
MissingType = Literal["both", "image", "text"]
MissingTrain = Literal["complete", "missing"]
PromptInit = Literal["cls", "independent"]
PromptPool = Literal["mean", "attention", "concat"]
PredictFrom = Literal["prompts", "cls"]
Precision = Literal["bf16", "fp32"]
Device = Literal["auto", "cpu", "cuda"]
Alignment = Literal["vicreg", "mse", "cosine"]
TextPooling = Literal["mean", "cls"]  # a text preset's pooling (mmcore.weights.PRESETS)
# clipart and emoji: committed offline data (data/openclipart, data/emoji)
DatasetName = Literal["clipart", "emoji", "mmimdb", "food101", "hateful_memes", "manifest"]
BadSamplePolicy = Literal["missing", "skip", "stop"]  # an unreadable image or text


def choices(kind: Any) -> tuple[str, ...]:
    """The values of one of the Literal types above, in declaration order."""
    return get_args(kind)


def check_choice(key: str, value: Any, kind: Any) -> None:
    """``ConfigError`` naming ``key`` unless ``value`` is one of ``kind``'s choices."""
    if value not in get_args(kind):
        raise ConfigError(f"{key}={value!r} is not valid; valid: {', '.join(get_args(kind))}")


# Each method the paper compares, as the Config fields it changes from "ours". The fills
# that replace the predictor get alpha = 0: no alignment loss shapes their encoders.
# "frozen" is the yardstick: frozen encoders, logistic-regression heads and ridge
# predictors fitted in closed form on the cached embeddings, late fusion, no SGD at all.
METHODS: dict[str, dict[str, object]] = {
    "ours": {},
    "cls": {"predict_from": "cls"},
    "frozen": {"peft": "frozen", "predict_from": "cls", "predictor_layers": 1, "epochs": 0,
               "alpha": 0.0, "probe_init": True},
    "mean": {"fill": "mean", "alpha": 0.0},
    "dummy": {"fill": "dummy", "alpha": 0.0},
    "zero": {"fill": "zero", "alpha": 0.0},
    "image_only": {"modalities": "image"},
    "text_only": {"modalities": "text"},
}


__all__ = [
    "METHODS",
    "Alignment",
    "BadSamplePolicy",
    "ConfigError",
    "DatasetName",
    "Device",
    "Fill",
    "MissingTrain",
    "MissingType",
    "Modalities",
    "PeftMode",
    "Precision",
    "PredictFrom",
    "Preset",
    "PromptInit",
    "PromptPool",
    "TaskType",
    "TextPooling",
    "check_choice",
    "choices",
]
