"""Linear probes on frozen embeddings: does each modality carry what the other lacks?

For each task of a dataset (clipart: category and keywords), embed every sample once
with the offline preset's frozen encoders (image: final-norm CLS; text: the preset's
pooling), fit a logistic regression on train, pick C on val, and score image-only,
text-only and both (concatenated) on test. A missing text embeds as zeros, as it would
reach a head that never saw it.

How much one modality predicts the other: a ridge regression from one frozen embedding
to the other (fitted on train rows with both, penalty chosen on val), scored by R^2 on
test (1 - SSE / total sum of squares over all dimensions).

    python scripts/modality_probe.py                          # writes runs/probe/clipart/
    python scripts/modality_probe.py --set dataset=emoji --set data_root=data/emoji
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, r2_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from mmcore.config import Config
from mmcore.data import MultimodalDataset, load_dataset
from mmcore.data.clipart import TASKS as CLIPART_TASKS
from mmcore.encoders import build_image_encoder, build_text_encoder, image_transform, load_tokenizer

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RIDGE_LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # penalty per training sample
SPLITS = ("train", "val", "test")


def tasks_of(cfg: Config) -> list[str]:
    """The tasks to probe: both clipart tasks, else the configured one."""
    return list(CLIPART_TASKS) if cfg.data.dataset == "clipart" else [cfg.data.task]


def load_task(cfg: Config, task: str, split: str) -> MultimodalDataset:
    """One split of the configured dataset for one task."""
    return load_dataset(cfg.replace(task=task).data, split)


@torch.no_grad()
def embed_split(split: str, cfg: Config, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Frozen image and text embeddings of every sample of a split (first task's order)."""
    samples = load_task(cfg, tasks_of(cfg)[0], split).samples
    image_encoder = build_image_encoder(cfg.model).eval()
    text_encoder = build_text_encoder(cfg.model).eval()
    tokenizer, transform = load_tokenizer(cfg.model), image_transform(cfg.model, train=False)
    images, texts = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        pixels = torch.stack([transform(Image.open(s.image).convert("RGB")) for s in chunk])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images.append(image_encoder(pixels).embedding.float())  # (B, D_img)
            text = torch.zeros(len(chunk), text_encoder.embed_dim)  # (B, D_txt); missing -> 0
            have = [i for i, s in enumerate(chunk) if s.text is not None]
            if have:
                tok = tokenizer([chunk[i].text for i in have], padding=True, truncation=True,
                                max_length=cfg.data.max_text_length, return_tensors="pt")
                text[have] = text_encoder(tok["input_ids"], tok["attention_mask"]).embedding.float()
            texts.append(text)
    return {"ids": np.array([s.id for s in samples]), "image": torch.cat(images).numpy(),
            "text": torch.cat(texts).numpy(),
            "has_text": np.array([s.text is not None for s in samples])}


def labels_for(cfg: Config, task: str, split: str, ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(row positions into ``ids``, targets, multilabel?): (N,) class ids or (N, C) 0/1."""
    ds = load_task(cfg, task, split)
    position = {i: n for n, i in enumerate(ids)}
    rows = np.array([position[s.id] for s in ds.samples])
    if ds.task_type != "multilabel":
        return rows, np.array([s.label[0] for s in ds.samples]), False
    y = np.zeros((len(ds), ds.num_classes), dtype=int)
    for n, s in enumerate(ds.samples):
        y[n, list(s.label)] = 1
    return rows, y, True


def probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray], multilabel: bool) -> tuple[float, float]:
    """Fit on train for each C, keep the best on val; return (test score, chosen C)."""
    scaler = StandardScaler().fit(x["train"])
    best = (-1.0, None, None)
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf = OneVsRestClassifier(clf) if multilabel else clf
        clf.fit(scaler.transform(x["train"]), y["train"])
        val = _score(y["val"], clf.predict(scaler.transform(x["val"])), multilabel)
        if val > best[0]:
            best = (val, c, clf)
    _, c, clf = best
    return _score(y["test"], clf.predict(scaler.transform(x["test"])), multilabel), c


def ridge_r2(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[float, float]:
    """Ridge from ``x`` to ``y`` fitted on train for each penalty, best R^2 on val kept;
    return (test R^2, chosen penalty per sample)."""
    best = (-np.inf, None, None)
    for lam in RIDGE_LAMBDAS:
        reg = Ridge(alpha=lam * len(x["train"])).fit(x["train"], y["train"])
        val = r2_score(y["val"], reg.predict(x["val"]), multioutput="variance_weighted")
        if val > best[0]:
            best = (val, lam, reg)
    _, lam, reg = best
    return float(r2_score(y["test"], reg.predict(x["test"]), multioutput="variance_weighted")), lam


def _score(y: np.ndarray, pred: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return float(f1_score(y, pred, average="macro", zero_division=0))
    return float(accuracy_score(y, pred))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a Config field (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for embeddings and table.json (default runs/probe/DATASET)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = Config().with_overrides(args.overrides)
    out = args.out or Path("runs/probe") / cfg.data.dataset
    out.mkdir(parents=True, exist_ok=True)
    feats = {}
    for split in SPLITS:
        cache = {k: out / f"{split}_{k}.npy" for k in ("ids", "image", "text", "has_text")}
        if not all(p.exists() for p in cache.values()):
            for k, v in embed_split(split, cfg).items():
                np.save(cache[k], v)
        feats[split] = {k: np.load(p) for k, p in cache.items()}
    table = {}
    for task in tasks_of(cfg):
        ys, views = {}, {"image": {}, "text": {}, "both": {}}
        for split in SPLITS:
            rows, ys[split], multilabel = labels_for(cfg, task, split, feats[split]["ids"])
            f = feats[split]
            views["image"][split] = f["image"][rows]
            views["text"][split] = f["text"][rows]
            views["both"][split] = np.concatenate([f["image"][rows], f["text"][rows]], axis=1)
        metric = "f1_macro" if multilabel else "accuracy"
        table[task] = {"metric": metric, "test_samples": len(ys["test"])}
        for view, x in views.items():
            score, c = probe(x, ys, multilabel=multilabel)
            table[task][view] = {"score": round(score, 4), "C": c}
        print(task, json.dumps(table[task]))
    both = {split: f["has_text"] for split, f in feats.items()}
    for src, dst in (("image", "text"), ("text", "image")):
        r2, lam = ridge_r2({s: f[src][both[s]] for s, f in feats.items()},
                           {s: f[dst][both[s]] for s, f in feats.items()})
        table[f"r2_{src}_to_{dst}"] = {"r2": round(r2, 4), "lambda": lam,
                                       "test_samples": int(both["test"].sum())}
        print(f"r2 {src} -> {dst}", json.dumps(table[f"r2_{src}_to_{dst}"]))
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
