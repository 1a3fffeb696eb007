"""The in-place products with a batch's cached rows equal torch's on the gathered rows."""
from __future__ import annotations

import numba
import pytest
import torch

from mmcore.row_products import mix_rows, times_rows_t


def _split_and_rows() -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randn(7, 3, 11, 16, generator=g)  # (N, H, L0, Dh): one layer of a split
    return blocks, torch.tensor([5, 0, 5, 2]), 9  # a sample may come twice; 9 of 11 tokens


def test_times_rows_t_is_x_times_the_rows_transposed_and_leaves_later_columns():
    blocks, rows, length = _split_and_rows()
    x = torch.randn(4, 3, 6, 16)
    out = torch.full((4, 3, 6, length + 2), 7.0)
    times_rows_t(x, blocks, rows, length, out)
    expected = x @ blocks[rows, :, :length].transpose(-2, -1)
    torch.testing.assert_close(out[..., :length], expected, atol=1e-5, rtol=1e-5)
    assert bool((out[..., length:] == 7.0).all())  # the prompts' columns: the caller's
    times_rows_t(x.transpose(-2, -1).contiguous().transpose(-2, -1), blocks, rows, length, out)
    torch.testing.assert_close(out[..., :length], expected, atol=1e-5, rtol=1e-5)  # strided x


def test_mix_rows_weights_the_rows_it_reads():
    blocks, rows, length = _split_and_rows()
    weights = torch.randn(4, 3, 6, length + 2)  # the prompts' columns are not read
    expected = weights[..., :length] @ blocks[rows, :, :length]
    torch.testing.assert_close(mix_rows(weights, blocks, rows, length), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_loops_run_on_torchs_threads(threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s) here")
    blocks, rows, length = _split_and_rows()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        mix_rows(torch.randn(4, 3, 6, length), blocks, rows, length)
        assert numba.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
