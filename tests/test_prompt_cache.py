"""The token cache is exact: prompts run alone over cached keys/values give the full forward's outputs."""
from __future__ import annotations

import platform

import pytest
import torch

import mmcore.cached_forward as cached_forward
from mmcore.config import Config, ModelConfig
from mmcore.data.base import Batch
from mmcore.encoders import ImageEncoder, TextEncoder
from mmcore.model import FusionModel
from mmcore.prompt_cache import (CachedCollator, SplitCache, cache_key, load_split_cache,
                                 save_split_cache)
from tests.test_encoders import text_batch, tiny_bert, tiny_vit


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def _close_bf16(a: torch.Tensor, b: torch.Tensor) -> None:
    """Within two bf16 steps at the largest magnitude of ``b``: products summed in another
    order round differently, by a step of their inputs' scale, not of each result's."""
    _close(a, b, 2**-6 * float(b.float().abs().max()))


@pytest.mark.parametrize("see_each_other", [True, False])
def test_image_prompts_from_cache_equal_the_full_forward(see_each_other):
    encoder = ImageEncoder(tiny_vit(), prompt_length=3, prompts_see_each_other=see_each_other)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full, cache = encoder.forward_recording(x)
        cached = encoder.forward_cached(cache)
    assert [k.shape for k in cache.keys] == [(4, 4, 17, 8)] * 2  # (B, H, CLS + 16, Dh)
    _close(cached.prompts, full.prompts, 1e-5)
    _close(cached.embedding, full.embedding, 0)


def test_text_prompts_from_cache_equal_the_full_forward_with_padding():
    ids, mask = text_batch()
    encoder = TextEncoder(tiny_bert(), pooling="mean", prompt_length=2, prompt_init_token_id=1)
    with torch.no_grad():
        full, cache = encoder.forward_recording(ids, mask)
        cached = encoder.forward_cached(cache)
        # the short row alone, its padding trimmed by select(): the same as encoding it alone
        short = encoder.forward_cached(cache.select(torch.tensor([1])))
        alone = encoder(ids[1:, :3], mask[1:, :3])
    assert cache.padding.tolist() == mask.bool().tolist()
    _close(cached.prompts, full.prompts, 1e-5)
    assert cache.select(torch.tensor([1])).keys[0].shape[2] == 3
    _close(short.prompts, alone.prompts, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_prompts_get_the_same_gradients(dtype):
    """In bf16 on a CPU the frozen linear layers run prepacked (``FrozenLinears``), forward
    and backward: the gradient stays within bf16 rounding of the full forward's."""
    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_vit(), prompt_length=3)
    for p in encoder.backbone.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        full, cache = encoder.forward_recording(x)
        full.prompts.float().square().sum().backward()
        expected = encoder.prompts.tokens.grad.clone()
        encoder.prompts.tokens.grad = None
        encoder.forward_cached(cache).prompts.float().square().sum().backward()
    if dtype == torch.float32:  # float32 rounding, relative to the gradient's scale
        _close(encoder.prompts.tokens.grad, expected, 1e-4 * float(expected.abs().max()))
    else:
        _close_bf16(encoder.prompts.tokens.grad, expected)


def _tiny_model() -> FusionModel:
    return FusionModel(ImageEncoder(tiny_vit(), prompt_length=3),
                       TextEncoder(tiny_bert(), pooling="mean", prompt_length=2,
                                   prompt_init_token_id=1),
                       num_classes=3, task_type="multiclass",
                       model_cfg=ModelConfig(head_dropout=0.0))


def _split_cache(model: FusionModel) -> tuple[SplitCache, Batch]:
    ids, mask = text_batch()
    batch = Batch(index=torch.arange(2), pixel_values=torch.randn(2, 3, 32, 32), input_ids=ids,
                  attention_mask=mask, has_image=torch.tensor([True, False]),
                  has_text=torch.tensor([True, True]), labels=torch.tensor([0, 2]))
    with torch.no_grad():
        _, image = model.image_encoder.forward_recording(batch.pixel_values)
        _, text = model.text_encoder.forward_recording(ids, mask)
    return SplitCache(image, text, batch.has_image, batch.has_text, batch.labels, "test"), batch


