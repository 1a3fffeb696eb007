import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertModel

import mmcore.encoders as encoders
from mmcore.config import ModelConfig
from mmcore.encoders import ImageEncoder, TextEncoder, image_transform


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                             num_classes=0, init_values=1.0).eval()


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    config._attn_implementation = "sdpa"
    return BertModel(config).eval()


def text_batch():
    ids = torch.tensor([[1, 5, 7, 9, 2], [1, 6, 2, 0, 0]])
    return ids, (ids != 0).long()


def test_image_prompts_are_read_only():
    encoder = ImageEncoder(tiny_vit(), prompt_length=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = encoder(x)
        plain = encoder.backbone.forward_features(x)[:, 0]  # the same ViT without prompts
    assert out.embedding.shape == (2, 32) and out.prompts.shape == (2, 3, 32)
    assert (encoder.embed_dim, encoder.prompt_length) == (32, 3)
    torch.testing.assert_close(out.embedding, plain, atol=1e-5, rtol=0)


def test_text_prompts_are_read_only_with_padding():
    ids, mask = text_batch()
    encoder = TextEncoder(tiny_bert(), pooling="mean", prompt_length=2, prompt_init_token_id=1)
    with torch.no_grad():
        out = encoder(ids, mask)
        hidden = encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    plain = (hidden * weights).sum(1) / weights.sum(1)
    assert out.prompts.shape == (2, 2, 32)
    torch.testing.assert_close(out.embedding, plain, atol=1e-5, rtol=0)
    cls_encoder = TextEncoder(encoder.backbone, pooling="cls", prompt_length=2,
                              prompt_init_token_id=1)
    with torch.no_grad():
        cls_embedding = cls_encoder(ids, mask).embedding
    torch.testing.assert_close(cls_embedding, hidden[:, 0], atol=1e-5, rtol=0)


def test_padding_does_not_change_a_text_row():
    ids, mask = text_batch()
    encoder = TextEncoder(tiny_bert(), pooling="mean", prompt_length=2, prompt_init_token_id=1)
    with torch.no_grad():
        batched = encoder(ids, mask)
        alone = encoder(ids[1:, :3], mask[1:, :3])
    torch.testing.assert_close(batched.embedding[1], alone.embedding[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.prompts[1], alone.prompts[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["image", "text"])
def test_gradients_reach_the_prompts(which):
    if which == "image":
        encoder = ImageEncoder(tiny_vit(), prompt_length=2)
        out = encoder(torch.randn(2, 3, 32, 32))
    else:
        encoder = TextEncoder(tiny_bert(), prompt_length=2, prompt_init_token_id=1)
        out = encoder(*text_batch())
    out.prompts.pow(2).sum().backward()
    grad = encoder.prompts.tokens.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_prompts_seeing_each_other_changes_only_the_prompts():
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    apart = ImageEncoder(tiny_vit(), prompt_length=3, prompts_see_each_other=False)
    together = ImageEncoder(tiny_vit(), prompt_length=3, prompts_see_each_other=True)
    together.prompts.load_state_dict(apart.prompts.state_dict())
    with torch.no_grad():
        a, b = apart(x), together(x)
    torch.testing.assert_close(a.embedding, b.embedding)
    assert (a.prompts - b.prompts).abs().max() > 1e-4


def test_bf16_autocast_runs():
    image = ImageEncoder(tiny_vit(), 2)
    text = TextEncoder(tiny_bert(), "mean", 2, prompt_init_token_id=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [image(torch.randn(2, 3, 32, 32)), text(*text_batch())]
    for out in outs:
        assert torch.isfinite(out.embedding).all() and torch.isfinite(out.prompts).all()


def test_wrong_backbones_are_rejected():
    with pytest.raises(TypeError, match="VisionTransformer"):
        ImageEncoder(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BERT-like"):
        TextEncoder(torch.nn.Linear(2, 2))
    eager = tiny_bert()
    eager.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="sdpa"):
        TextEncoder(eager, prompt_init_token_id=1)
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(tiny_bert(), pooling="max", prompt_init_token_id=1)


def test_image_transform_sizes():
    from PIL import Image

    image = Image.new("RGB", (300, 200), color=(200, 30, 30))
    for train in (False, True):
        out = image_transform(ModelConfig(image_size=112), train=train)(image)
        assert out.shape == (3, 112, 112)
    evaluated = image_transform(ModelConfig(image_size=112), train=False)(image)
    assert evaluated[0].mean() > 0 > evaluated[2].mean()  # red after normalisation


@pytest.mark.slow
def test_offline_text_encoder_scores_paraphrases_higher(mmcore_cache):
    cfg = ModelConfig(prompt_length=2)
    encoder, tokenizer = encoders.build_text_encoder(cfg).eval(), encoders.load_tokenizer(cfg)
    sentences = ["A man is playing a guitar on stage.",
                 "Someone performs a song on the guitar in front of an audience.",
                 "The stock market fell sharply on Monday.",
                 "Shares dropped steeply at the start of the week.",
                 "A recipe for chocolate cake with three eggs."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(
            encoder(batch["input_ids"], batch["attention_mask"]).embedding, dim=-1)
    sim = emb @ emb.T
    print(f"paraphrase cosine: {sim[0, 1]:.3f}, {sim[2, 3]:.3f}; "
          f"best unrelated: {sim[0, 2:].max():.3f}, {sim[2, [0, 1, 4]].max():.3f}")
    for a, b in ((0, 1), (2, 3)):
        unrelated = [sim[a, j] for j in range(5) if j not in (a, b)]
        assert sim[a, b] > max(unrelated) + 0.2, sim


def test_pool_text_is_the_text_encoders_pooling():
    ids, mask = text_batch()
    hidden = torch.randn(2, 5, 4)
    weights = mask.unsqueeze(-1).float()
    torch.testing.assert_close(encoders.pool_text(hidden, mask, "mean"),
                               (hidden * weights).sum(1) / weights.sum(1))
    assert torch.equal(encoders.pool_text(hidden, mask, "cls"), hidden[:, 0])
    encoder = TextEncoder(tiny_bert(), pooling="mean", prompt_length=2, prompt_init_token_id=1)
    with torch.no_grad():
        plain = encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(ids, mask).embedding,
                                   encoders.pool_text(plain, mask, "mean"), atol=1e-5, rtol=0)


def test_originals_see_prompts_changes_the_embedding_and_nothing_else():
    image, text = ImageEncoder(tiny_vit(), prompt_length=3), TextEncoder(
        tiny_bert(), pooling="cls", prompt_length=2, prompt_init_token_id=1)
    x, (ids, mask) = torch.randn(2, 3, 32, 32), text_batch()
    with torch.no_grad():
        read_only = image(x).embedding, text(ids, mask).embedding
        image.originals_see_prompts = text.originals_see_prompts = True
        leaked = image(x).embedding, text(ids, mask).embedding
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(read_only, leaked))
    assert not ImageEncoder.originals_see_prompts and not TextEncoder.originals_see_prompts
