"""Errors a person can act on: one ``sj-resnet: error: ...`` line, a non-zero exit, no run folder left behind."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import REPO, TINY, cli, subprocess_env

FAST = [*TINY, "--epochs", "1", "--limit-train-batches", "2", "--limit-eval-batches", "1", "--batch-size", "16"]
HAS_CUDA = torch.cuda.is_available()


def _one_line_error(capsys, *needles: str) -> str:
    cap = capsys.readouterr()
    err = cap.err
    assert err.startswith("sj-resnet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + cap.out
    for needle in needles:
        assert needle in err, err
    return err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli("train", *FAST, "-o", run) == 0
    return run


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a GPU")
def test_device_cuda_without_a_gpu(tmp_path, capsys, trained):
    assert cli("train", *FAST, "--device", "cuda", "-o", tmp_path / "run") == 2
    _one_line_error(capsys, "--device cuda", "--device cpu")
    assert not (tmp_path / "run").exists()
    assert cli("eval", "-c", trained, "--device", "cuda:0") == 2
    _one_line_error(capsys, "--device cuda:0", "--device cpu")


@pytest.mark.parametrize("device", ["banana", "mps:x", "cuda:-1"])
def test_unknown_device(tmp_path, capsys, trained, device):
    assert cli("train", *FAST, "--device", device, "-o", tmp_path / "run") == 2
    _one_line_error(capsys, "--device", "cpu")
    assert not (tmp_path / "run").exists()
    assert cli("eval", "-c", trained, "--device", device) == 2
    _one_line_error(capsys, "--device")


def test_impossible_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli("train", *FAST, "-o", blocker / "run") == 2
    _one_line_error(capsys, "is a file")
    assert cli("train", *FAST, "-o", blocker) == 2
    _one_line_error(capsys, "is a file")
    assert cli("train", *FAST, "-o", "/proc/sj-resnet-no-such-run") == 2  # not writable, even for root
    _one_line_error(capsys, "cannot write in /proc")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory regardless of its mode")
def test_read_only_output_dir(tmp_path, capsys):  # pragma: no cover - CI runs as a normal user
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli("train", *FAST, "-o", ro / "run") == 2
        _one_line_error(capsys, "cannot write in")
        assert not (ro / "run").exists()
    finally:
        ro.chmod(0o700)


def test_a_failing_set_up_leaves_no_run_folder(tmp_path, capsys):
    """The run folder is created only after data, model and device are set up."""
    run = tmp_path / "run"
    assert cli("train", *FAST, "--dataset", "imagenet", "--data-dir", tmp_path / "nowhere", "-o", run) == 2
    _one_line_error(capsys, "imagenet")
    assert not run.exists()
    assert cli("train", *FAST, "--model", "resnet9000", "-o", run) == 2
    _one_line_error(capsys, "resnet9000")
    assert not run.exists()


def test_eval_output_into_a_missing_directory_is_refused_before_evaluating(tmp_path, capsys, trained):
    """--output is checked before anything is loaded: with data that cannot be found either, the error is about
    --output (evaluating first would have failed on the data)."""
    no_data = ["--dataset", "cifar10", "--data-dir", tmp_path / "no-data"]
    assert cli("eval", "-c", trained, "--threads", "1", *no_data, "--output", tmp_path / "missing" / "r.json") == 2
    _one_line_error(capsys, "--output", "does not exist")
    assert cli("eval", "-c", trained, "--threads", "1", *no_data, "--output", tmp_path) == 2
    _one_line_error(capsys, "is a directory")
    assert cli("eval", "-c", trained, "--threads", "1", *no_data) == 2  # the data error the check came before
    _one_line_error(capsys, "cifar10")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a GPU")
def test_backend_cupy_without_cupy(tmp_path, capsys, trained):
    assert cli("eval", "-c", trained, "--threads", "1", "--backend", "cupy") == 2
    _one_line_error(capsys, "--backend cupy", "--backend auto")
    assert cli("train", *FAST, "--backend", "cupy", "-o", tmp_path / "run") == 2
    _one_line_error(capsys, "--backend cupy")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("payload", ["random", "zip-with-random-pickle"])
def test_random_bytes_checkpoint_never_suggests_unsafe_loading(tmp_path, capsys, payload):
    bad = tmp_path / "x.pt"
    if payload == "random":
        bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                      dtype=torch.uint8).numpy().tobytes())
    else:
        import zipfile

        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("archive/data.pkl", bytes(range(7, 200)))
            z.writestr("archive/version", "3\n")
    before = _sha(bad)
    for args in (["eval", "-c", bad, "--threads", "1"], ["train", "--resume", bad, "--threads", "1"]):
        assert cli(*args) == 2
        err = _one_line_error(capsys, "not a readable checkpoint")
        assert "weights_only" not in err and "False" not in err and "file an issue" not in err
    assert _sha(bad) == before


def test_a_failed_checkpoint_write_keeps_the_old_checkpoint(tmp_path, capsys):
    """A real failing write: the resumed run runs under a file-size limit (``RLIMIT_FSIZE``) below the checkpoint's
    size, so the kernel refuses the checkpoint's bytes (EFBIG, as ENOSPC on a full disk) half-way through
    ``torch.save``. One error line, exit 2, both checkpoints unchanged, no temporary file left."""
    run = tmp_path / "run"
    assert cli("train", *FAST, "--epochs", "2", "--stop-after-epochs", "1", "-o", run) == 0
    capsys.readouterr()
    before = {p.name: _sha(p) for p in (run / "last.pt", run / "best.pt")}
    limit = min((run / "last.pt").stat().st_size, (run / "best.pt").stat().st_size) // 2
    assert limit > 4 * (run / "metrics.csv").stat().st_size  # the run's small files still fit

    def small_files_only():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG

    proc = subprocess.run([sys.executable, "-m", "sj_resnet", "train", "--resume", str(run), "--threads", "1"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files_only)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sj-resnet: error: could not write ") and proc.stderr.count("\n") == 1, proc.stderr
    for needle in (os.strerror(errno.EFBIG), "is unchanged", "--resume"):
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert {p.name: _sha(p) for p in (run / "last.pt", run / "best.pt")} == before
    assert not [p for p in os.listdir(run) if ".tmp-" in p]
