"""From a Config to a trained model and its missing-modality scores: what notebooks and the CLI call.

``build_and_train(cfg)`` loads the dataset, builds the model and trains it (or loads the
finished run, or resumes an interrupted one); ``run(cfg)`` then encodes the test split once
and scores every (missing type, rate, seed) from that cache. The run folder ends up holding the config,
the environment, the per-epoch metrics, the checkpoints, every missing table used and
the tidy ``sweep.csv`` that the book plots.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mmcore.build import build_collator, build_model
from mmcore.checkpoint import atomic_write, write_json
from mmcore.choice_lists import METHODS
from mmcore.config import Config
from mmcore.data import MultimodalDataset, load_dataset
from mmcore.data.check import batch_size_problem
from mmcore.evaluation import DEFAULT_RATES, DEFAULT_SEEDS, EmbeddingCache, collect, score, sweep
from mmcore.missing import MISSING_TYPES, MissingTable, load_or_build
from mmcore.model import Embeddings, FusionModel
from mmcore.probe import initialise_from_probes
from mmcore.prompt_cache import (CachedCollator, CachedSplit, SplitCache,
                                 load_or_build_split_cache, uses_token_cache)
from mmcore.run_folder import LAST, FitResult
from mmcore.runtime import build_loader, distributed_env, resolve_device
from mmcore.train import load_or_train

SPLITS = ("train", "val", "test")


# The comparison every chapter and the evidence script make: each method trained once,
# scored with these fills (None: its own); the alpha = 0 model "mean" trains no predictor
# and is scored with each constant fill, under the fill's name.
COMPARED: dict[str, tuple[str | None, ...]] = {
    "ours": (None,), "cls": (None,), "frozen": (None,), "mean": ("mean", "zero", "dummy")}


def method_config(cfg: Config, method: str) -> Config:
    """``cfg`` changed into one of ``METHODS``, with its own run folder under ``out_dir``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; valid: {', '.join(METHODS)}")
    return cfg.replace(**METHODS[method], out_dir=str(Path(cfg.run.out_dir) / method))


@dataclass
class Experiment:
    """A trained model with its data; ``sweep_rows`` once ``run`` has scored it."""

    cfg: Config
    model: FusionModel
    datasets: dict[str, MultimodalDataset]
    result: FitResult
    sweep_rows: list[dict] = field(default_factory=list)
    token_caches: dict[str, SplitCache] = field(default_factory=dict)  # frozen encoders only

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    @property
    def task_type(self) -> str:
        return self.datasets["test"].task_type

    def loader(self, split: str, table: MissingTable | None = None) -> DataLoader:
        """An evaluation loader over ``split`` (in order), optionally under a missing table."""
        return _loader(self.cfg, self.datasets[split], train=False, table=table,
                       model=self.model, token_caches=self.token_caches)

    def set_fill_means(self) -> None:
        """Set the model's mean fills from its encoders as trained (one pass over train)."""
        emb, labels = _frozen_embeddings(self.cfg, self.model, self.datasets["train"],
                                         self.token_caches, reads=False)
        initialise_from_probes(self.model, emb, labels, emb, labels, fit=False)

    def encode(self, split: str = "test") -> EmbeddingCache:
        """Every sample of ``split`` encoded once with the modalities it really has."""
        device = resolve_device(self.cfg.run.device)
        return collect(self.model, self.loader(split), device, self.cfg.run.precision,
                       self.cfg.run.progress)


def load_datasets(cfg: Config) -> dict[str, MultimodalDataset]:
    """The train, val and test splits of the configured dataset, checked for consistency."""
    datasets = {split: load_dataset(cfg.data, split) for split in SPLITS}
    classes = datasets["train"].classes
    for split, ds in datasets.items():
        if ds.classes != classes:
            raise ValueError(f"{cfg.data.dataset}: split {split} has other classes than train")
        if len(ds) == 0:
            raise ValueError(f"{cfg.data.dataset} at {cfg.data.data_root}: split {split} is empty")
    if problem := batch_size_problem(cfg, len(datasets["train"])):
        raise ValueError(problem)
    return datasets


