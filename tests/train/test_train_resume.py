"""Reliability: bit-identical resume (epoch boundary and mid-epoch), Ctrl-C, corrupt/mismatched checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import REPO, TINY, cli, load, subprocess_env

from sj_resnet.train import checkpoint as ckpt_io
from sj_resnet.train.config import resolve
from sj_resnet.train.trainer import Interrupted, train

# Adam + augmentation + label smoothing + weight EMA: optimizer, EMA and RNG states must all be restored.
BASE = [*TINY, "--dataset", "digits", "--epochs", "2", "--limit-train-batches", "5", "--limit-eval-batches", "1",
        "--batch-size", "16", "--opt", "adam", "--lr", "3e-3", "--warmup-epochs", "0.5", "--label-smoothing", "0.1",
        "--ema-decay", "0.9"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    for k in a["eval_model"]:
        assert torch.equal(a["eval_model"][k], b["eval_model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    # every metric of every epoch, the mid-epoch grad_norm included; only time and memory may differ
    timing = {"train_img_s", "epoch_s", "peak_mem_mib"}
    rows_a = [{k: v for k, v in r.items() if k not in timing} for r in a["history"]]
    rows_b = [{k: v for k, v in r.items() if k not in timing} for r in b["history"]]
    assert rows_a == rows_b


def test_resume_at_epoch_boundary_is_bit_identical(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli("train", *BASE, "-o", straight) == 0
    assert cli("train", *BASE, "--stop-after-epochs", "1", "-o", split) == 0
    first = load(split / "last.pt")
    assert first["epoch"] == 1 and first["step_in_epoch"] == 0
    assert cli("train", "--resume", split, "--threads", "1") == 0
    a, b = load(straight / "last.pt"), load(split / "last.pt")
    assert b["epoch"] == 2
    _assert_same_state(a, b)
    # the check is sensitive: one epoch of training changes the weights
    assert any(not torch.equal(first["model"][k], a["model"][k]) for k in a["model"])


def _options(args: list[str]) -> dict:
    """The config fields the CLI would pass for ``args`` (``sj-resnet train ARGS``)."""
    from sj_resnet.cli import build_parser

    ns = build_parser().parse_args(["train", *map(str, args)])
    return {k: v for k, v in vars(ns).items() if v is not None and k not in ("command", "resume")}


def test_resume_mid_epoch_after_interrupt_is_bit_identical(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli("train", *BASE, "-o", straight) == 0

    polls = {"n": 0}

    def stop_after_three_steps() -> bool:
        polls["n"] += 1
        return polls["n"] >= 5 + 1 + 3  # epoch 1: 5 steps + the end-of-epoch poll; then 3 steps of epoch 2

    with pytest.raises(Interrupted) as stopped:
        train(resolve(_options([*BASE, "-o", split])), stop=stop_after_three_steps)
    assert stopped.value.path == split / "last.pt"
    mid = load(split / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 3)
    assert cli("train", "--resume", split, "--threads", "1") == 0
    _assert_same_state(load(straight / "last.pt"), load(split / "last.pt"))


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-u", "-m", "sj_resnet", "train", *TINY, "--dataset", "fake", "--fake-size", "64",
           "--batch-size", "8", "--epochs", "500", "-o", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "epoch   1/500" not in line:  # wait until training is under way
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: checkpoint" in out and "--resume" in out
    assert "Traceback" not in err
    ck = load(run / "last.pt")
    assert 1 <= ck["epoch"] < 500 and len(ck["history"]) == ck["epoch"]
    assert not [p for p in os.listdir(run) if p.startswith(".last.pt.tmp")]


def _trained(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *BASE, "--stop-after-epochs", "1", "-o", run) == 0
    return run


def test_corrupt_checkpoint_is_refused_and_left_untouched(tmp_path, capsys):
    run = _trained(tmp_path)
    path = run / "last.pt"
    good = path.read_bytes()
    for bad in (good[: len(good) // 2], b"not a checkpoint at all"):
        path.write_bytes(bad)
        assert cli("train", "--resume", run, "--threads", "1") == 2
        assert "not a readable checkpoint" in capsys.readouterr().err
        assert path.read_bytes() == bad


def test_mismatched_checkpoints_give_clear_errors(tmp_path, capsys):
    run = _trained(tmp_path)
    before = (run / "last.pt").read_bytes()
    assert cli("train", "--resume", run, "--width", "8") == 2
    assert "--width 8 (checkpoint: 4)" in capsys.readouterr().err
    assert cli("train", "--resume", run / "best.pt") == 2  # no training state in best.pt
    assert "resume from last.pt" in capsys.readouterr().err
    torch.save({"format": "something-else/9"}, tmp_path / "other.pt")
    assert cli("train", "--resume", tmp_path / "other.pt") == 2
    assert "not an sj-resnet training checkpoint" in capsys.readouterr().err
    assert cli("train", "--resume", tmp_path / "nowhere") == 2
    assert "no checkpoint at" in capsys.readouterr().err
    ck = load(run / "last.pt")
    ck["model"].pop("fc.weight")
    torch.save(ck, tmp_path / "surgery.pt")
    assert cli("train", "--resume", tmp_path / "surgery.pt") == 2
    assert "fc.weight" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before


class _DiskFull:
    """Pickling it fails half-way through ``torch.save``, as a full disk does."""

    def __reduce__(self):
        raise OSError("disk full")


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic({"a": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(ckpt_io.CheckpointError, match="disk full.*is unchanged"):
        ckpt_io.save_atomic({"a": torch.zeros(1000), "b": _DiskFull()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
