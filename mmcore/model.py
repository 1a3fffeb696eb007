"""Feature predictors, per-modality heads and late fusion over two unimodal encoders.

``FusionModel`` encodes each modality only on the rows that have it, predicts the other
modality's embedding from it, and sums the two heads' logits (late fusion). A missing
modality's head is fed a fill: the predicted embedding (the method), zeros, or the
encoder's embedding of a MAP-style dummy input (baselines).

Design choices the paper leaves open, fixed here (each a ``Config`` field):

- pooling over the K prompt outputs: their mean by default (order-free, the same for any
  K); ``model.prompt_pool`` offers a learned attention over them or their concatenation;
- predictor: ``model.predictor_layers`` linear layers of width ``model.predictor_hidden``
  with LayerNorm + GELU between them, a plain Linear last, so it can reach any target scale;
- no projector/expander before VICReg: the predicted embedding must stand in for the true
  one in the target head, so both are compared in the head's own space, divided by one
  scalar, the target's spread (``loss.scale_to_target``; see ``losses.scale_to_target``);
- stop-gradient on the target: ``loss.stop_grad_target`` (default on: VICReg's variance and
  covariance terms on the target would otherwise push the target encoder to whiten its
  pretrained embedding, against the task loss; chapter 05 ablates it);
- weight of the alignment in the total loss: ``loss.alpha``.

Precision: the model does not switch autocast itself; the caller wraps its forward in
``mmcore.runtime.precision_context(device, precision)``. The losses always compute in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch import Tensor

from mmcore.choice_lists import Fill, TaskType
from mmcore.config import LossConfig, ModelConfig
from mmcore.heads import ClassifierHead, FeaturePredictor
from mmcore.losses import alignment_loss, task_loss
from mmcore.prompts import prompt_parameters

if TYPE_CHECKING:  # annotations only
    from mmcore.data.base import Batch
    from mmcore.encoders import EncoderOutput


@dataclass
class Embeddings:
    """Full-batch embeddings; rows whose source modality is missing hold zeros.

    ``pred_text`` is predicted from the image (valid where ``has_image``), ``pred_image``
    from the text (valid where ``has_text``). A unimodal model leaves the absent
    modality's fields as None.
    """

    image_emb: Tensor | None  # (B, Di)
    text_emb: Tensor | None  # (B, Dt)
    pred_image: Tensor | None  # (B, Di) from text
    pred_text: Tensor | None  # (B, Dt) from image
    has_image: Tensor  # (B,) bool
    has_text: Tensor  # (B,) bool
    # what each predictor's first layer read (pooled prompts, or the embedding for cls):
    # the inputs of the closed-form (ridge) predictor start, ``mmcore.probe``
    read_image: Tensor | None = None  # (B, F) read by image -> text
    read_text: Tensor | None = None  # (B, F) read by text -> image


@dataclass
class ModelOutput:
    logits: Tensor  # (B, C) fused logits
    loss: Tensor  # task + alpha * alignment
    terms: dict[str, float]  # detached parts for logging: task, align, inv, var, cov
    task: Tensor  # the two parts of ``loss``, graphs kept, so that training can route the
    alignment: Tensor  # alignment's gradient (alpha * alignment; loss.align_reaches_encoder)


class FusionModel(nn.Module):
    """Two unimodal encoders, two feature predictors, two heads, and late fusion of their logits.

    Encoders follow the ``mmcore.encoders`` contract: a call returns an ``EncoderOutput``
    with ``embedding`` (N, D) and ``prompts`` (N, K, D), and the module has ``embed_dim``.
    The image encoder is called as ``image_encoder(pixel_values)``, the text encoder as
    ``text_encoder(input_ids, attention_mask)``.
    """

    def __init__(
        self,
        image_encoder: nn.Module | None,
        text_encoder: nn.Module | None,
        num_classes: int,
        task_type: TaskType,
        model_cfg: ModelConfig | None = None,
        loss_cfg: LossConfig | None = None,
        dummy_text: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """
        Args:
            image_encoder: ViT wrapper, or None for a text-only model.
            text_encoder: BERT wrapper, or None for an image-only model.
            num_classes: logits per head (2 for binary tasks: see ``mmcore.losses.task_loss``).
            task_type: "multiclass", "multilabel" or "binary"; picks the task loss.
            model_cfg: ``predict_from``, ``predictor_hidden``, ``predictor_layers``,
                ``prompt_pool``, ``fill``, ``head_dropout`` and ``image_size`` (the side of
                the all-ones dummy image) are used; default ``ModelConfig()``.
            loss_cfg: alignment loss, its coefficients, alpha and the stop-gradient.
            dummy_text: (1, L) input ids and attention mask of the empty text (fill "dummy").
        """
        super().__init__()
        cfg = model_cfg or ModelConfig()
        if image_encoder is None and text_encoder is None:
            raise ValueError("FusionModel needs at least one encoder")
        if task_type == "binary" and num_classes != 2:
            raise ValueError(f"binary tasks use 2 logits (softmax), got num_classes={num_classes}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.task_type: TaskType = task_type
        self.loss_cfg = loss_cfg or LossConfig()
        self.predict_from = cfg.predict_from
        self.fill = cfg.fill
        self.image_size = cfg.image_size
        self.num_classes = num_classes

        self.heads = nn.ModuleDict()
        self.predictors = nn.ModuleDict()
        if image_encoder is not None:
            self.heads["image"] = ClassifierHead(image_encoder.embed_dim, num_classes,
                                                 cfg.head_dropout)
        if text_encoder is not None:
            self.heads["text"] = ClassifierHead(text_encoder.embed_dim, num_classes,
                                                cfg.head_dropout)
        if image_encoder is not None and text_encoder is not None:
            di, dt = image_encoder.embed_dim, text_encoder.embed_dim
            pool = cfg.prompt_pool if cfg.predict_from == "prompts" else "mean"  # cls: one vector
            ki, kt = ((image_encoder.prompt_length, text_encoder.prompt_length)
                      if pool == "concat" else (1, 1))
            self.predictors["image_to_text"] = FeaturePredictor(
                di, dt, cfg.predictor_hidden, cfg.predictor_layers, pool, ki)
            self.predictors["text_to_image"] = FeaturePredictor(
                dt, di, cfg.predictor_hidden, cfg.predictor_layers, pool, kt)
        self._dummy_embeddings: dict[str, Tensor] = {}
        for name, encoder in (("image", image_encoder), ("text", text_encoder)):
            if encoder is not None:  # the training split's mean embedding (fill "mean")
                self.register_buffer(f"mean_{name}", torch.zeros(encoder.embed_dim),
                                     persistent=False)
        if dummy_text is not None:
            self.register_buffer("dummy_input_ids", dummy_text[0].long(), persistent=False)
            self.register_buffer("dummy_attention_mask", dummy_text[1].long(), persistent=False)
        else:
            self.dummy_input_ids = self.dummy_attention_mask = None

    @property
    def is_bimodal(self) -> bool:
        return self.image_encoder is not None and self.text_encoder is not None

    def train(self, mode: bool = True) -> "FusionModel":
        """Train mode everywhere except in encoders without trainable weights besides the
        prompts: a frozen encoder stays deterministic (no dropout), as its cache assumes."""
        super().train(mode)
        if mode:
            self._dummy_embeddings.clear()
        for encoder in (self.image_encoder, self.text_encoder):
            if encoder is not None and not _has_trainable_weights(encoder):
                encoder.eval()
        return self

    def set_fill_means(self, image_mean: Tensor | None, text_mean: Tensor | None) -> None:
        """Set the embeddings that fill "mean" stands in (the training split's means)."""
        with torch.no_grad():
            for name, value in (("image", image_mean), ("text", text_mean)):
                if value is not None and hasattr(self, f"mean_{name}"):
                    getattr(self, f"mean_{name}").copy_(value)

    # --- encoding -------------------------------------------------------------------------

    def encode(self, batch: Batch) -> Embeddings:
        """Run each encoder on the rows that have its modality; predict the other modality.

        Args:
            batch: a collated ``Batch``; rows without a modality are never passed to its encoder.

        Returns:
            ``Embeddings`` with full-batch (B, D) tensors; rows without the source hold zeros.
        """
        image_emb = pred_text = text_emb = pred_image = read_image = read_text = None
        if self.image_encoder is not None:
            rows = batch.has_image.nonzero().squeeze(1)  # (N,)
            out = None
            if rows.numel() and batch.image_tokens is not None:  # frozen: prompts only
                tokens = batch.image_tokens
                out = self.image_encoder.forward_cached(tokens if rows.numel() == len(batch)
                                                        else tokens.batch(rows, tokens.room))
            elif rows.numel():
                out = self.image_encoder(batch.pixel_values[rows])
            image_emb, pred_text, read_image = self._predict_and_scatter(
                out, rows, len(batch), "image", "text")
        if self.text_encoder is not None:
            rows = batch.has_text.nonzero().squeeze(1)  # (N,)
            out = None
            if rows.numel() and batch.text_tokens is not None:
                tokens = batch.text_tokens
                out = self.text_encoder.forward_cached(tokens if rows.numel() == len(batch)
                                                       else tokens.batch(rows, tokens.room))
            elif rows.numel():
                out = self.text_encoder(*_trim_padding(batch.input_ids[rows],
                                                       batch.attention_mask[rows]))
            text_emb, pred_image, read_text = self._predict_and_scatter(
                out, rows, len(batch), "text", "image")
        return Embeddings(image_emb, text_emb, pred_image, pred_text,
                          batch.has_image, batch.has_text, read_image, read_text)

    def _predict_and_scatter(self, out: EncoderOutput | None, rows: Tensor, batch_size: int,
                             source: str, target: str
                             ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Predict the target from the encoded rows; scatter the embedding, the prediction
        and what the predictor read into full-batch zeros."""
        predictor = self.predictors[f"{source}_to_{target}"] if self.is_bimodal else None
        dim = self.heads[source].fc.in_features
        if out is None:  # no row has the source modality
            emb = torch.zeros(batch_size, dim, device=rows.device)
            pred = None if predictor is None else torch.zeros(
                batch_size, self.heads[target].fc.in_features, device=rows.device)
            return emb, pred, None
        emb = _scatter_rows(out.embedding, rows, batch_size)  # (B, D)
        if predictor is None:
            return emb, None, None
        read = predictor.pool_inputs(
            out.prompts if self.predict_from == "prompts" else out.embedding)  # (N, F)
        return (emb, _scatter_rows(predictor.mlp(read), rows, batch_size),  # (B, D_target)
                _scatter_rows(read, rows, batch_size))

    # --- fusion ---------------------------------------------------------------------------

    def fill_missing(self, emb: Embeddings, has_image: Tensor, has_text: Tensor,
                     fill: Fill | None = None) -> dict[str, Tensor]:
        """Each head's input: the true embedding where present, else the fill.

        Args:
            emb: output of ``encode``.
            has_image: (B,) bool availability to fuse under (may differ from ``emb``'s,
                e.g. a sweep hiding modalities of a cached complete batch).
            has_text: (B,) bool.
            fill: overrides the model's fill ("predict", "zero", "dummy").

        Returns:
            ``{"image": (B, Di), "text": (B, Dt)}`` for the modalities the model has.
        """
        fill = fill or self.fill
        inputs = {}
        for name, true, pred, present, source in (
                ("image", emb.image_emb, emb.pred_image, has_image, has_text),
                ("text", emb.text_emb, emb.pred_text, has_text, has_image)):
            if true is None:
                continue
            if bool(present.all()):
                inputs[name] = true
                continue
            if fill == "predict" and pred is not None:
                # only from a source available under *this* availability (a cache may hold
                # predictions from a modality a sweep hides); zeros where there is none
                stand_in = torch.where(source[:, None], pred, torch.zeros_like(pred))
            elif fill == "dummy":
                stand_in = self.dummy_embedding(name).expand_as(true)  # (B, D)
            elif fill == "mean":
                stand_in = getattr(self, f"mean_{name}").expand_as(true)  # (B, D)
            else:
                stand_in = torch.zeros_like(true)  # "zero"; also "predict" in a unimodal model
            inputs[name] = torch.where(present[:, None], true, stand_in.to(true.dtype))
        return inputs

    def fuse(self, emb: Embeddings, has_image: Tensor, has_text: Tensor,
             fill: Fill | None = None) -> Tensor:
        """Late fusion: the sum of the heads' logits on the filled embeddings.

        Args:
            emb: output of ``encode``.
            has_image: (B,) bool.
            has_text: (B,) bool.
            fill: overrides the model's fill.

        Returns:
            (B, C) fused logits.
        """
        inputs = self.fill_missing(emb, has_image, has_text, fill)
        return sum(self.forward_head(x, name) for name, x in inputs.items())

    def forward_head(self, x: Tensor, modality: str, pre_logits: bool = False) -> Tensor:
        """One modality's head on (B, D) embeddings: (B, C) logits, or its input if pre_logits."""
        return self.heads[modality](x, pre_logits=pre_logits)

    def dummy_embedding(self, modality: str) -> Tensor:
        """The encoder's (1, D) embedding of MAP's dummy input: an all-ones image, an empty text.

        In evaluation mode it is computed once and kept (a sweep scores the dummy fill at
        every rate and seed); ``train()`` forgets it, since training may change the encoder.
        """
        if not self.training and modality in self._dummy_embeddings:
            return self._dummy_embeddings[modality]
        if modality == "image":
            param = next(self.image_encoder.parameters())
            ones = torch.ones(1, 3, self.image_size, self.image_size, device=param.device)
            embedding = self.image_encoder(ones).embedding
        elif self.dummy_input_ids is None:
            raise ValueError("model.fill='dummy' needs the empty text's token ids; "
                             "pass dummy_text to FusionModel (build_model does)")
        else:
            embedding = self.text_encoder(self.dummy_input_ids, self.dummy_attention_mask).embedding
        if not self.training:
            self._dummy_embeddings[modality] = embedding.detach()
        return embedding

    # --- training -------------------------------------------------------------------------

    def forward(self, batch: Batch) -> ModelOutput:
        """Encode, fuse, and compute the task loss plus alpha times the alignment loss.

        The alignment is computed on the rows that have both modalities and skipped (zero)
        when fewer than two such rows exist.
        """
        emb = self.encode(batch)
        logits = self.fuse(emb, batch.has_image, batch.has_text)
        task = task_loss(logits, batch.labels, self.task_type)
        align = inv = var = cov = task.new_zeros(())
        paired = batch.has_image & batch.has_text
        if self.is_bimodal and int(paired.sum()) >= 2:
            for pred, true in ((emb.pred_text, emb.text_emb), (emb.pred_image, emb.image_emb)):
                target = true[paired].detach() if self.loss_cfg.stop_grad_target else true[paired]
                parts = alignment_loss(pred[paired], target, self.loss_cfg)
                align, inv = align + parts.total, inv + parts.inv
                var, cov = var + parts.var, cov + parts.cov
        # at alpha = 0 (the constant-fill baselines) the alignment is logged but left out of the
        # graph: a zero-weighted term would still run its backward through every prompt layer
        weighted = self.loss_cfg.alpha * (align if self.loss_cfg.alpha else align.detach())
        logged = {"task": task, "align": align, "inv": inv, "var": var, "cov": cov}
        return ModelOutput(logits, task + weighted,
                           {k: float(v.detach()) for k, v in logged.items()}, task, weighted)


def _has_trainable_weights(encoder: nn.Module) -> bool:
    prompts = {id(p) for p in prompt_parameters(encoder)}
    return any(p.requires_grad and id(p) not in prompts for p in encoder.parameters())


def _scatter_rows(values: Tensor, rows: Tensor, batch_size: int) -> Tensor:
    """Place (N, D) row values at ``rows`` of a (B, D) zero tensor, keeping the graph."""
    full = values.new_zeros(batch_size, values.shape[-1])
    return full.index_copy(0, rows, values)


def _trim_padding(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the trailing columns that are padding in every selected row."""
    length = int(attention_mask.any(dim=0).nonzero().max()) + 1 if attention_mask.any() else 1
    return input_ids[:, :length], attention_mask[:, :length]
