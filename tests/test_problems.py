"""The table of bad-input kinds and the action each takes under ``bad_sample_policy``."""
import pytest

import mmcore.data.problems as problems
from mmcore.data.problems import KINDS, REAL_MISSING, Problem, actions


def test_policy_follows_bad_sample_policy_only_where_documented():
    for policy in ("missing", "skip", "stop"):
        table = actions(policy)
        assert set(table) == set(KINDS)
        for kind, default in KINDS.items():
            assert table[kind] == (policy if default == "policy" else default)
        assert all(table[k] == "missing" for k in REAL_MISSING)  # never an error
    with pytest.raises(ValueError, match="bad_sample_policy='drop'; valid: missing, skip, stop"):
        actions("drop")


def test_every_kind_is_documented_in_the_module_table():
    documented = {line.split()[0] for line in problems.__doc__.splitlines()
                  if line and line.split()[0] in KINDS}
    assert documented == set(KINDS)


def test_a_problem_points_where_an_editor_goes():
    p = Problem("field_count", "stop", "data/m.csv", 12, None, "5 fields but the header has 4")
    assert p.where() == "data/m.csv:12"
    where = Problem("bad_row", "stop", "m.jsonl", 3, "label", "x").where()
    assert where == "m.jsonl:3: column 'label'"
    assert Problem("batch_too_large", "stop", None, None, "optim.batch_size", "x").where() == \
        "-: column 'optim.batch_size'"
