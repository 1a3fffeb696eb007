"""torchrun worker for tests/test_ddp_missing.py: rank 1's batches hold no image at all.

Usage: torchrun --standalone --nproc_per_node=2 tests/_ddp_missing_worker.py RUN_DIR
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _toy import DIM, ToyData, ToyModel, ToyOutput

from mmcore.config import Config
from mmcore.data.base import Batch
from mmcore.runtime import build_loader, seed_everything
from mmcore.train import fit


class SkippingModel(ToyModel):
    """As ``FusionModel`` does: an encoder runs only on the rows that have its modality."""

    def forward(self, batch: Batch) -> ToyOutput:
        image = torch.zeros(len(batch), DIM)
        if batch.has_image.any():  # (B, D), zeros where the image is missing
            image = image.index_put((batch.has_image,), self.image_encoder(
                batch.pixel_values[batch.has_image]))
        text = self.text_encoder(batch.input_ids, batch.attention_mask) * batch.has_text[:, None]
        logits = self.heads["image"](image) + self.heads["text"](text)  # (B, C)
        loss = F.cross_entropy(logits, batch.labels)
        return ToyOutput(logits, loss, {"task": float(loss.detach())})


class RankOneWithoutImages(ToyData):
    def collate(self, indices: list[int]) -> Batch:
        batch = super().collate(indices)
        if dist.is_initialized() and dist.get_rank() == 1:
            batch.has_image = torch.zeros_like(batch.has_image)
        return batch


def main(run_dir: str) -> None:
    cfg = Config.from_params(epochs=2, batch_size=8, eval_batch_size=16, precision="fp32",
                             progress=False, seed=3)
    seed_everything(cfg.run.seed)
    model, train, val = SkippingModel(), RankOneWithoutImages(64, seed=0), ToyData(31, seed=1)
    fit(model, build_loader(train, 8, train.collate, train=True, seed=3),
        build_loader(val, 16, val.collate, train=False), cfg, run_dir)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
