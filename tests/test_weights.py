import time

import numpy as np
import pytest
import torch

from mmcore.config import ModelConfig
from mmcore.encoders import build_image_encoder, build_text_encoder, image_transform
from mmcore.weights import (PRESETS, WeightsUnavailableError, dinov2_config, dinov2_onnx_path,
                            dinov2_to_timm, load_image_backbone, load_text_backbone,
                            read_dinov2_onnx)


def test_presets_define_pooling():
    assert PRESETS["offline"].text_pooling == "mean"
    assert PRESETS["paper"].text_pooling == "cls"
    assert PRESETS["paper"].image_model.startswith("deit3_base_patch16_224")


def test_paper_preset_random_init_has_the_expected_sizes():
    cfg = ModelConfig(preset="paper", pretrained=False, prompt_length=1)
    image, text = build_image_encoder(cfg), build_text_encoder(cfg)
    image_params = sum(p.numel() for p in image.backbone.parameters())
    text_params = sum(p.numel() for p in text.backbone.parameters())
    assert 85e6 < image_params < 87.5e6  # ViT-B/16
    assert 108e6 < text_params < 110.5e6  # BERT-base with pooler
    assert image.embed_dim == text.embed_dim == 768


def test_paper_preset_without_hub_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(preset="paper")
    for load, option in ((load_image_backbone, "image_encoder=/path"),
                         (load_text_backbone, "text_encoder=/path"),
                         (build_text_encoder, "text_encoder=/path")):
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError) as err:
            load(cfg)
        assert time.monotonic() - start < 5
        assert "preset=offline" in str(err.value) and option in str(err.value)


def test_missing_local_paths_name_the_option():
    with pytest.raises(FileNotFoundError, match="model.image_encoder"):
        load_image_backbone(ModelConfig(image_encoder="/nonexistent/vit.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.text_encoder"):
        load_text_backbone(ModelConfig(text_encoder="./no/such/folder"))


def test_image_size_must_be_a_patch_multiple():
    with pytest.raises(ValueError, match="model.image_size=100"):
        dinov2_to_timm({}, image_size=100)


@pytest.mark.slow
def test_conversion_matches_onnxruntime(offline_vit):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(dinov2_onnx_path()))
    backbone_out = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm, before the saliency head
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(
        backbone_out, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = session.run([backbone_out], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        got = offline_vit.forward_features(x).numpy()  # (2, 257, 384)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [224, 112])
def test_conversion_matches_transformers_dinov2(mmcore_cache, image_size):
    from transformers import Dinov2Model

    reference = Dinov2Model(dinov2_config()).eval()
    reference.load_state_dict(read_dinov2_onnx(dinov2_onnx_path()))
    vit = offline_vit_at(image_size)
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state
        got = vit.forward_features(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def offline_vit_at(image_size: int):
    return load_image_backbone(ModelConfig(image_size=image_size)).eval()


@pytest.mark.slow
def test_conversion_is_cached(mmcore_cache, offline_vit):
    files = list(mmcore_cache.glob("dinov2_vits14_*_224px.safetensors"))
    assert len(files) == 1 and not list(mmcore_cache.glob("*.tmp"))
    torch.testing.assert_close(offline_vit_at(224).state_dict(), offline_vit.state_dict())


@pytest.mark.slow
def test_offline_image_weights_are_real(offline_vit):
    """Augmented views of real photos find their own photo far more often than at random init."""
    from PIL import Image
    from skimage import data
    from torchvision import transforms as T

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "immunohistochemistry", "colorwheel", "camera", "coins", "horse", "brick", "grass",
             "gravel", "moon"]
    photos = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in names]
    photos.append(Image.fromarray(data.stereo_motorcycle()[0]))
    augment = T.Compose([T.RandomResizedCrop(224, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                         T.ColorJitter(0.3, 0.3, 0.3)])
    to_tensor = image_transform(ModelConfig(image_size=224), train=False)
    torch.manual_seed(0)
    views = [(i, to_tensor(augment(p))) for i, p in enumerate(photos) for _ in range(3)]
    labels = torch.tensor([i for i, _ in views])
    x = torch.stack([v for _, v in views])

    def accuracy(vit) -> float:
        with torch.no_grad():
            emb = torch.nn.functional.normalize(vit(x), dim=-1)
        sim = emb @ emb.T
        sim.fill_diagonal_(-2)
        return float((labels[sim.argmax(1)] == labels).float().mean())

    torch.manual_seed(0)
    random_vit = load_image_backbone(ModelConfig(pretrained=False, image_size=224)).eval()
    real, rand = accuracy(offline_vit), accuracy(random_vit)
    print(f"nearest-neighbour view retrieval: real {real:.3f}, random {rand:.3f}")
    assert real > 0.8 and real > rand + 0.3
