"""Precision: bf16 autocast only where the hardware multiplies bf16, float32 elsewhere."""
from __future__ import annotations

import pytest
import torch

from mmcore import runtime
from mmcore.runtime import effective_precision, precision_context


@pytest.fixture
def bf16_hardware(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) bf16 matrix units."""
    def pretend(fast: bool) -> None:
        monkeypatch.setattr(runtime, "has_fast_bf16", lambda device: fast)
        runtime._warn_no_fast_bf16.cache_clear()
    yield pretend
    runtime._warn_no_fast_bf16.cache_clear()


def test_bf16_autocasts_where_the_hardware_has_it(bf16_hardware):
    bf16_hardware(True)
    assert effective_precision("cpu", "bf16") == "bf16"
    with precision_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_computes_in_float32_with_one_warning_where_it_would_be_emulated(bf16_hardware):
    bf16_hardware(False)
    with pytest.warns(UserWarning, match=r"run.precision='bf16' computes in float32"):
        assert effective_precision("cpu", "bf16") == "fp32"
    with precision_context("cpu", "bf16"):  # warned once per process, not at every step
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_fp32_never_autocasts_and_unknown_precisions_are_named(bf16_hardware):
    bf16_hardware(True)
    with precision_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="run.precision"):
        precision_context("cpu", "fp16")


def test_fast_bf16_on_a_cpu_is_what_onednn_has_kernels_for():
    assert runtime.has_fast_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert runtime.environment(torch.device("cpu"), 0, 1)["cpu_bf16"] == runtime.has_fast_bf16(
        "cpu")
