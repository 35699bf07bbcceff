"""sj_resnet's neurons inside your own SpikingJelly network: a small spiking conv net trained on the digits.

What it shows:
* ``DecayFireNode`` (fixed decay) and ``ParametricDecayFireNode`` (a learnable decay per channel) used exactly like
  SpikingJelly's own nodes, between ``layer.Conv2d`` / ``layer.BatchNorm2d`` / ``layer.MaxPool2d`` layers;
* multi-step mode for the whole net (``functional.set_step_mode(net, "m")``: every layer takes ``[T, N, ...]``),
  ``functional.reset_net`` before every batch;
* per-layer firing rates read with SpikingJelly's own ``monitor.OutputMonitor``.

Data: scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn, no download), a fixed
stratified 80/20 split. Each static image is fed at every one of ``T`` steps (direct encoding); the class scores
are the mean over time of the last layer's output.

Run:
    python docs/examples/custom_network.py            # ~1 minute on a laptop CPU, ~97-98 % test accuracy
    python docs/examples/custom_network.py --quick    # a few seconds, well above chance (10 %)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from spikingjelly.activation_based import functional, layer, monitor
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sj_resnet import DecayFireNode, ParametricDecayFireNode


def digits_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's digits as ``[N, 1, 8, 8]`` float images in [0, 1] with integer labels: (train, test)."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x_te, y_te), batch_size=512))


class SpikingConvNet(nn.Module):
    """``[N, 1, 8, 8]`` image -> ``[N, 10]`` scores via ``T`` steps of a two-stage spiking conv net."""

    def __init__(self, T: int = 4, channels: int = 16) -> None:
        super().__init__()
        self.T = T
        c = channels
        self.features = nn.Sequential(
            layer.Conv2d(1, c, 3, padding=1, bias=False),
            layer.BatchNorm2d(c),
            DecayFireNode(decay=0.25, v_threshold=0.5),  # STBP neuron, fused backend chosen automatically
            layer.MaxPool2d(2),  # 8x8 -> 4x4
            layer.Conv2d(c, 2 * c, 3, padding=1, bias=False),
            layer.BatchNorm2d(2 * c),
            ParametricDecayFireNode(init_decay=0.25, num_channels=2 * c),  # learnable decay per channel
            layer.MaxPool2d(2),  # 4x4 -> 2x2
            layer.Flatten(),
            layer.Linear(2 * c * 4, 10),
        )
        functional.set_step_mode(self, "m")  # every layer and node now takes [T, N, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [T, N, 1, 8, 8]: the image at every step
        return self.features(x_seq).mean(0)  # mean over time of the readout


@torch.no_grad()
def accuracy(net: nn.Module, loader: DataLoader) -> float:
    net.eval()
    correct = total = 0
    for x, y in loader:
        functional.reset_net(net)
        correct += (net(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 epochs instead of 30")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = 3 if args.quick else args.epochs
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny tensors: extra threads only add synchronisation

    train_loader, test_loader = digits_loaders(batch_size=64)
    net = SpikingConvNet(T=args.T)
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=epochs * len(train_loader))

    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        for x, y in train_loader:
            functional.reset_net(net)  # a new batch is a new sequence: clear every membrane
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # BPTT through the fused neuron op, surrogate gradients at the spikes
            optimizer.step()
            scheduler.step()
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {loss.item():.3f}  {time.perf_counter() - start:5.1f} s")

    print(f"test accuracy: {100 * accuracy(net, test_loader):.2f} %")

    # Firing rates: SpikingJelly's OutputMonitor records every spiking node's output on each forward.
    spiking = (DecayFireNode, ParametricDecayFireNode)
    rates = monitor.OutputMonitor(net, instance=spiking, function_on_output=lambda s: s.mean().item())
    accuracy(net, test_loader)  # one pass over the test set with the monitor attached
    for name in rates.monitored_layers:
        values = rates[name]
        print(f"firing rate {name}: {sum(values) / len(values):.3f}")
    rates.remove_hooks()
    decay = net.features[6].decay  # the learned per-channel decay of the parametric node
    print(f"learned decay of features.6: mean {decay.mean().item():.3f}, range "
          f"[{decay.min().item():.3f}, {decay.max().item():.3f}]")


if __name__ == "__main__":
    main()
