"""Options are checked up front: non-finite and out-of-range values, seeds, `--help` defaults (without torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import REPO, cli, subprocess_env

from sj_resnet.train import config as cfgmod


@pytest.mark.parametrize(
    ("explicit", "match"),
    [
        ({"clip_grad": float("nan")}, "--clip-grad must be a finite number"),
        ({"lr": float("inf")}, "--lr must be a finite number"),
        ({"min_lr": float("nan")}, "--min-lr must be a finite number"),
        ({"v_threshold": float("nan")}, "--v-threshold must be a finite number"),
        ({"v_threshold": float("-inf")}, "--v-threshold must be a finite number"),
        ({"v_threshold": 0.0}, "--v-threshold must be > 0"),
        ({"decay": float("nan")}, "--decay"),
        ({"label_smoothing": float("nan")}, "--label-smoothing must be a finite number"),
        ({"tet_means": float("nan")}, "--tet-means must be a finite number"),
        ({"wd": float("inf")}, "--wd must be a finite number"),
        ({"max_scale": 1.0}, r"--max-scale must be in \[0, 1\)"),
        ({"max_scale": 5.0}, r"--max-scale must be in \[0, 1\)"),
        ({"max_rotate": 720.0}, "--max-rotate"),
        ({"momentum": 1.0}, r"--momentum must be in \[0, 1\)"),
        ({"momentum": 1.5}, "--momentum"),
        ({"lr": 0.01, "min_lr": 0.1}, "--min-lr .* exceeds --lr"),
        ({"surrogate": "atan:nan"}, "alpha must be a finite number"),
        ({"surrogate": "atan:inf"}, "alpha must be a finite number"),
        ({"seed": 2**32}, r"--seed must be an integer in \[0, 2\*\*32\)"),
        ({"seed": 2**32 + 7}, "--seed"),
        ({"seed": -1}, "--seed"),
        ({"image_size": 100000}, "--image-size 100000 is too large"),
        ({"dataset": "fake", "image_size": 100000}, "--image-size 100000 is too large"),
    ],
)
def test_bad_values_are_refused_up_front(explicit, match):
    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.resolve(explicit)


def test_edge_values_that_are_fine_pass():
    cfgmod.resolve({"seed": 2**32 - 1, "momentum": 0.0, "min_lr": 3e-3, "max_scale": 0.99, "image_size": 256})
    cfgmod.resolve({"surrogate": "atan:2.5", "clip_grad": 1.0, "label_smoothing": 0.0})


def test_non_finite_options_fail_on_the_command_line_without_a_run_folder(tmp_path, capsys):
    for args in (["--clip-grad", "nan"], ["--lr", "inf"], ["--min-lr", "nan"], ["--v-threshold", "nan"],
                 ["--seed", str(2**32)], ["--image-size", "100000"]):
        assert cli("train", *args, "-o", tmp_path / "run") == 2, args
        err = capsys.readouterr().err
        assert err.startswith("sj-resnet: error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


def test_resume_and_eval_take_data_location_only_from_the_command_line():
    """A checkpoint's data_dir / download never reach the run (a crafted file must not pick paths or download)."""
    stored = cfgmod.resolve({"dataset": "cifar10"}).to_dict()
    stored.update(data_dir="/somewhere/else", download=True)
    cfg = cfgmod.resolve({}, stored)
    assert cfg.data_dir is None and cfg.download is False
    cfg = cfgmod.resolve({"data_dir": "/mine", "download": True}, stored)
    assert cfg.data_dir == "/mine" and cfg.download is True


def _help_text(*args: str) -> str:
    code = (
        "import sys\n"
        "from sj_resnet.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'spikingjelly', 'numpy') if m in sys.modules)\n"
        "print('HEAVY:', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("args", [["train", "--help"], ["eval", "--help"], ["--help"]])
def test_help_imports_no_torch(args):
    out = _help_text(*args)
    assert "usage: sj-resnet" in out
    assert "HEAVY: []" in out, out.splitlines()[-1]


def test_help_shows_the_defaults_the_command_uses():
    """Every option's help states, for the default dataset, the value ``resolve({})`` really uses."""
    from sj_resnet.cli import _fmt_value, build_parser

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    used = cfgmod.resolve({}).to_dict()
    checked = 0
    for action in train._actions:
        if action.dest not in used or action.help is None or "(default: " not in action.help:
            continue
        note = action.help.split("(default: ", 1)[1]
        assert note.startswith(f"{_fmt_value(used[action.dest])} for digits") or (
            ";" not in note and note.startswith(_fmt_value(used[action.dest]) + ")")), (action.dest, action.help)
        assert action.help.count("(default") == 1, action.help  # no stale hand-written default besides
        checked += 1
    assert checked >= 30
    text = train.format_help()
    assert "--decay DECAY" in text
    decay_help = next(a.help for a in train._actions if a.dest == "decay")
    assert "0.5 for digits" in decay_help and "0.25 for" in decay_help
    vth_help = next(a.help for a in train._actions if a.dest == "v_threshold")
    assert "1 for digits" in vth_help and "0.5 for" in vth_help
