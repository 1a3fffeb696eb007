"""One configuration tree for everything: model, loss, data, missingness, optimisation, run.

The same ``Config`` is built from a YAML file and ``--set key=value`` overrides on the
command line, from papermill parameters in a notebook (``Config.from_params``), or in
Python. Every leaf name is unique across the tree, so a flat parameter such as
``prompt_length=4`` names exactly one field. Unknown keys, wrong types and
out-of-range values are rejected with one line that names the key and what is valid.
The values of each categorical field are a choice list of ``mmcore.choice_lists``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

import yaml

from mmcore.choice_lists import (Alignment, BadSamplePolicy, ConfigError, DatasetName, Device, Fill,
                                 MissingTrain, MissingType, Modalities, PeftMode, Precision,
                                 PredictFrom, Preset, PromptInit, PromptPool, TaskType,
                                 check_choice)


# --- the tree -------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    preset: Preset = "offline"  # encoder weights; see mmcore.weights.PRESETS
    image_encoder: str = ""  # override the preset: a timm name, or a local file / folder
    text_encoder: str = ""  # override the preset: a HF hub id, or a local folder
    pretrained: bool = True  # False builds the same architecture with random weights
    image_size: int = 112  # pixels (multiple of the patch size); 112 keeps CPU runs short, paper: 224
    prompt_length: int = 6  # K read-only prompts per encoder (paper: gains up to ~6)
    prompts_see_each_other: bool = True  # prompts attend to originals and to each other
    # cls: each prompt starts at the CLS input + 2% noise; independent: K independent draws
    # at the CLS input's scale (distinct read-outs from the first step)
    prompt_init: PromptInit = "cls"
    # how the predictor reads the K prompt outputs: their mean, a learned softmax attention
    # over them, or their concatenation (K x D inputs)
    prompt_pool: PromptPool = "mean"
    # frozen: the encoders do not train and the token cache makes each step ~10x cheaper (the
    # offline default); bitfit: their biases train (the paper, configs/<benchmark>.yaml)
    peft: PeftMode = "frozen"
    lora_rank: int = 8  # only for peft == "lora"
    predict_from: PredictFrom = "prompts"  # "cls" is the paper's baseline
    predictor_hidden: int = 1024  # width of the hidden layers when predictor_layers > 1
    # 1: a linear predictor that starts at the ridge regression from what it reads (probe_init);
    # the paper's MLP (configs/<benchmark>.yaml): 2
    predictor_layers: int = 1
    fill: Fill = "predict"  # stand-in for a missing modality
    modalities: Modalities = "both"  # "image"/"text": one modality alone
    head_dropout: float = 0.1  # dropout before each modality's classifier head


@dataclass
class LossConfig:
    # predictor-to-target loss. mse keeps the predictor at the least-squares stand-in it starts
    # from; vicreg (the paper, configs/<benchmark>.yaml) adds variance and covariance terms
    # that push predictions of a partly unpredictable target away from it (chapter 05)
    alignment: Alignment = "mse"
    alpha: float = 0.1  # L = L_task + alpha * L_align
    sim_coeff: float = 25.0  # VICReg invariance weight (reference value)
    std_coeff: float = 25.0  # VICReg variance weight (reference value)
    cov_coeff: float = 1.0  # VICReg covariance weight (reference value)
    stop_grad_target: bool = True  # the alignment trains the predictor, not the target encoder
    scale_to_target: bool = True  # align in units of the target's spread (VICReg's std of 1)
    # False: the alignment trains the prompts and predictors only, not the encoder weights PEFT
    # trains (bitfit, layernorm, lora), which then learn from the task alone (a second backward)
    align_reaches_encoder: bool = True


@dataclass
class DataConfig:
    dataset: DatasetName = "clipart"  # clipart and emoji: committed offline data
    data_root: str = "data/openclipart"  # dataset folder (or the manifest file)
    task: str = "auto"  # clipart: "category" (= auto) | "keywords"; manifest: auto | a task type
    classes_file: str = ""  # manifest: the label set, one name a line ("": the labels it uses)
    max_text_length: int = 64  # tokens; protocol: 1024 MM-IMDb, 512 Food-101, 128 memes
    num_workers: int = 0  # DataLoader worker processes
    bad_sample_policy: BadSamplePolicy = "missing"  # unreadable image / text
    allow_outside_root: bool = False  # manifest: accept image paths outside its folder
    limit_samples: int = 0  # > 0: use at most this many samples per split (quick runs)


@dataclass
class MissingConfig:
    missing_rate: float = 0.7  # eta: fraction of samples that lose a modality
    missing_type: MissingType = "both"  # "both": half lose each
    missing_train: MissingTrain = "complete"  # train with the same missingness?
    missing_seed: int = 0  # seed of the missing table (independent of the run seed)


@dataclass
class OptimConfig:
    epochs: int = 2  # from closed-form heads (probe_init): validation is flat after
    batch_size: int = 32
    lr: float = 1e-4  # for prompts and predictors (they start at closed-form fits)
    encoder_lr: float = 1e-4  # for the encoder parameters PEFT leaves trainable
    head_lr: float = 1e-4  # the classifier heads: they start at their closed-form fit
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up, then cosine decay
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_grad: float = 1.0  # max gradient norm (0 disables)
    probe_init: bool = True  # start heads (and linear predictors) from closed-form fits


@dataclass
class RunConfig:
    seed: int = 0
    out_dir: str = "runs/default"
    device: Device = "auto"
    precision: Precision = "bf16"  # bf16 autocast where the hardware has it
    compile: bool = False  # torch.compile the encoders
    eval_batch_size: int = 64
    progress: bool = True  # tqdm progress bars
    checkpoint_every: int = 0  # optimiser steps between mid-epoch "last" checkpoints (0: none)
    token_cache: bool = True  # frozen encoders: train on cached tokens (exact, ~10x faster)
    cache_memory_gb: float = 8.0  # a larger token cache stays memory-mapped on disk


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        validate(self)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> "Config":
        """Build from a nested mapping such as a parsed YAML file; unknown keys are errors."""
        sections = {f.name: f.type for f in fields(cls)}
        _reject_unknown(tree, sections, where="config")
        built = {}
        for name, section_cls in _section_types().items():
            values = tree.get(name) or {}
            if not isinstance(values, Mapping):
                raise ConfigError(f"config section '{name}' must be a mapping, got {values!r}")
            built[name] = _build_section(section_cls, values, prefix=name)
        return cls(**built)

    @classmethod
    def from_params(cls, **params: Any) -> "Config":
        """Build from flat leaf names (papermill parameters): ``Config.from_params(epochs=1)``."""
        owner = leaf_owners()
        _reject_unknown(params, owner, where="parameter")
        tree: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            tree.setdefault(owner[key], {})[key] = value
        return cls.from_dict(tree)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "Config":
        """Load a YAML file, then apply ``key=value`` overrides (``optim.lr=3e-4`` or ``lr=3e-4``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
        if not isinstance(tree, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        return cls.from_dict(tree).with_overrides(overrides or [])

    def with_overrides(self, overrides: list[str]) -> "Config":
        """Return a copy with ``key=value`` strings applied; values are parsed as YAML scalars."""
        tree = self.to_dict()
        owner = leaf_owners()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' must look like key=value")
            key, raw = item.split("=", 1)
            section, _, leaf = key.rpartition(".")
            if not section:
                _reject_unknown({leaf: None}, owner, where="override")
                section = owner[leaf]
            if section not in tree:
                _reject_unknown({section: None}, tree, where="config section")
            _reject_unknown({leaf: None}, tree[section], where="key", scope=section)
            try:
                tree[section][leaf] = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as err:
                raise ConfigError(f"override '{item}': {_yaml_problem(err)}") from None
        return Config.from_dict(tree)

    def replace(self, **params: Any) -> "Config":
        """A copy with flat leaf names changed (``cfg.replace(predict_from="cls")``)."""
        tree = self.to_dict()
        owner = leaf_owners()
        _reject_unknown(params, owner, where="parameter")
        for key, value in params.items():
            tree[owner[key]][key] = value
        return Config.from_dict(tree)

    # --- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Leaf name -> value; the shape of a notebook's parameters cell."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --- validation ------------------------------------------------------------------------------

_RANGES: dict[str, tuple[float | None, float | None]] = {
    # leaf: (min, max), inclusive; None leaves that side open
    "image_size": (14, 1024),
    "prompt_length": (1, 64),
    "lora_rank": (1, 256),
    "predictor_hidden": (1, None),
    "predictor_layers": (1, 8),
    "head_dropout": (0.0, 0.99),
    "alpha": (0.0, None),
    "sim_coeff": (0.0, None),
    "std_coeff": (0.0, None),
    "cov_coeff": (0.0, None),
    "max_text_length": (8, 4096),
    "num_workers": (0, 64),
    "limit_samples": (0, None),
    "missing_rate": (0.0, 1.0),
    "missing_seed": (0, None),
    "epochs": (0, None),  # 0: the closed-form fits of optim.probe_init only
    "batch_size": (1, None),
    "lr": (0.0, None),
    "encoder_lr": (0.0, None),
    "head_lr": (0.0, None),
    "weight_decay": (0.0, None),
    "warmup_ratio": (0.0, 1.0),
    "grad_accum": (1, None),
    "clip_grad": (0.0, None),
    "seed": (0, None),
    "eval_batch_size": (1, None),
    "checkpoint_every": (0, None),
    "cache_memory_gb": (0.0, None),
}


def validate(cfg: Config) -> None:
    """Check every field's type, choices and range; raise ``ConfigError`` naming the first bad one."""
    for section in fields(cfg):
        obj = getattr(cfg, section.name)
        hints = get_type_hints(type(obj))
        for f in fields(obj):
            value = getattr(obj, f.name)
            key = f"{section.name}.{f.name}"
            _check_type(key, value, hints[f.name])
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value!r} is not a finite number")
            lo, hi = _RANGES.get(f.name, (None, None))
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{key}={value!r} is out of range; valid: {span}")
    if cfg.data.dataset == "clipart" and cfg.data.task not in ("auto", "category", "keywords"):
        raise ConfigError(f"data.task={cfg.data.task!r} for clipart; valid: auto, category, keywords")
    if not cfg.loss.align_reaches_encoder and cfg.model.peft == "frozen":
        raise ConfigError("loss.align_reaches_encoder=False keeps the alignment off the encoder "
                          "weights PEFT trains, and model.peft='frozen' trains none; use bitfit, "
                          "layernorm or lora")
    manifest_tasks = ("auto", *get_args(TaskType))
    if cfg.data.dataset == "manifest" and cfg.data.task not in manifest_tasks:
        raise ConfigError(f"data.task={cfg.data.task!r} for a manifest; valid: "
                          f"{', '.join(manifest_tasks)}")


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: where (1-based line and column) and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(getattr(err, "problem", None) or err).split())
    return f"{where}invalid YAML ({what})"


