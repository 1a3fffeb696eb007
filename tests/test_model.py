"""FusionModel with small stand-in encoders that follow the mmcore.encoders contract."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn as nn
from torch import Tensor

from mmcore.config import LossConfig, ModelConfig
from mmcore.data.base import Batch
from mmcore.build import parameter_report
from mmcore.heads import FeaturePredictor
from mmcore.losses import alignment_loss
from mmcore.model import FusionModel
from mmcore.prompts import ReadOnlyPrompts
from mmcore.runtime import precision_context

DI, DT, K, C = 8, 6, 3, 4
ROW_BASE = 10  # row r carries the marker r + ROW_BASE so a spy can tell which rows it got


class StubOutput(NamedTuple):
    embedding: Tensor  # (N, D)
    prompts: Tensor  # (N, K, D)


class SpyImageEncoder(nn.Module):
    """Linear map of the mean pixel per channel; records the row markers it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim, self.prompt_length = DI, K
        self.proj = nn.Linear(3, DI)
        self.prompt = nn.Parameter(torch.randn(K, DI) * 0.5)
        self.calls: list[list[int]] = []

    def forward(self, pixel_values: Tensor) -> StubOutput:
        self.calls.append((pixel_values[:, 0, 0, 0].round().long() - ROW_BASE).tolist())
        emb = self.proj(pixel_values.mean(dim=(2, 3)))  # (N, DI)
        return StubOutput(emb, torch.tanh(emb[:, None, :] + self.prompt))  # (N, K, DI)


