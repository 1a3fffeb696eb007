"""The benchmark suite runs end to end in its quickest mode and saves a complete table."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertModel

from mmcore.build import compile_encoders
from mmcore.config import ModelConfig
from mmcore.data.base import Batch
from mmcore.encoders import ImageEncoder, TextEncoder
from mmcore.model import FusionModel
from mmcore.runtime import has_fast_bf16

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def _columns() -> tuple[str, ...]:
    return load_script("benchmarks/run.py").COLUMNS


@pytest.mark.slow
def test_quick_suite_saves_every_column(tmp_path: Path) -> None:
    # this worker's share of the cores (conftest.py): two threads beside another busy worker
    # on two cores would leave the bench waiting at OpenMP barriers
    threads = str(torch.get_num_threads())
    subprocess.run([sys.executable, str(RUN), "--quick", "--threads", threads, "--out",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True, text=True,
                   timeout=900)
    saved = json.loads((tmp_path / "table.json").read_text())
    columns = _columns()
    assert saved["columns"] == list(columns)
    assert saved["environment"]["threads"] == int(threads)  # what the peaks were measured on
    assert [row["preset"] for row in saved["rows"]] == ["offline", "paper"]
    offline = saved["rows"][0]
    assert set(columns) <= set(offline)  # the offline row has the sweep and data columns too
    for row in saved["rows"]:
        model_columns = [c for c in columns if c in row and c != "bf16_peak_gflops"]
        assert all(row[c] is not None for c in model_columns)
        assert row["train_sps"] > 0 and row["train_gflop_per_sample"] > 0
        assert row["peak_mem_mib"] > 0 and 0 < row["peak_fraction"]
        assert row["fp32_peak_gflops"] > 0
        if has_fast_bf16("cpu"):
            assert row["precision"] == "bf16" and row["bf16_peak_gflops"] > 0
        else:  # no bf16 units: the fast path computes in float32 and no bf16 peak is timed
            assert row["precision"] == "fp32" and row["bf16_peak_gflops"] is None
    markdown = (tmp_path / "table.md").read_text().splitlines()
    assert markdown[0].strip("| ").split(" | ") == list(columns)
    assert len(markdown) == 2 + len(saved["rows"])
    for preset in ("offline", "paper"):
        for variant in ("plain", "fast"):
            profile = (tmp_path / f"profile_{preset}_{variant}.txt").read_text()
            assert "Self CPU" in profile
        kernels = json.loads((tmp_path / f"attention_{preset}.json").read_text())
        assert set(kernels) == {"plain/train", "plain/eval", "fast/train", "fast/eval"}
        assert all(kernels.values())  # every variant ran some SDPA kernel
    cache = json.loads((tmp_path / "cache.json").read_text())
    (row,) = cache["rows"]
    assert cache["columns"] == list(load_script("benchmarks/run.py").CACHE_COLUMNS)
    assert row["cached_sps"] > 0 and row["cache_bytes_per_sample"] > 0
    assert row["flop_ratio"] > 1  # the prompts alone cost less than the full forward
    # float32 (no bf16 units here) is read in place; bf16 batches are gathered
    assert row["cache_reads"] == ("gathered" if has_fast_bf16("cpu") else "in place")


@pytest.mark.slow
def test_compiled_encoders_match_eager() -> None:
    """``run.compile`` (``compile_encoders``) keeps outputs, gradients and checkpoint keys."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                            num_classes=0, init_values=1.0)
    bert_cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64,
                          max_position_embeddings=16, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    bert_cfg._attn_implementation = "sdpa"
    text = TextEncoder(BertModel(bert_cfg), "mean", 2, prompt_init_token_id=1)
    eager = FusionModel(ImageEncoder(vit, 2), text, 3, "multiclass",
                        model_cfg=ModelConfig(head_dropout=0.0))
    compiled = compile_encoders(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    g = torch.Generator().manual_seed(0)
    batch = Batch(index=torch.arange(4), pixel_values=torch.randn(4, 3, 32, 32, generator=g),
                  input_ids=torch.randint(5, 50, (4, 7), generator=g),
                  attention_mask=(torch.arange(7) < torch.tensor([[7], [5], [7], [3]])).long(),
                  has_image=torch.tensor([True, True, False, True]),
                  has_text=torch.tensor([True, False, True, True]),
                  labels=torch.tensor([0, 1, 2, 0]))
    outs = [model(batch) for model in (eager, compiled)]  # train mode; dropout is 0
    torch.testing.assert_close(outs[1].logits, outs[0].logits, rtol=1e-4, atol=1e-5)
    for out in outs:
        out.loss.backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None}
             for m in (eager, compiled)]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_flops_of_prepacked_linear_layers_are_counted_as_the_plain_ones() -> None:
    """The cached path's frozen linear layers run on oneDNN's prepacked op, which the FLOP
    counter has no formula for: ``count_flops`` supplies it, or the cached step's FLOPs (and
    the bench's ``flop_ratio``) would leave out its largest products."""
    from mmcore.cached_forward import FrozenLinears, packs_linears

    if not packs_linears(torch.device("cpu"), torch.bfloat16):
        pytest.skip("oneDNN does not compute bf16 on this CPU")
    count_flops = load_script("benchmarks/measure.py").count_flops
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    net.requires_grad_(False)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x).float().sum().backward()

    plain = count_flops(step)
    with FrozenLinears().applied(net, torch.bfloat16):
        packed = count_flops(step)
    assert plain == packed == 2 * 2 * 15 * (16 * 32 + 32 * 8)  # forward and input gradient
