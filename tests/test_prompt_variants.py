"""The prompt-design script: its summary table, and one real variant end to end."""
from __future__ import annotations

import json

import pytest
from _scripts import load_script

P = load_script("scripts/prompt_variants.py")


def test_table_reports_mean_and_spread_over_seeds_per_variant():
    rows = [{"init": "cls", "pool": "mean", "seed": s, "complete": v}
            for s, v in enumerate((0.5, 0.7))]
    rows.append({"init": "independent", "pool": "concat", "seed": 0, "complete": 0.25})
    lines = P.table(rows).splitlines()
    assert len(lines) == 4  # header, rule, one line per variant that has rows
    assert lines[2].startswith("| cls | mean | 0.600 ± 0.141 |")
    assert lines[3].startswith("| independent | concat | 0.250 ± 0.000 |")
    assert lines[2].count("| -") == len(lines[0].split("|")) - 5  # columns without values


@pytest.mark.slow
def test_one_variant_trains_and_measures_its_prompts(tmp_path):
    results = tmp_path / "pv"
    P.main(["--seeds", "0", "--inits", "independent", "--pools", "attention", "--epochs", "1",
            "--limit-samples", "48", "--out-dir", str(tmp_path / "runs"),
            "--results", str(results)])
    (row,) = json.loads(results.with_suffix(".json").read_text())["rows"]
    assert (row["init"], row["pool"], row["seed"]) == ("independent", "attention", 0)
    for modality in ("image", "text"):
        assert -1.0 <= row[f"{modality}_prompt_pairwise_cosine"] < 1.0
        assert -1.0 <= row[f"{modality}_prompt_mean_cosine_to_cls"] <= 1.0
    for key in ("complete", "eta0.7_both", "image_to_text_head_predicted"):
        assert 0.0 <= row[key] <= 1.0
    assert "| independent | attention |" in results.with_suffix(".md").read_text()