def _loader(cfg: Config, dataset: MultimodalDataset, train: bool, table: MissingTable | None,
            model: FusionModel | None = None,
            token_caches: dict[str, SplitCache] | None = None) -> DataLoader:
    """A loader of decoded samples, or, for frozen encoders, of the split's cached tokens.

    The token cache is built (or read from disk) on the split's first loader and kept in
    ``token_caches``; it holds un-augmented images, so frozen runs train without
    augmentation.
    """
    batch_size = cfg.optim.batch_size if train else cfg.run.eval_batch_size
    if model is not None and token_caches is not None and uses_token_cache(cfg):
        if dataset.split not in token_caches:
            token_caches[dataset.split] = load_or_build_split_cache(
                model, cfg, dataset, _loader(cfg, dataset, False, None),
                resolve_device(cfg.run.device))
        cache = token_caches[dataset.split]
        return build_loader(CachedSplit(cache, dataset), batch_size,
                            CachedCollator(cache, table, room=cfg.model.prompt_length),
                            train=train, seed=cfg.run.seed)
    collate = build_collator(cfg, dataset, train, table)
    return build_loader(dataset, batch_size, collate, train=train, seed=cfg.run.seed,
                        num_workers=cfg.data.num_workers)


def _frozen_embeddings(cfg: Config, model: FusionModel, dataset: MultimodalDataset,
                       caches: dict[str, SplitCache], table: MissingTable | None = None,
                       reads: bool = True) -> tuple[Embeddings, Tensor]:
    """A split's embeddings and labels as the model's encoders give them now, with the
    availability the split has in training (real, then ``table``'s, if given).

    ``reads=False`` asks only for the encoders' embeddings (the mean fills), not for what the
    predictors read: a token cache holds those embeddings, so no prompt pass is run.
    """
    cls = cfg.model.predict_from == "cls"
    if uses_token_cache(cfg) and (cls or not reads):  # no prompt pass needed
        cache = caches[dataset.split]
        # a modality no row of the split has was never encoded: zeros, marked absent
        image, text = (None if encoder is None else c.embedding.float() if c is not None
                       else torch.zeros(len(cache), encoder.embed_dim)
                       for c, encoder in ((cache.image, model.image_encoder),
                                          (cache.text, model.text_encoder)))
        emb = Embeddings(image, text, None, None, cache.has_image, cache.has_text,
                         read_image=image if cls else None,  # what the cls predictors read
                         read_text=text if cls else None)
        positions, labels = torch.arange(len(cache)), cache.labels
    else:
        device = resolve_device(cfg.run.device)
        encoded = collect(model.to(device), _loader(cfg, dataset, False, None, model, caches),
                          device, cfg.run.precision, cfg.run.progress)
        emb, positions, labels = encoded.emb, encoded.index, encoded.labels
    if table is not None:
        emb.has_image, emb.has_text = table.apply(positions, emb.has_image, emb.has_text)
    return emb, labels


