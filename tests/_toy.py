"""A tiny two-encoder model and a synthetic dataset of ``Batch``es, for testing the engine.

The model has the shape ``mmcore.train`` relies on (and nothing of ``FusionModel``):
``image_encoder`` / ``text_encoder`` with read-only prompts, heads, ``task_type``, and
``forward(batch) -> (logits, loss, terms)``. Labels depend on the inputs, so it learns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mmcore.data.base import Batch
from mmcore.prompts import ReadOnlyPrompts

NUM_CLASSES, VOCAB, DIM = 3, 11, 8


@dataclass
class ToyOutput:
    logits: Tensor
    loss: Tensor
    terms: dict[str, float]


class ToyEncoder(nn.Module):
    def __init__(self, in_dim: int, dim: int, embed: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, in_dim) if embed else None
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.prompts = ReadOnlyPrompts(2, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.embed is not None:  # (B, L) ids -> mean of real tokens' embeddings
            m = mask.unsqueeze(-1).float()
            x = (self.embed(x) * m).sum(1) / m.sum(1).clamp(min=1)  # (B, in_dim)
        h = self.norm(self.proj(x.flatten(1)))  # (B, D)
        return h + self.prompts(len(x)).mean(1)  # (B, D)


class ToyModel(nn.Module):
    """Late fusion of two small encoders; ``dropout > 0`` makes training use the RNG."""

    task_type = "multiclass"

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_encoder = ToyEncoder(3 * 2 * 2, DIM, embed=False)
        self.text_encoder = ToyEncoder(DIM, DIM, embed=True)
        self.drop = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({"image": nn.Linear(DIM, NUM_CLASSES),
                                    "text": nn.Linear(DIM, NUM_CLASSES)})
        self.frozen = nn.Linear(DIM, DIM)  # stands in for pretrained weights PEFT froze
        self.frozen.requires_grad_(False)

    def forward(self, batch: Batch) -> ToyOutput:
        image = self.image_encoder(batch.pixel_values) * batch.has_image[:, None]  # (B, D)
        text = self.text_encoder(batch.input_ids, batch.attention_mask) * batch.has_text[:, None]
        logits = (self.heads["image"](self.drop(self.frozen(image)))
                  + self.heads["text"](self.drop(text)))  # (B, C)
        loss = F.cross_entropy(logits, batch.labels)
        return ToyOutput(logits, loss, {"task": float(loss.detach())})


class ToyData(Dataset):
    """``n`` fixed samples; items are indices and ``collate`` builds the ``Batch``."""

    task_type = "multiclass"

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(n, 3, 2, 2, generator=g)
        self.ids = torch.randint(1, VOCAB, (n, 5), generator=g)
        self.mask = (torch.rand(n, 5, generator=g) < 0.8).long()
        self.mask[:, 0] = 1
        self.has_image = torch.rand(n, generator=g) < 0.8
        self.has_text = ~self.has_image | (torch.rand(n, generator=g) < 0.8)
        self.labels = self.pixels.flatten(1)[:, :NUM_CLASSES].argmax(1)  # (N,)
        self.ids[:, 0] = self.labels + 1  # the text names the class too

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> Batch:
        i = torch.tensor(indices, dtype=torch.long)
        return Batch(index=i, pixel_values=self.pixels[i], input_ids=self.ids[i],
                     attention_mask=self.mask[i], has_image=self.has_image[i],
                     has_text=self.has_text[i], labels=self.labels[i])