@pytest.mark.parametrize("in_place, room", [(True, 3), (False, 0), (False, 3)])
def test_fusion_model_loss_is_the_same_from_the_cache(in_place, room, monkeypatch):
    """Read in place (float32 on a CPU), or gathered with or without room for the prompts in
    the batch's blocks (the collator's, as training gathers them, or a copy the encoder
    makes); the image rows are re-selected (one lacks it)."""
    if not in_place:  # as batches in bf16, or on a GPU, are taken
        monkeypatch.setattr(cached_forward, "reads_in_place", lambda block: False)
    model = _tiny_model().eval()
    cache, batch = _split_cache(model)
    cached_batch = CachedCollator(cache, room=room)([0, 1])
    assert cached_batch.pixel_values.numel() == 0 and cached_batch.image_tokens is not None
    if in_place:
        assert cached_batch.image_tokens.keys[0] is cache.image.keys[0]
        assert cached_batch.image_tokens.rows.tolist() == [0, 1]
    else:
        assert cached_batch.image_tokens.keys[0].shape[2] == 17 + room  # CLS + 16 patches, room
    with torch.no_grad():
        direct, from_cache = model(batch), model(cached_batch)
    _close(from_cache.logits, direct.logits, 1e-5)
    _close(from_cache.loss, direct.loss, 1e-5)


def test_frozen_encoders_stay_in_eval_mode():
    model = _tiny_model()
    for encoder in (model.image_encoder, model.text_encoder):
        for name, p in encoder.named_parameters():
            p.requires_grad_(name.startswith("prompts"))
    model.train()
    assert not model.image_encoder.training and not model.text_encoder.training
    assert model.heads.training


def test_split_cache_round_trips_through_disk_in_memory_and_mapped(tmp_path):
    model = _tiny_model()
    cache, _ = _split_cache(model)
    cache.image.keys = tuple(k.bfloat16() for k in cache.image.keys)  # bf16 bits survive numpy
    save_split_cache(cache, tmp_path / "c")
    for budget in (1e12, 0):  # fits in memory / memory-mapped
        loaded = load_split_cache(tmp_path / "c", budget)
        assert loaded.image.keys[0].dtype == torch.bfloat16
        assert len(loaded.image.keys) == len(cache.image.keys)
        assert all(map(torch.equal, loaded.image.keys, cache.image.keys))
        assert torch.equal(loaded.text.padding, cache.text.padding)
        assert torch.equal(loaded.labels, cache.labels) and loaded.split == "test"
    assert load_split_cache(tmp_path / "absent", 1e12) is None
    (tmp_path / "c" / "meta.json").unlink()  # an interrupted write is never read
    assert load_split_cache(tmp_path / "c", 1e12) is None


def test_a_second_save_of_the_same_cache_keeps_the_first_whole_copy(tmp_path):
    """Two book chapters that encode the same split at once both save it: one copy stays,
    whole, and no temporary folder is left; an unfinished folder is replaced."""
    cache, _ = _split_cache(_tiny_model())
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "labels.npy").write_bytes(b"cut short")  # an interrupted writer: no meta.json
    save_split_cache(cache, folder)
    first = (folder / "meta.json").stat().st_ino
    save_split_cache(cache, folder)
    assert (folder / "meta.json").stat().st_ino == first
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    loaded = load_split_cache(folder, 1e12)
    assert all(map(torch.equal, loaded.text.values, cache.text.values))
    assert torch.equal(loaded.has_image, cache.has_image)


def test_cache_key_changes_with_what_the_tokens_depend_on(tmp_path):
    from mmcore.data import load_dataset

    cfg = Config.from_params(peft="frozen")
    test, val = load_dataset(cfg.data, "test"), load_dataset(cfg.data, "val")
    key = cache_key(cfg, test)
    assert key == cache_key(Config.from_params(peft="frozen", lr=0.5), test)  # not a token input
    assert key != cache_key(cfg, val)
    assert key != cache_key(cfg.replace(image_size=224), test)
    assert key != cache_key(cfg.replace(max_text_length=32), test)
    assert key != cache_key(cfg.replace(precision="fp32"), test)


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [112, 224])
def test_real_encoders_cache_exactly_in_fp32_and_within_bf16_noise(mmcore_cache, image_size,
                                                                  monkeypatch):
    """DINOv2 ViT-S/14 and MiniLM with padding: fp32 is exact (seen: < 1e-5), read in place and
    gathered; in bf16 the cached path stays within 3x the full bf16 forward's own distance from
    fp32 (seen: 1-2.2x)."""
    from mmcore.encoders import build_image_encoder, build_text_encoder, load_tokenizer

    model_cfg = ModelConfig(image_size=image_size, peft="frozen")
    torch.manual_seed(0)
    image, text = build_image_encoder(model_cfg).eval(), build_text_encoder(model_cfg).eval()
    tokens = load_tokenizer(model_cfg)(["a red bicycle leaning on a wall", "soup",
                                        "a snail eats a leaf in the rain"],
                                       padding="longest", return_tensors="pt")
    pixels = torch.randn(3, 3, image_size, image_size)
    for encoder, args in ((image, (pixels,)),
                          (text, (tokens["input_ids"], tokens["attention_mask"]))):
        with torch.no_grad():
            full32, cache32 = encoder.forward_recording(*args)
            assert cache32.with_room(2).rows is not None  # float32 on a CPU: read in place
            _close(encoder.forward_cached(cache32).prompts, full32.prompts, 2e-4)
            with monkeypatch.context() as gathered:
                gathered.setattr(cached_forward, "reads_in_place", lambda block: False)
                _close(encoder.forward_cached(cache32).prompts, full32.prompts, 2e-4)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                full16, cache16 = encoder.forward_recording(*args)
                cached16 = encoder.forward_cached(cache16)
        assert cache16.keys[0].dtype == torch.bfloat16
        bf16_noise = (full16.prompts.float() - full32.prompts).abs().max()
        assert (cached16.prompts.float() - full16.prompts.float()).abs().max() <= 3 * bf16_noise
        assert (cached16.prompts.float() - full32.prompts).abs().max() <= 3 * bf16_noise