def _check_type(key: str, value: Any, hint: Any) -> None:
    if get_origin(hint) is Literal:
        check_choice(key, value, hint)
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[hint](value)
    if not ok:
        raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {hint.__name__}")


# --- helpers ---------------------------------------------------------------------------------


def _section_types() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def leaf_owners() -> dict[str, str]:
    """Leaf name -> section name, for every field of the tree (leaf names are unique)."""
    owner: dict[str, str] = {}
    for name, section_cls in _section_types().items():
        for f in fields(section_cls):
            assert f.name not in owner, f"leaf name {f.name} is used twice"
            owner[f.name] = name
    return owner


def _build_section(section_cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = get_type_hints(section_cls)
    _reject_unknown(values, hints, where="key", scope=prefix)
    coerced = {}
    for key, value in values.items():
        if hints[key] is float and not isinstance(value, bool):
            value = _as_float(value)  # YAML reads "1" as int and "3e-4" as a string
        coerced[key] = value
    obj = section_cls.__new__(section_cls)
    defaults = section_cls()
    for f in fields(section_cls):
        setattr(obj, f.name, coerced.get(f.name, getattr(defaults, f.name)))
    return obj


def _as_float(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, (int, str)) else value
    except ValueError:
        return value  # left for validation to reject with the key's name


def _reject_unknown(
    given: Mapping[str, Any], valid: Mapping[str, Any], where: str, scope: str = ""
) -> None:
    unknown = [k for k in given if k not in valid]
    if unknown:
        inside = f" in '{scope}'" if scope else ""
        raise ConfigError(
            f"unknown {where} '{unknown[0]}'{inside}; valid: {', '.join(sorted(valid))}"
        )


__all__ = [
    "Config",
    "DataConfig",
    "LossConfig",
    "MissingConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "leaf_owners",
    "validate",
]
