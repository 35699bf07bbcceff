"""Every script in docs/examples runs in its ``--quick`` mode, exactly as a user would start it, and what it
prints is checked: accuracy above chance, the DQN learning above a random policy, the round trips and the backend
correctness checks passing — not only the exit status.

The scripts run in this process (``runpy`` with ``__name__ == "__main__"`` and a patched ``sys.argv``) so torch and
SpikingJelly are imported once for all of them; they set one torch thread, which ``one_torch_thread`` restores.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CHANCE_DIGITS = 10.0  # % accuracy of guessing among 10 classes
RANDOM_CARTPOLE = 22.0  # mean return of a uniformly random policy on CartPole-v1


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op torch thread (tests/conftest.py), restored after each script."""


def run_example(name: str, monkeypatch, capsys, *args: str) -> str:
    """Run ``docs/examples/<name> --quick *args`` as ``__main__`` and return what it printed."""
    path = EXAMPLES / name
    monkeypatch.setattr(sys, "argv", [str(path), "--quick", *args])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    sys.stdout.write(out)  # shown by pytest -s or on failure
    return out


def number(pattern: str, text: str) -> float:
    """The float captured by ``pattern`` in ``text``; fails the test with the text if the line is missing."""
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in the output:\n{text}"
    return float(match.group(1))


def test_every_example_has_a_test():
    tested = {"custom_network.py", "zoo_in_your_loop.py", "compare_backends.py", "spiking_dqn.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_custom_network(monkeypatch, capsys):
    out = run_example("custom_network.py", monkeypatch, capsys)
    assert number(r"test accuracy: ([\d.]+) %", out) > 5 * CHANCE_DIGITS
    # OutputMonitor saw both spiking layers, and both fire but not always.
    rates = [float(r) for r in re.findall(r"firing rate features\.\d+: ([\d.]+)", out)]
    assert len(rates) == 2 and all(0.0 < r < 1.0 for r in rates), out
    assert 0.0 < number(r"learned decay of features\.6: mean ([\d.]+)", out) < 1.0


def test_zoo_in_your_loop(monkeypatch, capsys):
    out = run_example("zoo_in_your_loop.py", monkeypatch, capsys)
    assert number(r"static test accuracy: ([\d.]+) %", out) > 4 * CHANCE_DIGITS
    assert number(r"event test accuracy: ([\d.]+) %", out) > 3 * CHANCE_DIGITS
    assert "state_dict round trip: identical outputs = True" in out
    assert "LIFNode variant output (16, 10); reference backend matches the fused one = True" in out
    assert "spiking_resnet18 with DecayFireNode: output (4, 2, 10)" in out


def test_compare_backends(monkeypatch, capsys):
    out = run_example("compare_backends.py", monkeypatch, capsys, "--device", "cpu")
    for label in ("ours torch", "ours reference", "SJ LIFNode"):
        assert re.search(rf"check {label} +spikes equal: True, .* OK", out), out
        ms = number(rf"\n{label} +([\d.]+) ", out)  # the timing table has a row with a positive time
        assert ms > 0
    assert "FAIL" not in out


def test_spiking_dqn(monkeypatch, capsys, tmp_path):
    plot = tmp_path / "returns.png"
    out = run_example("spiking_dqn.py", monkeypatch, capsys, "--plot", str(plot))
    assert number(r"final greedy mean return: ([\d.]+)", out) > 3 * RANDOM_CARTPOLE
    assert plot.stat().st_size > 1000  # the return-vs-episode plot was written