@pytest.mark.slow
def test_a_subset_takes_its_rows_from_the_whole_splits_cache(mmcore_cache, monkeypatch):
    """The real encoders and the real val split at 56 px: a ``limit_samples`` subset built after
    the whole split is cut from its cache, equal to encoding the subset itself."""
    from mmcore import prompt_cache
    from mmcore.build import build_collator, build_model
    from mmcore.data import load_dataset
    from mmcore.runtime import build_loader

    cfg = Config.from_params(peft="frozen", image_size=56, eval_batch_size=64, progress=False)
    small = cfg.replace(limit_samples=24)
    whole, subset = load_dataset(cfg.data, "val"), load_dataset(small.data, "val")
    model = build_model(cfg, whole.num_classes, whole.task_type)

    def loader(c: Config, dataset):
        return build_loader(dataset, 64, build_collator(c, dataset, False), train=False)

    encoded = prompt_cache.build_split_cache(model, loader(small, subset), torch.device("cpu"),
                                             small.run.precision, progress=False)
    assert prompt_cache._rows_of_whole_split(small, subset) is None  # nothing on disk yet
    prompt_cache.load_or_build_split_cache(model, cfg, whole, loader(cfg, whole), "cpu")

    def never(*args, **kwargs):
        raise AssertionError("the subset was encoded again")

    monkeypatch.setattr(prompt_cache, "build_split_cache", never)
    cut = prompt_cache.load_or_build_split_cache(model, small, subset, loader(small, subset), "cpu")
    assert len(cut) == len(subset) == 24
    # equal up to bf16 rounding: the products ran on batches of other shapes (seen: one bf16
    # step at most); texts were also padded to other lengths, and padded positions are never
    # read, so only the real tokens are compared
    real = cut.text.padding
    assert torch.equal(real, encoded.text.padding)
    for part in ("keys", "values"):  # stacked: (layers, B, H, L, Dh)
        _close_bf16(*(torch.stack(getattr(c.image, part)) for c in (cut, encoded)))
        _close_bf16(*(torch.stack(getattr(c.text, part)).permute(1, 3, 0, 2, 4)[real]
                      for c in (cut, encoded)))
    for name in ("image", "text"):
        _close_bf16(getattr(cut, name).embedding, getattr(encoded, name).embedding)
    assert torch.equal(cut.labels, encoded.labels) and torch.equal(cut.has_text, encoded.has_text)


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc")
def test_cached_training_reuses_freed_memory_instead_of_faulting_in_pages():
    """A cached epoch at 224 px gathers fresh blocks of MiBs for every batch; after the first
    epochs they come from earlier batches' freed memory, not from pages faulted in anew
    (glibc's own thresholds go on faulting in some processes: seen 16,000-31,000 a batch)."""
    import resource

    from mmcore.build import build_model
    from mmcore.runtime import precision_context

    cfg = Config.from_params(peft="frozen", image_size=224, pretrained=False, precision="bf16")
    torch.manual_seed(0)
    model = build_model(cfg, 5, "multiclass")
    n, size = 128, cfg.model.image_size
    ids = torch.randint(1000, 2000, (n, 64))
    with torch.no_grad(), precision_context("cpu", "bf16"):
        _, image = model.image_encoder.forward_recording(torch.randn(n, 3, size, size))
        _, text = model.text_encoder.forward_recording(ids, torch.ones_like(ids))
    everything = torch.ones(n, dtype=torch.bool)
    cache = SplitCache(image, text, everything, everything, torch.randint(0, 5, (n,)), "t")
    collate = CachedCollator(cache, room=cfg.model.prompt_length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    order = torch.Generator().manual_seed(0)
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for rows in torch.randperm(n, generator=order).split(32):
            batch = collate(rows.tolist())
            with precision_context("cpu", "bf16"):
                model(batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    pages = cache.nbytes() // 4096  # gathered once an epoch
    assert sum(faults[3:]) < pages / 20, f"page faults per epoch {faults}, {pages} pages gathered"
