"""Fault injection: signals, hard kills and a full disk never cost the last good checkpoint,
and resuming ends exactly where an uninterrupted run ends.

The fast tests signal the test process itself from inside the toy model's forward pass; the
slow ones run training in child processes of ``_interrupt_worker.py`` and hit them with
SIGINT, SIGTERM and SIGKILL at random points, also halfway through a checkpoint write.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _toy import ToyData, ToyModel

import mmcore.checkpoint
from mmcore.checkpoint import read_checkpoint, save_checkpoint
from mmcore.config import Config
from mmcore.runtime import build_loader, seed_everything
from mmcore.train import TrainingInterrupted, fit

WORKER = Path(__file__).with_name("_interrupt_worker.py")
LAST = "checkpoints/last.safetensors"
TIMING = ("time_s", "samples_per_s")  # the only fields that may differ between equal runs
TEMPORARY = re.compile(r"\.(last|best)\.safetensors\.tmp\d+")  # atomic_write's names


def _cfg(**params) -> Config:
    base = dict(epochs=2, batch_size=4, grad_accum=2, eval_batch_size=16, lr=1e-2,
                encoder_lr=1e-3, precision="fp32", progress=False, warmup_ratio=0.2, seed=3,
                device="cpu")  # 16 micro-batches, 8 optimiser steps an epoch
    return Config.from_params(**{**base, **params})


class SignallingModel(ToyModel):
    """Sends itself ``signals`` at the ``at``-th training forward (mid optimiser step)."""

    def __init__(self, at: int, signals: tuple[int, ...], dropout: float) -> None:
        super().__init__(dropout)
        self.at, self.signals, self.calls = at, signals, 0

    def forward(self, batch):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                for signum in self.signals:
                    os.kill(os.getpid(), signum)
        return super().forward(batch)


def _run(cfg: Config, run_dir: Path, model_cls: type[ToyModel] = ToyModel, **kwargs):
    seed_everything(cfg.run.seed)
    model = model_cls(dropout=0.2, **kwargs)
    train, val = ToyData(64, seed=0), ToyData(31, seed=1)
    return model, fit(model, build_loader(train, cfg.optim.batch_size, train.collate, train=True,
                                          seed=cfg.run.seed),
                      build_loader(val, cfg.run.eval_batch_size, val.collate, train=False),
                      cfg, run_dir, resume=True)


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_run(run: Path, reference: Path) -> None:
    """Same checkpoints (every tensor bit-exact), metrics and final summary."""
    for name in ("last", "best"):
        (ta, ma), (tb, mb) = (read_checkpoint(d / f"checkpoints/{name}.safetensors")
                              for d in (run, reference))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key}"
    assert _strip(ma.get("progress", {}).get("history", [])) == _strip(
        mb.get("progress", {}).get("history", []))
    rows = [_strip([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()])
            for d in (run, reference)]
    assert rows[0] == rows[1] and len(rows[0]) == ma["config"]["optim"]["epochs"] + 1  # + epoch 0
    finals = [json.loads((d / "final.json").read_text()) for d in (run, reference)]
    for final in finals:
        final["best"] = _strip([final["best"]])[0]
    assert finals[0] == finals[1]


def _last_good_step(run_dir: Path) -> int:
    """The step of ``last``, after checking it loads and no other file is named like one."""
    for name in os.listdir(run_dir / "checkpoints"):
        assert name in ("last.safetensors", "best.safetensors") or TEMPORARY.fullmatch(name), name
    tensors, meta = read_checkpoint(run_dir / LAST)
    assert meta["kind"] == "last" and any(k.startswith("model.") for k in tensors)
    return meta["progress"]["step"]


# --- SIGINT / SIGTERM in this process -----------------------------------------------------------


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> Path:
    """An uninterrupted run of ``_cfg()`` in this process."""
    run_dir = tmp_path_factory.mktemp("local_reference") / "run"
    _run(_cfg(), run_dir)
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_optimiser_step_saves_and_resumes_bit_exact(tmp_path, signum,
                                                                          local_reference):
    cfg = _cfg()
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(TrainingInterrupted) as stopped:
        _run(cfg, tmp_path / "cut", SignallingModel, at=16 + 3, signals=(signum,))
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    # micro-batch 3 of epoch 2 belongs to step 8 + 2: that step finishes before the stop
    assert stopped.value.step == 10 and stopped.value.checkpoint == tmp_path / "cut" / LAST
    message = str(stopped.value.code)
    assert signal.Signals(signum).name in message and str(tmp_path / "cut" / LAST) in message
    assert "resume" in message and "python -m mmcore train" in message
    _, meta = read_checkpoint(tmp_path / "cut" / LAST, with_tensors=False)
    assert meta["progress"]["step"] == 10 and meta["progress"]["batches"] == 4
    assert not (tmp_path / "cut/final.json").exists()

    _run(cfg, tmp_path / "cut")
    _assert_same_run(tmp_path / "cut", local_reference)


def test_a_second_signal_aborts_at_once_and_keeps_the_last_checkpoint(tmp_path):
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
        _run(_cfg(checkpoint_every=1), tmp_path, SignallingModel, at=5,
             signals=(signal.SIGINT, signal.SIGINT))
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    assert _last_good_step(tmp_path) == 2  # micro-batch 5 opened step 3, never finished


def test_signal_handlers_are_installed_only_in_the_main_thread(tmp_path):
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(
        _run(_cfg(epochs=1), tmp_path)[1]))  # signal.signal would raise ValueError here
    thread.start()
    thread.join()
    assert len(outcome) == 1 and outcome[0].history[1]["step"] == 8  # 16 micro-batches
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


# --- a full disk --------------------------------------------------------------------------------


class _FullDisk:
    """``open`` for mmcore.checkpoint: the ``fail_at``-th file opened for writing whose name
    contains ``match`` gets half its bytes, then the write fails as on a full disk."""

    def __init__(self, fail_at: int, match: str = "") -> None:
        self.fail_at, self.match, self.opened = fail_at, match, 0

    def __call__(self, file, mode: str = "r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if "w" in mode and self.match in str(file):
            self.opened += 1
            if self.opened == self.fail_at:
                return _HalfWritten(f)
        return f


class _HalfWritten:
    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> _HalfWritten:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    model = ToyModel()
    save_checkpoint(path, model, {"kind": "test", "step": 1})
    before = path.read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.setattr(mmcore.checkpoint, "open", _FullDisk(fail_at=1), raising=False)
    with pytest.raises(OSError, match=r"No space left on device") as failed:
        save_checkpoint(path, model, {"kind": "test", "step": 2})
    assert failed.value.errno == errno.ENOSPC
    assert str(path) in str(failed.value) and "disk is full" in str(failed.value)
    assert path.read_bytes() == before and read_checkpoint(path)[1]["step"] == 1
    assert os.listdir(tmp_path) == [path.name]  # the half-written temporary file is gone


def test_a_full_disk_during_training_keeps_last_and_resume_is_bit_exact(tmp_path, monkeypatch,
                                                                        local_reference):
    cfg = _cfg(checkpoint_every=1)
    disk = _FullDisk(fail_at=7, match="last.safetensors")  # write 1 is epoch 0 (step 0)
    monkeypatch.setattr(mmcore.checkpoint, "open", disk, raising=False)
    with pytest.raises(OSError, match="disk is full"):
        _run(cfg, tmp_path / "cut")
    assert disk.opened == 7 and _last_good_step(tmp_path / "cut") == 5
    # best: epoch 0, the model before training; no temporary file left
    assert sorted(os.listdir(tmp_path / "cut/checkpoints")) == ["best.safetensors", "last.safetensors"]
    monkeypatch.undo()
    _run(cfg, tmp_path / "cut")
    _assert_same_run(tmp_path / "cut", local_reference)  # checkpoint_every changes nothing


# --- child processes: SIGINT, SIGTERM and SIGKILL at random points -------------------------------


class _Server:
    """Client of ``_interrupt_worker.py``: start a run, watch its events, signal it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.replies: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.events, self.seen = Path(), 0

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))

    def start(self, run_dir: Path, pause_write: int = 0) -> int:
        self.events = Path(f"{run_dir}.events")
        self.seen = self.events.stat().st_size if self.events.exists() else 0
        self.proc.stdin.write(json.dumps({"run_dir": str(run_dir),
                                          "pause_write": pause_write}) + "\n")
        self.proc.stdin.flush()
        return self.replies.get(timeout=120)["pid"]

    def lines(self) -> list[str]:
        """The current run's events so far."""
        if not self.events.exists():
            return []
        with open(self.events) as f:
            f.seek(self.seen)
            return f.read().splitlines()

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        """Block until the current run logs ``event``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if event in lines:
                return
            assert self.replies.empty(), f"the run ended before '{event}': {lines[-3:]}"
            time.sleep(0.001)
        raise TimeoutError(f"no '{event}' in {self.events} after {timeout} s")

    def status(self) -> int:
        return self.replies.get(timeout=120)["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    server = _Server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def forked_reference(server, tmp_path_factory) -> Path:
    """An uninterrupted run of the worker's configuration."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    server.start(run_dir)
    assert server.status() == 0
    return run_dir


