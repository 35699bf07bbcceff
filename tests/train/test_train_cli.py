"""End-to-end CLI tests on data that needs no download: digits, FakeData, an ImageFolder tree; bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from train_helpers import TINY, cli, load, run_module

from sj_resnet.train.firing import spiking_layers
from sj_resnet.train.modeling import build_model

FAST = [*TINY, "--epochs", "1", "--limit-train-batches", "3", "--limit-eval-batches", "2", "--batch-size", "16"]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_help_and_no_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli("train", "--help")
    assert exc.value.code == 0
    assert "--recipe" in capsys.readouterr().out
    assert cli() == 2


def test_digits_run_writes_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    args = [a for a in FAST if a not in ("--no-tensorboard", "--no-plot")]
    assert cli("train", *args, "--epochs", "2", "-o", run) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "img/s" in out and "peak" in out and "firing" in out
    for name in ("last.pt", "best.pt", "metrics.csv", "summary.json", "curves.png", "config.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0.0 <= float(r["test_acc1"]) <= float(r["test_acc5"]) <= 1.0
        assert 0.0 < float(r["train_firing"]) < 1.0
        assert float(r["train_img_s"]) > 0 and float(r["peak_mem_mib"]) > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert summary["final"]["test_acc1"] == pytest.approx(float(rows[-1]["test_acc1"]))
    assert summary["model_spec"]["kwargs"]["in_channels"] == 1
    assert len(summary["firing_rates_test"]) == 17  # stem + 16 block neurons of ResNet-18


@pytest.mark.parametrize("ema", [[], ["--ema-decay", "0.5"]])
def test_eval_reproduces_the_final_test_accuracy(tmp_path, capsys, ema):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--epochs", "1", "--limit-train-batches", "4", "--batch-size", "32", *ema,
               "-o", run) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert cli("eval", "--checkpoint", run, "--threads", "1", "--output", out_json) == 0
    printed = capsys.readouterr().out
    assert "acc@1" in printed and "layer4.1.sn2" in printed
    result = json.loads(out_json.read_text())
    assert result["samples"] == 360  # the whole digits test split
    assert result["acc1"] == pytest.approx(summary["final"]["test_acc1"], abs=1e-9)
    assert result["acc5"] >= result["acc1"]
    model = build_model(load(run / "last.pt")["model_spec"])
    assert list(result["firing_rates"]) == [name for name, _ in spiking_layers(model)]
    assert len(result["firing_rates"]) == 17  # stem + 16 block neurons of ResNet-18


def test_fake_data_tet_loss_and_bf16(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--dataset", "fake", "--fake-size", "48", *FAST, "--loss", "tet", "--amp", "bf16",
               "--label-smoothing", "0.1", "--opt", "adamw", "--wd", "0.01", "-o", run) == 0
    row = _rows(run)[0]
    assert torch.isfinite(torch.tensor(float(row["train_loss"])))
    assert load(run / "last.pt")["model_spec"]["kwargs"]["return_sequence"] is True


def _image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=4, size=40) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_imagenet_folder_layout(tmp_path):
    data = tmp_path / "imnet"
    _image_folder(data)
    run = tmp_path / "run"
    assert cli("train", "--dataset", "imagenet", "--data-dir", data, "--image-size", "32", "--model",
               "resnet18_cifar", *FAST, "-o", run) == 0
    ckpt = load(run / "last.pt")
    assert ckpt["model_spec"]["kwargs"]["num_classes"] == 3
    assert ckpt["model"]["fc.weight"].shape[0] == 3


@pytest.mark.parametrize(
    ("setup", "args", "expect"),
    [
        (None, ["--dataset", "imagenet"], "--data-dir"),
        ("none", ["--dataset", "imagenet"], "train/"),
        ("no_val", ["--dataset", "imagenet"], "val"),
        ("empty_class", ["--dataset", "imagenet"], "holds no images"),
        ("none", ["--dataset", "cifar10"], "--download"),
        ("none", ["--dataset", "cifar100"], "cifar-100-python"),
        (None, ["--dataset", "cifar10-dvs"], "--data-dir"),
        ("missing", ["--dataset", "dvs128-gesture"], "does not exist"),
    ],
)
def test_missing_or_malformed_data_dir(tmp_path, capsys, setup, args, expect):
    root = tmp_path / "data"
    if setup == "none":
        root.mkdir()
    elif setup == "no_val":
        _image_folder(root)
        import shutil

        shutil.rmtree(root / "val")
    elif setup == "empty_class":
        _image_folder(root)
        for f in (root / "val" / "dog").iterdir():
            f.unlink()
    extra = ["--data-dir", root] if setup is not None else []
    assert cli("train", *args, *extra, *FAST, "-o", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "sj-resnet: error:" in err and expect in err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--model", "resnet9000"], "unknown model"),
        (["--lr", "-0.1"], "--lr"),
        (["--surrogate", "banana"], "surrogate"),
        (["--amp", "fp16", "--device", "cpu"], "fp16"),
        (["--sync-bn", "--device", "cpu"], "GPU-only"),
        (["--epochs", "1", "--warmup-epochs", "3"], "warmup"),
    ],
)
def test_bad_options_give_clear_errors(tmp_path, capsys, args, expect):
    assert cli("train", *FAST, *args, "-o", tmp_path / "run") == 2
    assert expect in capsys.readouterr().err


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", *FAST, "-o", run) == 0
    before = (run / "last.pt").read_bytes()
    assert cli("train", *FAST, "-o", run) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before


def test_console_entry_point_runs_as_module(tmp_path):
    proc = run_module("sj_resnet", "train", "--dataset", "fake", "--fake-size", "32", *FAST, "-o", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch   1/1" in proc.stdout