def build_and_train(cfg: Config, datasets: dict[str, MultimodalDataset] | None = None
                    ) -> Experiment:
    """Train (or load, or resume) the run ``cfg`` describes, in ``cfg.run.out_dir``.

    The training split gets the missing table of ``missing.missing_train`` ("complete":
    none); validation is scored under the configured rate and type, so the best
    checkpoint is the one that copes best with the missingness it will meet.
    """
    datasets = datasets or load_datasets(cfg)
    run_dir = Path(cfg.run.out_dir)
    name = cfg.data.dataset
    caches: dict[str, SplitCache] = {}

    def build(cfg: Config) -> tuple[FusionModel, DataLoader, DataLoader]:
        train_ds, val_ds = datasets["train"], datasets["val"]
        model = build_model(cfg, train_ds.num_classes, train_ds.task_type)
        tables = {split: load_or_build(run_dir / "missing", cfg.missing, name, split, len(ds))
                  for split, ds in (("train", train_ds), ("val", val_ds))}
        loaders = (_loader(cfg, train_ds, True, tables["train"], model, caches),
                   _loader(cfg, val_ds, False, tables["val"], model, caches))
        fresh = not (run_dir / LAST).exists()
        fit = fresh and cfg.optim.probe_init
        # mean fills and closed-form starts need the frozen embeddings: the mean fills' come
        # free from a token cache (which sets them for every run, also a finished one: they
        # are not saved), the closed-form starts' take one encoding pass of train and val
        if fit or cfg.model.fill == "mean" or uses_token_cache(cfg):
            train_emb, val_emb = (_frozen_embeddings(cfg, model, ds, caches, tables[ds.split],
                                                     reads=fit)
                                  for ds in (train_ds, val_ds))
            fits = initialise_from_probes(model, *train_emb, *val_emb, fit=fit)
            if fits and distributed_env().is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_json(run_dir / "probe_init.json", fits)
        return (model, *loaders)

    model, result = load_or_train(cfg, build, run_dir)
    return Experiment(cfg, model, datasets, result, token_caches=caches)


def run(cfg: Config, rates: Sequence[float] = DEFAULT_RATES,
        types: Sequence[str] = MISSING_TYPES, seeds: Sequence[int] = DEFAULT_SEEDS,
        fills: Sequence[str | None] = (None,)) -> Experiment:
    """Train, then score the test split under every missingness; results saved in the run folder.

    A finished run with a saved sweep over the same grid is loaded, not recomputed.
    """
    exp = build_and_train(cfg)
    grid = {"rates": list(rates), "types": list(types), "seeds": list(seeds),
            "fills": [f or cfg.model.fill for f in fills]}
    saved = exp.run_dir / "sweep.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous.get("grid") == grid:
            exp.sweep_rows = previous["rows"]
            return exp
    if "mean" in grid["fills"] and not uses_token_cache(cfg):
        exp.set_fill_means()
    cache = exp.encode("test")
    configured = load_or_build(exp.run_dir / "missing", cfg.missing, cfg.data.dataset, "test",
                               len(cache))
    test_metrics = score(exp.model, cache, configured, exp.task_type)
    exp.sweep_rows = sweep(exp.model, cache, exp.task_type, cfg.data.dataset, "test", rates,
                           types, seeds, fills, table_dir=exp.run_dir / "missing",
                           progress=cfg.run.progress)
    write_json(exp.run_dir / "test_metrics.json", {
        "missing_type": cfg.missing.missing_type, "missing_rate": cfg.missing.missing_rate,
        "missing_seed": cfg.missing.missing_seed, "table_sha256": configured.digest(),
        "metrics": test_metrics})
    write_json(saved, {"grid": grid, "rows": exp.sweep_rows})
    write_csv(exp.run_dir / "sweep.csv", exp.sweep_rows)
    return exp


def compare(cfg: Config, rates: Sequence[float] = DEFAULT_RATES,
            types: Sequence[str] = MISSING_TYPES, seeds: Sequence[int] = DEFAULT_SEEDS
            ) -> tuple[list[dict], dict[str, Experiment]]:
    """Every method of ``COMPARED`` on ``cfg``'s data, each in its own run folder.

    Returns:
        Tidy sweep rows with a "method" column (a constant fill's rows carry the fill's
        name), and the experiments by trained method.
    """
    rows, experiments = [], {}
    for method, fills in COMPARED.items():
        exp = experiments[method] = run(method_config(cfg, method), rates, types, seeds, fills)
        rows += [{**r, "method": method if fills == (None,) else r["fill"]}
                 for r in exp.sweep_rows]
    return rows, experiments


def write_csv(path: Path, rows: list[dict]) -> None:
    """A tidy CSV: one row per (type, rate, seed, fill), one column per metric (atomic)."""
    if not rows:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())
