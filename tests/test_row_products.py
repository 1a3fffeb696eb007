"""The in-place products with a batch's cached rows equal torch's on the gathered rows."""
from __future__ import annotations

import subprocess
import sys

import numba
import pytest
import torch

from mmcore.row_products import mix_rows, times_rows_t


def _split_and_rows() -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(0)
    blocks = torch.randn(7, 3, 11, 16, generator=g)  # (N, H, L0, Dh): one layer of a split
    return blocks, torch.tensor([5, 0, 5, 2]), 9  # a sample may come twice; 9 of 11 tokens


@pytest.fixture(params=[1, 2], ids=["serial", "parallel"])
def torch_threads(request):
    """Each product runs on one torch thread (the serial loops) and on two (the parallel)."""
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s) here")
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_times_rows_t_is_x_times_the_rows_transposed_and_leaves_later_columns(torch_threads):
    blocks, rows, length = _split_and_rows()
    x = torch.randn(4, 3, 6, 16)
    out = torch.full((4, 3, 6, length + 2), 7.0)
    times_rows_t(x, blocks, rows, length, out)
    expected = x @ blocks[rows, :, :length].transpose(-2, -1)
    torch.testing.assert_close(out[..., :length], expected, atol=1e-5, rtol=1e-5)
    assert bool((out[..., length:] == 7.0).all())  # the prompts' columns: the caller's
    times_rows_t(x.transpose(-2, -1).contiguous().transpose(-2, -1), blocks, rows, length, out)
    torch.testing.assert_close(out[..., :length], expected, atol=1e-5, rtol=1e-5)  # strided x


def test_mix_rows_weights_the_rows_it_reads(torch_threads):
    blocks, rows, length = _split_and_rows()
    weights = torch.randn(4, 3, 6, length + 2)  # the prompts' columns are not read
    expected = weights[..., :length] @ blocks[rows, :, :length]
    torch.testing.assert_close(mix_rows(weights, blocks, rows, length), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("torch_threads", [2], indirect=True, ids=["parallel"])
def test_two_threads_run_the_loops_on_numbas_team_of_two(torch_threads):
    blocks, rows, length = _split_and_rows()
    mix_rows(torch.randn(4, 3, 6, length), blocks, rows, length)
    assert numba.get_num_threads() == 2
    assert numba.threading_layer()  # raises where no team was started


def test_one_thread_never_starts_numbas_thread_team():
    """Its spinning threads slowed busy hosts several times over: one thread runs serially."""
    script = (
        "import numba, torch\n"
        "from mmcore.row_products import mix_rows\n"
        "torch.set_num_threads(1)\n"
        "out = mix_rows(torch.ones(2, 1, 3, 5), torch.ones(4, 1, 5, 2), torch.tensor([3, 0]), 5)\n"
        "assert bool((out == 5).all()), out\n"
        "try:\n"
        "    print(numba.threading_layer())\n"
        "except ValueError:\n"
        "    print('no team')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no team"
