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


def _own(queries: int) -> torch.Tensor:
    return torch.randn(4, 3, queries, 16, generator=torch.Generator().manual_seed(1))


def _gathered(blocks: torch.Tensor, rows: torch.Tensor, length: int, own: torch.Tensor
              ) -> torch.Tensor:
    """What the loops read: each sample's cached rows, then the prompts' own."""
    return torch.cat([blocks[rows, :, :length], own], dim=2)


# queries in whole groups of three and not (the loops take three at a time), an odd and an
# even number of rows (two at a time), a single prompt
SHAPES = pytest.mark.parametrize("queries,length", [(6, 9), (4, 9), (5, 8), (1, 11)],
                                 ids=["K6-L9", "K4-L9", "K5-L8", "K1-L11"])


@SHAPES
def test_times_rows_t_is_x_times_the_cached_then_own_rows_transposed(torch_threads, queries,
                                                                     length):
    blocks, rows, _ = _split_and_rows()
    x, own = torch.randn(4, 3, queries, 16), _own(queries)
    expected = x @ _gathered(blocks, rows, length, own).transpose(-2, -1)
    out = times_rows_t(x, blocks, rows, length, own)
    assert out.shape == (4, 3, queries, length + queries)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    strided = x.transpose(-2, -1).contiguous().transpose(-2, -1)
    torch.testing.assert_close(times_rows_t(strided, blocks, rows, length, own), expected,
                               atol=1e-5, rtol=1e-5)


@SHAPES
def test_mix_rows_weights_the_cached_then_own_rows(torch_threads, queries, length):
    blocks, rows, _ = _split_and_rows()
    weights, own = torch.randn(4, 3, queries, length + queries), _own(queries)
    expected = weights @ _gathered(blocks, rows, length, own)
    torch.testing.assert_close(mix_rows(weights, blocks, rows, length, own), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("torch_threads", [2], indirect=True, ids=["parallel"])
def test_two_threads_run_the_loops_on_numbas_team_of_two(torch_threads):
    blocks, rows, length = _split_and_rows()
    mix_rows(torch.randn(4, 3, 6, length + 6), blocks, rows, length, _own(6))
    assert numba.get_num_threads() == 2
    assert numba.threading_layer()  # raises where no team was started


def test_one_thread_never_starts_numbas_thread_team():
    """Its spinning threads slowed busy hosts several times over: one thread runs serially."""
    script = (
        "import numba, torch\n"
        "from mmcore.row_products import mix_rows\n"
        "torch.set_num_threads(1)\n"
        "out = mix_rows(torch.ones(2, 1, 3, 6), torch.ones(4, 1, 5, 2), torch.tensor([3, 0]), 5,\n"
        "               torch.ones(2, 1, 1, 2))\n"
        "assert bool((out == 6).all()), out\n"
        "try:\n"
        "    print(numba.threading_layer())\n"
        "except ValueError:\n"
        "    print('no team')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no team"
