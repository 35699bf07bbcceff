"""Dependencies by use: the neuron and the models need torch and SpikingJelly only (pyproject.toml).

Importing ``sj_resnet`` or ``sj_resnet.models`` must not import a package of the ``[train]`` extra beyond what
SpikingJelly itself imports, nor the training application.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sj_resnet.cli import TRAIN_PACKAGES

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import spikingjelly.activation_based.functional, spikingjelly.activation_based.neuron
import spikingjelly.activation_based.surrogate
before = set(sys.modules)
import {target} as target
for name in target.__all__:  # the packages import lazily: touch every public name
    getattr(target, name)
json.dump({{"before": sorted(before), "after": sorted(sys.modules)}}, sys.stdout)
"""


def _top(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("target", ["sj_resnet", "sj_resnet.models"])
def test_library_imports_no_training_package(target):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(target=target)], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    mods = json.loads(out)
    added = _top(mods["after"]) - _top(mods["before"])
    assert target.split(".")[0] in added  # the probe sees the import it makes
    assert not added & set(TRAIN_PACKAGES), added & set(TRAIN_PACKAGES)
    assert "sj_resnet.train" not in mods["after"]
    # torch._dynamo costs ~2.5 s to import; only torch.compile should load it (strict_state wraps lazily)
    assert "torch._dynamo" not in mods["after"]


def test_choices_import_no_torch():
    """The lists of choices and the training config are torch-free (``sj-resnet --help`` reads them), and so are
    the ``sj_resnet.neuron`` and ``sj_resnet.models`` packages until a public name is used (PEP 562)."""
    code = ("import sys\n"
            "import sj_resnet.neuron.choices, sj_resnet.models.choices, sj_resnet.train.config\n"
            "print(sorted(m for m in ('torch', 'spikingjelly', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == "[]", out


def test_pyproject_declares_dependencies_by_use():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0] for d in project["dependencies"]}
    assert names == {"torch", "spikingjelly"}
    train = {d.split(">")[0] for d in project["optional-dependencies"]["train"]}
    assert train == set(TRAIN_PACKAGES.values())
    assert "sj-resnet[train]" in project["optional-dependencies"]["dev"]
