"""The Config tree: one place for every default, strict about keys, types and ranges."""
from dataclasses import fields

import pytest

from mmcore.config import Config, ConfigError, leaf_owners


def test_leaf_names_are_unique_and_cover_every_field():
    owners = leaf_owners()
    n_fields = sum(len(fields(type(getattr(Config(), s.name)))) for s in fields(Config))
    assert len(owners) == n_fields


def test_from_params_routes_flat_names_to_their_sections():
    cfg = Config.from_params(epochs=2, prompt_length=4, missing_rate=0.5, alignment="mse")
    assert (cfg.optim.epochs, cfg.model.prompt_length) == (2, 4)
    assert (cfg.missing.missing_rate, cfg.loss.alignment) == (0.5, "mse")
    assert cfg.optim.batch_size == Config().optim.batch_size  # untouched fields keep defaults


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"epoch": 2}, "unknown parameter 'epoch'"),
        ({"epochs": "2"}, "optim.epochs='2' has type str; expected int"),
        ({"missing_rate": 1.5}, "missing.missing_rate=1.5 is out of range"),
        ({"missing_type": "audio"}, "valid: both, image, text"),
        ({"prompt_length": 0}, "model.prompt_length=0 is out of range"),
        ({"pretrained": 1}, "expected bool"),
        ({"task": "genres"}, "valid: auto, category, keywords"),
        ({"align_reaches_encoder": False}, "model.peft='frozen' trains none"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(params, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        Config.from_params(**params)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"optim": {"learning_rate": 1e-3}})
    assert "learning_rate" in str(err.value) and "lr" in str(err.value)


def test_overrides_accept_section_and_flat_keys_and_parse_yaml_scalars():
    cfg = Config().with_overrides(["optim.lr=3e-4", "peft=full", "compile=true", "epochs=5"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.peft == "full" and cfg.run.compile is True and cfg.optim.epochs == 5
    with pytest.raises(ConfigError, match="key=value"):
        Config().with_overrides(["lr"])
    with pytest.raises(ConfigError, match="unknown key 'peft' in 'optim'"):
        Config().with_overrides(["optim.peft=full"])


def test_yaml_round_trip(tmp_path):
    cfg = Config.from_params(epochs=7, predict_from="cls", data_root="somewhere")
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert Config.from_yaml(path) == cfg
    assert Config.from_yaml(path, ["seed=3"]).run.seed == 3


def test_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        Config.from_yaml(tmp_path / "nope.yaml")


def test_replace_returns_a_validated_copy():
    cfg = Config()
    other = cfg.replace(predict_from="cls")
    assert other.model.predict_from == "cls" and cfg.model.predict_from == "prompts"
    with pytest.raises(ConfigError):
        cfg.replace(predict_from="patches")
