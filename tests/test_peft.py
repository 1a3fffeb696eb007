import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertModel

from mmcore.encoders import ImageEncoder, TextEncoder
from mmcore.peft import apply_peft, attention_projections
from mmcore.prompts import prompt_parameters


def image_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                            num_classes=0, init_values=1.0)
    return ImageEncoder(vit, prompt_length=2)


def text_encoder() -> TextEncoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    config._attn_implementation = "sdpa"
    return TextEncoder(BertModel(config), prompt_length=2, prompt_init_token_id=1)


def trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("build", [image_encoder, text_encoder])
def test_bitfit_trains_exactly_the_biases_and_prompts(build):
    encoder = apply_peft(build(), "bitfit")
    biases = {n for n, _ in encoder.named_parameters() if n.endswith(".bias")}
    assert biases and trainable(encoder) == biases | {"prompts.tokens"}


@pytest.mark.parametrize("build", [image_encoder, text_encoder])
def test_frozen_and_full(build):
    encoder = apply_peft(build(), "frozen")
    assert trainable(encoder) == {"prompts.tokens"}
    apply_peft(encoder, "full")
    assert trainable(encoder) == {n for n, _ in encoder.named_parameters()}


@pytest.mark.parametrize("build", [image_encoder, text_encoder])
def test_layernorm_trains_only_layernorms(build):
    encoder = apply_peft(build(), "layernorm")
    norms = {f"{m_name}.{p_name}" for m_name, m in encoder.named_modules()
             if isinstance(m, torch.nn.LayerNorm) for p_name, _ in m.named_parameters()}
    assert norms and trainable(encoder) == norms | {"prompts.tokens"}


@pytest.mark.parametrize("build", [image_encoder, text_encoder])
def test_lora_adds_adapters_on_attention_only(build):
    encoder = build()
    targets = attention_projections(encoder)
    assert targets and all(".attn." in t or ".attention." in t for t in targets)
    apply_peft(encoder, "lora", lora_rank=4)
    names = trainable(encoder) - {"prompts.tokens"}
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * len(targets)  # one A and one B per projection
    lora_a = [p for n, p in encoder.named_parameters() if "lora_A" in n]
    assert all(p.shape[0] == 4 for p in lora_a)


def test_bitfit_gradients_only_where_trainable():
    encoder = apply_peft(image_encoder(), "bitfit")
    out = encoder(torch.randn(2, 3, 32, 32))
    (out.embedding.sum() + out.prompts.sum()).backward()
    with_grad = {n for n, p in encoder.named_parameters() if p.grad is not None}
    assert with_grad == trainable(encoder)


def test_frozen_leaves_only_the_prompts_trainable():
    encoder = apply_peft(image_encoder(), "frozen")
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in prompt_parameters(encoder)}
    assert sum(p.numel() for p in trainable) == 2 * 32  # K = 2 prompts of width 32


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="model.peft='adapters'"):
        apply_peft(image_encoder(), "adapters")
