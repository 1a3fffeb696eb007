"""The choice lists: each value once, a bad value named with what is valid, and every
compared method a valid change of the default config."""
from __future__ import annotations

import pytest

from mmcore import choice_lists
from mmcore.choice_lists import METHODS, ConfigError, Fill, check_choice, choices
from mmcore.config import Config


def test_every_choice_list_holds_distinct_strings():
    kinds = [getattr(choice_lists, name) for name in choice_lists.__all__
             if name[0].isupper() and name not in ("METHODS", "ConfigError")]
    assert kinds
    for kind in kinds:
        values = choices(kind)
        assert values and len(set(values)) == len(values)
        assert all(isinstance(v, str) for v in values)


def test_check_choice_names_the_key_and_the_valid_values():
    check_choice("fill", "mean", Fill)
    with pytest.raises(ConfigError, match=r"fill='median' is not valid; valid: predict, zero"):
        check_choice("fill", "median", Fill)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_is_a_valid_config(method):
    cfg = Config().replace(**METHODS[method])
    assert all(cfg.to_flat()[k] == v for k, v in METHODS[method].items())
