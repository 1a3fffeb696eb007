"""Images read safely: every bad kind found cheaply, every fixable mode decoded as RGB."""
import pytest
from _bad_files import bad_images
from PIL import Image

from mmcore.data.images import file_digest, inspect_image, load_rgb
from mmcore.data.problems import KINDS, BadInput


def test_each_image_file_gets_its_kind(tmp_path):
    for name, kind in bad_images(tmp_path).items():
        found = [bad.kind for bad in inspect_image(tmp_path / name)]
        assert (found[:1] if name != "anim.gif" else found[-1:]) == ([kind] if kind else []), name


def test_a_lower_pixel_limit_makes_a_bomb_that_is_never_decoded(tmp_path, monkeypatch):
    bad_images(tmp_path)
    assert inspect_image(tmp_path / "good.png") == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 48 - 1)
    assert [b.kind for b in inspect_image(tmp_path / "good.png")] == ["decompression_bomb"]
    with pytest.raises(BadInput, match="MAX_IMAGE_PIXELS=1919") as err:
        load_rgb(tmp_path / "good.png")
    assert err.value.kind == "decompression_bomb"


def test_load_rgb_decodes_every_fixable_mode_and_names_the_file_of_the_rest(tmp_path):
    for name, kind in bad_images(tmp_path).items():
        if KINDS.get(kind) == "policy":
            with pytest.raises(BadInput, match=name) as err:
                load_rgb(tmp_path / name)
            assert err.value.kind == kind
        else:
            image = load_rgb(tmp_path / name)
            assert image.mode == "RGB" and image.size[0] > 0


def test_the_digest_finds_the_same_picture_under_another_name(tmp_path):
    bad_images(tmp_path)
    (tmp_path / "copy.png").write_bytes((tmp_path / "good.png").read_bytes())
    assert file_digest(tmp_path / "copy.png") == file_digest(tmp_path / "good.png")
    assert file_digest(tmp_path / "other.png") != file_digest(tmp_path / "good.png")