class SpyTextEncoder(nn.Module):
    """Masked mean of token embeddings; records row markers and the sequence length it got."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim, self.prompt_length = DT, K
        self.tok = nn.Embedding(64, DT)
        self.bias = nn.Parameter(torch.zeros(DT))
        self.prompt = nn.Parameter(torch.randn(K, DT) * 0.5)
        self.calls: list[list[int]] = []
        self.lengths: list[int] = []

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> StubOutput:
        self.calls.append((input_ids[:, 0] - ROW_BASE).tolist())
        self.lengths.append(input_ids.shape[1])
        m = attention_mask[..., None].float()
        emb = (self.tok(input_ids) * m).sum(1) / m.sum(1).clamp(min=1) + self.bias  # (N, DT)
        return StubOutput(emb, torch.tanh(emb[:, None, :] + self.prompt))  # (N, K, DT)


def make_batch(has_image: list[bool], has_text: list[bool], seed: int = 0,
               multilabel: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = len(has_image)
    pixels = torch.randn(b, 3, 4, 4, generator=g)
    pixels[:, 0, 0, 0] = torch.arange(b) + ROW_BASE
    lengths = torch.randint(2, 6, (b,), generator=g)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()  # (B, 8), last columns padding
    ids = torch.randint(1, 64, (b, 8), generator=g) * mask
    ids[:, 0] = torch.arange(b) + ROW_BASE
    labels = ((torch.rand(b, C, generator=g) > 0.5).float() if multilabel
              else torch.randint(0, C, (b,), generator=g))
    return Batch(index=torch.arange(b), pixel_values=pixels, input_ids=ids,
                 attention_mask=mask, has_image=torch.tensor(has_image),
                 has_text=torch.tensor(has_text), labels=labels)


def make_model(seed: int = 0, **kwargs) -> FusionModel:
    torch.manual_seed(seed)
    modalities = kwargs.pop("modalities", "both")
    image = SpyImageEncoder() if modalities in ("both", "image") else None
    text = SpyTextEncoder() if modalities in ("both", "text") else None
    kwargs.setdefault("dummy_text", (torch.tensor([[ROW_BASE - 1, 2]]), torch.ones(1, 2)))
    kwargs.setdefault("task_type", "multiclass")
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in ModelConfig.__dataclass_fields__}
    model_cfg = ModelConfig(predictor_hidden=16, image_size=4, head_dropout=0.0, **fields)
    return FusionModel(image, text, num_classes=C, model_cfg=model_cfg, **kwargs)


HAS_IMAGE = [True, False, True, True, False, True]
HAS_TEXT = [True, True, False, True, True, False]


def rows(mask: list[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


def test_feature_predictor_pools_prompts_and_respects_depth():
    torch.manual_seed(0)
    one = FeaturePredictor(5, 7, hidden=11, layers=1, pool="mean")
    three = FeaturePredictor(5, 7, hidden=11, layers=3, pool="mean")
    assert sum(isinstance(m, nn.Linear) for m in one.modules()) == 1
    assert sum(isinstance(m, nn.Linear) for m in three.modules()) == 3
    prompts = torch.randn(4, K, 5)
    torch.testing.assert_close(three(prompts), three(prompts.mean(dim=1)))
    assert three(prompts).shape == (4, 7)
    with pytest.raises(ValueError, match="predictor_layers"):
        FeaturePredictor(5, 7, hidden=11, layers=0, pool="mean")


def test_feature_predictor_attention_and_concat_pooling():
    torch.manual_seed(0)
    prompts = torch.randn(4, K, 5)
    attention = FeaturePredictor(5, 7, hidden=11, layers=1, pool="attention")
    with torch.no_grad():
        attention.score.weight.zero_()  # equal scores: attention is the mean
    torch.testing.assert_close(attention(prompts), attention.mlp(prompts.mean(dim=1)))
    with torch.no_grad():
        attention.score.weight.copy_(torch.tensor([[0.0, 0, 0, 0, 100.0]]))  # the top feature wins
    top = prompts[torch.arange(4), prompts[..., 4].argmax(dim=1)]
    torch.testing.assert_close(attention(prompts), attention.mlp(top))
    concat = FeaturePredictor(5, 7, hidden=11, layers=2, pool="concat", num_prompts=K)
    assert concat.mlp[0].in_features == 5 * K
    assert concat(prompts).shape == (4, 7)
    assert not torch.allclose(concat(prompts), concat(prompts.flip(1)))  # order matters
    with pytest.raises(ValueError, match="prompt_pool"):
        FeaturePredictor(5, 7, hidden=11, layers=2, pool="max")


def test_encoders_only_see_rows_that_have_their_modality():
    model = make_model()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    emb = model.encode(batch)
    assert model.image_encoder.calls == [rows(HAS_IMAGE)]
    assert model.text_encoder.calls == [rows(HAS_TEXT)]
    missing_img, missing_txt = ~batch.has_image, ~batch.has_text
    for full, missing in ((emb.image_emb, missing_img), (emb.pred_text, missing_img),
                          (emb.text_emb, missing_txt), (emb.pred_image, missing_txt)):
        assert full[missing].abs().sum() == 0
    assert (emb.image_emb[batch.has_image].abs().sum(1) > 0).all()
    assert (emb.pred_image[batch.has_text].abs().sum(1) > 0).all()


def test_text_encoder_gets_padding_trimmed_to_the_present_rows():
    model = make_model()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    model.encode(batch)
    longest = int(batch.attention_mask[batch.has_text].sum(1).max())
    assert model.text_encoder.lengths == [longest]


def test_encoding_matches_a_full_batch_run_on_present_rows():
    model = make_model()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    emb = model.encode(batch)
    full = model.image_encoder(batch.pixel_values)
    present = batch.has_image
    torch.testing.assert_close(emb.image_emb[present], full.embedding[present])
    torch.testing.assert_close(emb.pred_text[present],
                               model.predictors["image_to_text"](full.prompts[present]))


def test_predicted_embedding_is_used_exactly_where_a_modality_is_missing():
    model = make_model().eval()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    emb = model.encode(batch)
    logits = model.fuse(emb, batch.has_image, batch.has_text)
    head_i, head_t = model.heads["image"], model.heads["text"]
    for r in range(len(batch)):
        img = emb.image_emb[r] if HAS_IMAGE[r] else emb.pred_image[r]
        txt = emb.text_emb[r] if HAS_TEXT[r] else emb.pred_text[r]
        torch.testing.assert_close(logits[r], head_i(img[None])[0] + head_t(txt[None])[0])
    # the prediction really differs from what a zero fill gives
    zero = model.fuse(emb, batch.has_image, batch.has_text, fill="zero")
    missing = ~(batch.has_image & batch.has_text)
    assert not torch.allclose(zero[missing], logits[missing])
    torch.testing.assert_close(zero[~missing], logits[~missing])


def test_zero_fill_feeds_zeros_to_the_missing_head():
    model = make_model(fill="zero").eval()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    emb = model.encode(batch)
    logits = model.fuse(emb, batch.has_image, batch.has_text)
    r = HAS_IMAGE.index(False)  # text only: image head sees zeros, i.e. gives its bias
    want = model.heads["image"].fc.bias + model.heads["text"](emb.text_emb[r][None])[0]
    torch.testing.assert_close(logits[r], want)


def test_dummy_fill_encodes_one_dummy_sample_per_modality():
    model = make_model(fill="dummy").eval()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    emb = model.encode(batch)
    model.image_encoder.calls.clear()
    model.text_encoder.calls.clear()
    logits = model.fuse(emb, batch.has_image, batch.has_text)
    assert model.image_encoder.calls == [[1 - ROW_BASE]]  # one all-ones image
    assert model.text_encoder.calls == [[-1]]  # one empty text (marker ROW_BASE - 1)
    dummy_img = model.image_encoder(torch.ones(1, 3, 4, 4)).embedding[0]
    r = HAS_IMAGE.index(False)
    want = model.heads["image"](dummy_img[None])[0] + model.heads["text"](emb.text_emb[r][None])[0]
    torch.testing.assert_close(logits[r], want)


def test_dummy_fill_without_dummy_text_says_what_is_missing():
    model = make_model(fill="dummy", dummy_text=None).eval()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    with pytest.raises(ValueError, match="dummy_text"):
        model(batch)


def test_row_missing_both_modalities_gets_both_fills():
    model = make_model().eval()
    batch = make_batch([True, False, True], [True, False, True])
    out = model(batch)
    assert torch.isfinite(out.loss)
    bias_sum = model.heads["image"].fc.bias + model.heads["text"].fc.bias  # both fills are zero
    torch.testing.assert_close(out.logits[1], bias_sum)
    assert model.image_encoder.calls == [[0, 2]] and model.text_encoder.calls == [[0, 2]]


@pytest.mark.parametrize("has_image,has_text", [
    ([True, False, True, False], [False, True, False, True]),  # 0 paired rows
    ([True, True, False, True], [False, True, True, False]),  # 1 paired row
    ([False, False, False, False], [True, True, True, True]),  # image missing everywhere
])
def test_loss_finite_with_fewer_than_two_pairs(has_image, has_text):
    model = make_model()
    out = model(make_batch(has_image, has_text))
    assert torch.isfinite(out.loss) and torch.isfinite(out.logits).all()
    assert out.terms["align"] == 0.0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_alignment_uses_paired_rows_and_alpha():
    loss_cfg = LossConfig(alpha=0.5)
    model = make_model(loss_cfg=loss_cfg).eval()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    out = model(batch)
    emb = model.encode(batch)
    paired = batch.has_image & batch.has_text
    # the default stop-gradient: the targets are detached (so their constant halves drop out)
    want = (alignment_loss(emb.pred_text[paired], emb.text_emb[paired].detach(), loss_cfg).total
            + alignment_loss(emb.pred_image[paired], emb.image_emb[paired].detach(),
                             loss_cfg).total)
    assert out.terms["align"] == pytest.approx(want.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.terms["task"] + 0.5 * want.item(), rel=1e-5)
    assert set(out.terms) == {"task", "align", "inv", "var", "cov"}


def test_gradients_reach_prompts_predictors_heads_and_encoders():
    model = make_model()
    model(make_batch([True] * 6, [True] * 6)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_predictors_learn_only_from_the_alignment_under_complete_data():
    model = make_model(loss_cfg=LossConfig(alpha=0.0))
    model(make_batch([True] * 6, [True] * 6)).loss.backward()
    for p in model.predictors.parameters():
        assert p.grad is None or p.grad.abs().sum() == 0


def test_a_zero_weighted_alignment_is_logged_but_sends_no_backward():
    model = make_model(loss_cfg=LossConfig(alpha=0.0))
    out = model(make_batch([True] * 6, [True] * 6))
    out.loss.backward()
    assert out.terms["align"] > 0
    skipped = {n: p.grad for n, p in model.named_parameters()
               if n.endswith("prompt") or n.startswith("predictors")}
    assert len(skipped) > 2 and all(grad is None for grad in skipped.values())
    assert model.heads["image"].fc.weight.grad.abs().sum() > 0


def test_stop_grad_target_changes_the_target_encoders_gradient():
    grads = {}
    for stop in (False, True):
        model = make_model(seed=3, loss_cfg=LossConfig(alignment="vicreg",
                                                          stop_grad_target=stop, alpha=1.0))
        out = model(make_batch([True] * 6, [True] * 6))
        out.loss.backward()
        grads[stop] = (out.terms["align"], model.text_encoder.bias.grad.clone())
    # detached, the target's own variance and covariance halves are constants, left out
    assert grads[True][0] < grads[False][0]
    assert not torch.allclose(grads[False][1], grads[True][1])


def test_predict_from_cls_feeds_the_embedding_to_the_predictor():
    seen = {}
    for source in ("prompts", "cls"):
        model = make_model(predict_from=source).eval()
        shapes = []
        predictor = model.predictors["image_to_text"]
        pool = predictor.pool_inputs  # what the predictor is handed, before pooling
        predictor.pool_inputs = lambda x, pool=pool, shapes=shapes: (
            shapes.append(tuple(x.shape)) or pool(x))
        batch = make_batch(HAS_IMAGE, HAS_TEXT)
        seen[source] = (shapes, model.encode(batch).pred_text)
    n = sum(HAS_IMAGE)
    assert seen["prompts"][0] == [(n, K, DI)] and seen["cls"][0] == [(n, DI)]
    assert not torch.allclose(seen["prompts"][1], seen["cls"][1])


@pytest.mark.parametrize("modality", ["image", "text"])
def test_unimodal_model_uses_one_head_and_one_encoder(modality):
    model = make_model(modalities=modality).eval()
    assert set(model.heads) == {modality} and len(model.predictors) == 0
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    out = model(batch)
    emb = model.encode(batch)
    true = emb.image_emb if modality == "image" else emb.text_emb
    present = batch.has_image if modality == "image" else batch.has_text
    torch.testing.assert_close(out.logits[present], model.heads[modality](true[present]))
    assert out.terms["align"] == 0.0


def test_multilabel_and_binary_tasks():
    model = make_model(task_type="multilabel")
    out = model(make_batch(HAS_IMAGE, HAS_TEXT, multilabel=True))
    assert out.logits.shape == (6, C) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="binary tasks use 2 logits"):
        make_model(task_type="binary")


def test_bf16_autocast_forward_backward():
    model = make_model()
    batch = make_batch(HAS_IMAGE, HAS_TEXT)
    with precision_context("cpu", "bf16"):
        out = model(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.predictors["text_to_image"].mlp[0].weight.grad is not None


# --- with the real offline encoders -----------------------------------------------------------


@pytest.fixture(scope="module")
def real_model():
    from mmcore.config import Config
    from mmcore.build import build_model

    torch.manual_seed(0)
    cfg = Config.from_params(preset="offline", peft="bitfit", image_size=112, prompt_length=2,
                             predictor_hidden=32, fill="dummy")
    return cfg, build_model(cfg, num_classes=C, task_type="multiclass")


def real_batch(cfg, has_image: list[bool], has_text: list[bool]) -> Batch:
    from mmcore.encoders import load_tokenizer

    texts = ["a red apple on a table", "two cats", "a bicycle leaning on a wall", "sunset"]
    tokens = load_tokenizer(cfg.model)(texts[:len(has_image)], padding=True,
                                       return_tensors="pt")
    b = len(has_image)
    pixels = torch.randn(b, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    return Batch(index=torch.arange(b), pixel_values=pixels,
                 input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                 has_image=torch.tensor(has_image), has_text=torch.tensor(has_text),
                 labels=torch.tensor([0, 1, 2, 3][:b]))


@pytest.mark.slow
def test_bitfit_trains_only_biases_and_new_modules(real_model):
    cfg, model = real_model
    model.zero_grad(set_to_none=True)
    out = model(real_batch(cfg, [True, True, True, False], [True, True, False, True]))
    assert torch.isfinite(out.loss) and out.terms["align"] > 0
    out.loss.backward()
    new = {id(p) for part in (model.predictors, model.heads) for p in part.parameters()}
    for encoder in (model.image_encoder, model.text_encoder):
        for module in encoder.modules():
            if isinstance(module, ReadOnlyPrompts):
                new |= {id(p) for p in module.parameters()}
    received = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    assert received
    for name, p in received:
        assert id(p) in new or name.endswith("bias"), name
    for name, p in model.named_parameters():
        if id(p) in new:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_parameter_report_counts_every_parameter_once(real_model):
    _, model = real_model
    report = parameter_report(model)
    parts = ("image_encoder", "text_encoder", "prompts", "predictors", "heads")
    assert sum(report[p][1] for p in parts) == report["all"][1]
    assert sum(report[p][0] for p in parts) == report["all"][0]
    biases = sum(p.numel() for n, p in model.image_encoder.named_parameters() if n.endswith("bias"))
    assert report["image_encoder"][0] == biases
    assert report["prompts"][0] == report["prompts"][1] > 0


@pytest.mark.slow
def test_real_dummy_fill_and_missing_rows(real_model):
    cfg, model = real_model
    model.eval()
    with torch.no_grad():
        batch = real_batch(cfg, [True, False, True], [False, True, True])
        emb = model.encode(batch)
        dummy = model.fuse(emb, batch.has_image, batch.has_text)
        predicted = model.fuse(emb, batch.has_image, batch.has_text, fill="predict")
    model.train()
    assert torch.isfinite(dummy).all()
    assert not torch.allclose(dummy[:2], predicted[:2])
    torch.testing.assert_close(dummy[2], predicted[2])  # complete row: no fill involved
