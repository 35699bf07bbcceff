"""Nothing lost: run ids, a resume writes only into its own run's folder, every artifact marks a run, a finished
run's resume changes nothing, stale temporary files go, a diverged (NaN) run never replaces a checkpoint.

Every data-loss case compares SHA-256 hashes of all files of the runs involved before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import TINY, cli, load

FAST = [*TINY, "--epochs", "2", "--limit-train-batches", "3", "--limit-eval-batches", "1", "--batch-size", "16"]


def hashes(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folders`` (names relative to their parent), including TensorBoard events."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(folder.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _one_line_error(capsys, *needles: str) -> str:
    cap = capsys.readouterr()
    assert cap.err.startswith("sj-resnet: error: ") and cap.err.count("\n") == 1, cap.err
    assert "Traceback" not in cap.err + cap.out
    for needle in needles:
        assert needle in cap.err, cap.err
    return cap.err


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Run A finished (2 epochs); run B stopped after epoch 1 of 2 (resumable)."""
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "A", root / "B"
    assert cli("train", *FAST, "--tensorboard", "-o", a) == 0
    assert cli("train", *FAST, "--seed", "1", "--stop-after-epochs", "1", "-o", b) == 0
    return a, b


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


def test_every_run_has_an_id_in_its_config_and_checkpoints(two_runs):
    a, b = two_runs
    ids = []
    for run in (a, b):
        rid = json.loads((run / "config.json").read_text())["run_id"]
        assert isinstance(rid, str) and len(rid) >= 12
        assert load(run / "last.pt")["run_id"] == rid
        assert load(run / "best.pt")["run_id"] == rid
        ids.append(rid)
    assert json.loads((a / "summary.json").read_text())["run_id"] == ids[0]
    assert ids[0] != ids[1]


def test_resume_into_another_runs_folder_is_refused(two_runs, tmp_path, capsys):
    a, b = _copy(two_runs[0], tmp_path), _copy(two_runs[1], tmp_path)
    before = hashes(a, b)
    assert cli("train", "--resume", b, "-o", a, "--threads", "1") == 2
    _one_line_error(capsys, "own folder", str(b))
    assert cli("train", "--resume", b / "last.pt", "-o", tmp_path / "elsewhere", "--threads", "1") == 2
    _one_line_error(capsys, "own folder")
    assert not (tmp_path / "elsewhere").exists()
    assert hashes(a, b) == before


def test_resuming_a_checkpoint_that_sits_in_another_runs_folder_is_refused(two_runs, tmp_path, capsys):
    a, b = _copy(two_runs[0], tmp_path), _copy(two_runs[1], tmp_path)
    shutil.copy(b / "last.pt", a / "from-b.pt")
    before = hashes(a, b)
    assert cli("train", "--resume", a / "from-b.pt", "--threads", "1") == 2
    _one_line_error(capsys, "belongs to run", "overwrite")
    assert hashes(a, b) == before


@pytest.mark.parametrize("keep", ["best.pt", "metrics.csv", "summary.json", "config.json", "tb", "curves.png"])
def test_a_fresh_run_never_overwrites_any_artifact_of_a_run(two_runs, tmp_path, capsys, keep):
    """A folder holding any one file of a run (not just last.pt) is refused for a new run."""
    a = _copy(two_runs[0], tmp_path)
    for p in list(a.iterdir()):
        if p.name != keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if keep == "curves.png" and not (a / keep).exists():
        (a / keep).write_bytes(b"png")
    before = hashes(a)
    assert before
    assert cli("train", *FAST, "-o", a) == 2
    _one_line_error(capsys, "already holds a run", keep, "--resume")
    assert hashes(a) == before


def test_resuming_a_finished_run_says_so_and_changes_nothing(two_runs, tmp_path, capsys):
    a = _copy(two_runs[0], tmp_path)
    before = hashes(a)
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    assert cli("train", "--resume", a, "--threads", "1") == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "nothing to do" in out
    assert hashes(a) == before
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*")} == mtimes
    assert len(json.loads((a / "summary.json").read_text())["firing_rates_test"]) > 0


def test_stale_temporary_files_are_removed_on_resume_and_start(two_runs, tmp_path):
    b = _copy(two_runs[1], tmp_path)
    dead = 2**22 + 12345  # above the default pid_max of 2**22: no such process
    (b / f".last.pt.tmp-{dead}").write_bytes(os.urandom(1 << 16))
    (b / f".best.pt.tmp-{dead}").write_bytes(b"x")
    (b / ".last.pt.tmp-1").write_bytes(b"pid 1 is alive: its write may be in progress")
    assert cli("train", "--resume", b, "--threads", "1") == 0
    left = sorted(p.name for p in b.iterdir() if ".tmp" in p.name)
    assert left == [".last.pt.tmp-1"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / f".last.pt.tmp-{dead}").write_bytes(b"x")
    assert cli("train", *FAST, "--epochs", "1", "-o", fresh) == 0
    assert not [p for p in fresh.iterdir() if ".tmp" in p.name]


def test_a_diverging_run_stops_with_an_error_and_writes_no_checkpoint(tmp_path, capsys):
    """Finite but absurd options: the weights overflow in the first epoch; it must not end 'done'."""
    run = tmp_path / "run"
    assert cli("train", *FAST, "--opt", "sgd", "--lr", "1e30", "-o", run) == 2
    _one_line_error(capsys, "non-finite", "epoch 1", "--lr")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


def test_a_nan_in_a_resumed_epoch_never_replaces_best_or_last(two_runs, tmp_path, capsys, monkeypatch):
    b = _copy(two_runs[1], tmp_path)
    before = hashes(b)
    from sj_resnet.train import engine

    real = engine.compute_loss
    calls = {"n": 0}

    def nan_on_second_step(out, target, cfg):
        loss, logits = real(out, target, cfg)
        calls["n"] += 1
        return (loss * torch.nan if calls["n"] == 2 else loss), logits

    monkeypatch.setattr(engine, "compute_loss", nan_on_second_step)
    assert cli("train", "--resume", b, "--threads", "1") == 2
    _one_line_error(capsys, "non-finite", "epoch 2", "step 1")
    after = hashes(b)
    for name in ("B/best.pt", "B/last.pt", "B/metrics.csv"):
        assert after[name] == before[name], name
