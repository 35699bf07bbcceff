"""Generate the builders table of docs/models.md (between its ``builders-table`` markers).

``python docs/models_table.py`` prints the table; ``--write`` puts it into docs/models.md; ``--check`` exits 1
when the file's table is stale (``tests/models/test_models_docs.py`` runs the same check).

Parameters: ``sum(p.numel())``. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and linear layers,
2 FLOPs per multiply-add; BN, neurons, pooling and additions are not counted), run on the ``meta`` device so even
ResNet-152 costs no real compute. Dense-equivalent FLOPs: a spiking layer's real work depends on its firing rate.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sj_resnet.models import create_model

DOC = pathlib.Path(__file__).resolve().parent / "models.md"
START, END = "<!-- builders-table:start -->", "<!-- builders-table:end -->"

# builder -> (classes, input size, literature reference for the same architecture family)
ROWS = {
    "resnet18": (1000, 224, "Spiking ResNet-18, ImageNet 62.32 % at T=4 (Fang et al. 2021, SEW ResNet paper)"),
    "resnet34": (1000, 224, "tdBN ResNet-34, ImageNet 63.72 % at T=6 (Zheng et al. 2021)"),
    "resnet50": (1000, 224, ""),
    "resnet101": (1000, 224, ""),
    "resnet152": (1000, 224, ""),
    "resnet19": (10, 32, "tdBN ResNet-19, CIFAR-10 93.16 % at T=6 (Zheng et al. 2021)"),
    "resnet18_cifar": (10, 32, ""),
}


def _gflops(name: str, classes: int, size: int, T: int) -> float:
    with torch.device("meta"):
        model = create_model(name, num_classes=classes, T=T)
        x = torch.empty(1, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return counter.get_total_flops() / 1e9


def builders_table() -> str:
    head = (
        "| builder | classes, input | params | identity-shortcut BN params | GFLOPs per step (T=1) "
        "| GFLOPs, static input, T=4 | literature reference (architecture family) |\n"
        "|---|---|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for name, (classes, size, ref) in ROWS.items():
        with torch.device("meta"):
            model = create_model(name, num_classes=classes)
        params = sum(p.numel() for p in model.parameters())
        id_bn = sum(
            sum(p.numel() for p in b.shortcut.parameters())
            for s in model.stages()
            for b in s
            if isinstance(b.shortcut, nn.BatchNorm2d)
        )
        g1, g4 = _gflops(name, classes, size, 1), _gflops(name, classes, size, 4)
        lines.append(
            f"| `{name}` | {classes}, {size}x{size} | {params / 1e6:.2f} M | {id_bn:,} | {g1:.2f} | {g4:.2f} "
            f"| {ref or '—'} |"
        )
    return "\n".join(lines)


def documented_table(doc: pathlib.Path = DOC) -> str | None:
    """The table currently between the markers of ``doc`` (``None`` without the markers)."""
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), doc.read_text(encoding="utf-8"), re.S)
    return match.group(1).strip() if match else None


def write_table(doc: pathlib.Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    if documented_table(doc) is None:
        raise SystemExit(f"{doc} lacks the {START} ... {END} block")
    new = re.sub(re.escape(START) + r"\n.*?\n" + re.escape(END), lambda _: f"{START}\n{builders_table()}\n{END}",
                 text, flags=re.S)
    doc.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update docs/models.md in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/models.md's table is stale")
    args = parser.parse_args(argv)
    if args.write:
        write_table()
    elif args.check:
        current = documented_table() == builders_table()
        print("docs/models.md builders table is " + ("current" if current else "stale: run with --write"))
        return 0 if current else 1
    else:
        print(builders_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