def _finish(server: _Server, run_dir: Path, reference: Path) -> None:
    server.start(run_dir)
    assert server.status() == 0
    assert not any(TEMPORARY.fullmatch(n) for n in os.listdir(run_dir / "checkpoints"))
    _assert_same_run(run_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_at_random_points_stop_cleanly_and_resume_bit_exact(
        server, forked_reference, tmp_path, signum):
    rng, run_dir, step, stops = random.Random(signum), tmp_path / "run", 0, []
    for _ in range(2):  # two signals, each at a random forward of a (resumed) run
        at = rng.randint(2, 8)
        pid = server.start(run_dir)
        server.wait_for(f"F {at}")
        time.sleep(rng.uniform(0.0, 0.01))
        os.kill(pid, signum)
        assert server.status() == 3  # TrainingInterrupted, not a crash
        message = next(line for line in server.lines() if line.startswith("I "))
        assert signal.Signals(signum).name in message and "resume" in message
        saved = _last_good_step(run_dir)
        assert saved >= step + at  # the step under way when the signal came was finished
        step = saved
        stops.append((at, saved))
    print(f"{signal.Signals(signum).name} at (forward of the run, step saved): {stops}")
    _finish(server, run_dir, forked_reference)


@pytest.mark.slow
def test_sigkill_at_random_points_never_corrupts_the_last_checkpoint(
        server, forked_reference, tmp_path):
    rng, run_dir, steps = random.Random(0), tmp_path / "run", [0]
    for _ in range(5):
        pid = server.start(run_dir)
        server.wait_for(f"F {rng.randint(2, 6)}")  # step 1 of this run is saved by then
        time.sleep(rng.uniform(0.0, 0.01))
        os.kill(pid, signal.SIGKILL)
        assert server.status() == -signal.SIGKILL
        steps.append(_last_good_step(run_dir))
    assert steps == sorted(steps) and steps[-1] > 5  # each run got further
    print(f"SIGKILL x5: last checkpoint at steps {steps[1:]}")
    _finish(server, run_dir, forked_reference)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(
        server, forked_reference, tmp_path):
    rng, run_dir, step = random.Random(1), tmp_path / "run", 0
    for _ in range(2):
        write = rng.randint(2, 5)
        # a fresh run's first write is the model before training (step 0), then one per step
        first_step = 0 if (run_dir / LAST).exists() else -1
        pid = server.start(run_dir, pause_write=write)
        server.wait_for(f"W {write}")  # the temporary file is written, not yet renamed
        os.kill(pid, signal.SIGKILL)
        assert server.status() == -signal.SIGKILL
        assert (run_dir / f"checkpoints/.last.safetensors.tmp{pid}").is_file()
        assert _last_good_step(run_dir) == step + write - 1 + first_step
        step += write - 1 + first_step
    print(f"SIGKILL in a write: last checkpoint kept at step {step}")
    _finish(server, run_dir, forked_reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_one_torchrun_process_stops_both_at_the_same_step(tmp_path):
    """Rank 1 alone gets the signal; rank 0 learns it from the per-step collective, so both
    save and stop together (rank 0 going on alone would hang in DDP's next all-reduce)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(run_dir)]
    events = [Path(f"{run_dir}.events.{rank}") for rank in (0, 1)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        deadline = time.monotonic() + 120
        while not (events[1].exists() and "F 5" in events[1].read_text().splitlines()):
            assert proc.poll() is None and time.monotonic() < deadline, "rank 1 never got to F 5"
            time.sleep(0.01)
        os.kill(int(events[1].read_text().split()[1]), signal.SIGTERM)  # its "P <pid>" line
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, "torchrun reports the stopped run as failed"
    stops = [next(line for line in e.read_text().splitlines() if line.startswith("I "))
             for e in events]
    steps = [int(re.search(r"after optimiser step (\d+)", line).group(1)) for line in stops]
    assert steps[0] == steps[1] >= 5 and all("SIGTERM" in line for line in stops), stderr[-2000:]
    _, meta = read_checkpoint(run_dir / LAST, with_tensors=False)
    assert meta["progress"]["step"] == steps[0] and meta["world_size"] == 2

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_dir / "final.json").read_text())["steps"] == 24
