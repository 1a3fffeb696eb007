"""Linear probes on frozen embeddings: does each modality carry what the other lacks?

For both clipart tasks, embed every sample once with the offline preset's frozen
encoders (image: final-norm CLS; text: the preset's pooling), fit a logistic regression
on train, pick C on val, and score image-only, text-only and both (concatenated) on test.
A missing text embeds as zeros, as it would reach a head that never saw it.

    python scripts/modality_probe.py            # writes runs/probe/{*.npy,table.json}
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from mmcore.config import Config
from mmcore.data.clipart import SPLITS, TASKS, load_clipart
from mmcore.encoders import build_image_encoder, build_text_encoder, image_transform, load_tokenizer

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@torch.no_grad()
def embed_split(root: Path, split: str, cfg: Config, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Frozen image and text embeddings of every sample of a split (category task order)."""
    samples = load_clipart(root, "category", split).samples
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
            "text": torch.cat(texts).numpy()}


def labels_for(root: Path, task: str, split: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row positions into ``ids``, targets) for a task: (N,) class ids or (N, C) 0/1."""
    ds = load_clipart(root, task, split)
    position = {i: n for n, i in enumerate(ids)}
    rows = np.array([position[s.id] for s in ds.samples])
    if TASKS[task] == "multiclass":
        return rows, np.array([s.label[0] for s in ds.samples])
    y = np.zeros((len(ds), ds.num_classes), dtype=int)
    for n, s in enumerate(ds.samples):
        y[n, list(s.label)] = 1
    return rows, y


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


def _score(y: np.ndarray, pred: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return float(f1_score(y, pred, average="macro", zero_division=0))
    return float(accuracy_score(y, pred))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/openclipart"))
    parser.add_argument("--out", type=Path, default=Path("runs/probe"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = Config()
    args.out.mkdir(parents=True, exist_ok=True)
    feats = {}
    for split in SPLITS:
        cache = {k: args.out / f"{split}_{k}.npy" for k in ("ids", "image", "text")}
        if not all(p.exists() for p in cache.values()):
            for k, v in embed_split(args.root, split, cfg).items():
                np.save(cache[k], v)
        feats[split] = {k: np.load(p) for k, p in cache.items()}
    table = {}
    for task, task_type in TASKS.items():
        ys, views = {}, {"image": {}, "text": {}, "both": {}}
        for split in SPLITS:
            rows, ys[split] = labels_for(args.root, task, split, feats[split]["ids"])
            f = feats[split]
            views["image"][split] = f["image"][rows]
            views["text"][split] = f["text"][rows]
            views["both"][split] = np.concatenate([f["image"][rows], f["text"][rows]], axis=1)
        metric = "accuracy" if task_type == "multiclass" else "f1_macro"
        table[task] = {"metric": metric, "test_samples": len(ys["test"])}
        for view, x in views.items():
            score, c = probe(x, ys, multilabel=task_type == "multilabel")
            table[task][view] = {"score": round(score, 4), "C": c}
        print(task, json.dumps(table[task]))
    (args.out / "table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
