"""A model from sj_resnet's zoo in your own PyTorch training loop — no sj-resnet CLI involved.

What it shows, in order:
1. ``create_model("resnet18_cifar", ...)`` trained by a plain loop on static images ``[N, C, H, W]`` under AMP
   (``torch.autocast``: bfloat16 on a CPU, float16 + ``GradScaler`` on a GPU); the membranes stay float32.
2. The same model on event-style input ``[T, N, C, H, W]`` (here: Poisson spike trains of the images, from
   SpikingJelly's ``encoding.PoissonEncoder``), fine-tuned for a few steps.
3. Saving and loading with ``state_dict`` (a rebuilt model gives identical outputs).
4. Swapping the neuron: ``spiking_neuron=`` any SpikingJelly node (``LIFNode``), or ``backend=`` of ours.
5. SpikingJelly's own ``spiking_resnet18(spiking_neuron=DecayFireNode)``.

Data: scikit-learn's 8x8 digits (bundled, no download), fixed stratified 80/20 split.

Run:
    python docs/examples/zoo_in_your_loop.py            # ~1 minute on a laptop CPU
    python docs/examples/zoo_in_your_loop.py --quick    # seconds; accuracy already well above chance (10 %)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from spikingjelly.activation_based import encoding, functional, neuron, surrogate
from spikingjelly.activation_based.model import spiking_resnet
from torch.utils.data import DataLoader, TensorDataset

from sj_resnet import DecayFireNode
from sj_resnet.models import create_model

T = 4
# A narrow ResNet-18 (CIFAR stem) for 8x8 inputs; logits from the mean over time of the pooled features.
ARCH = dict(num_classes=10, in_channels=1, T=T, width=8, readout="mean")
# Neuron arguments (passed through the builder to DecayFireNode): the CLI's digits recipe uses a leak of 0.5, a
# threshold of 1.0 and the ATan surrogate.
NEURON = dict(decay=0.5, v_threshold=1.0, surrogate_function=surrogate.ATan())


def digits_loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's digits as ``[N, 1, 8, 8]`` float images in [0, 1]: (train, test) loaders."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, torch.tensor(y), test_size=0.2, random_state=0, stratify=y)
    return (DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x_te, y_te), batch_size=256))


def to_events(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` intensities in [0, 1] -> Poisson spike trains ``[T, N, C, H, W]`` (what DVS data looks like)."""
    encoder = encoding.PoissonEncoder()
    return torch.stack([encoder(x) for _ in range(T)])


def train_epoch(model, loader, optimizer, device, amp_dtype, scaler, events=False, max_steps=None) -> float:
    model.train()
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(device), y.to(device)
        if events:
            x = to_events(x)
        functional.reset_net(model)  # new batch, new sequence
        with torch.autocast(device.type, dtype=amp_dtype):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # GradScaler is a no-op when disabled (CPU/bfloat16)
        scaler.step(optimizer)
        scaler.update()
    return loss.item()


@torch.no_grad()
def accuracy(model, loader, device, events=False) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        functional.reset_net(model)
        correct += (model(to_events(x) if events else x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs and a few event steps")
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args(argv)
    epochs, event_steps = (2, 10) if args.quick else (args.epochs, 60)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small tensors on a CPU: one thread is fastest
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_loader, test_loader = digits_loaders(batch_size=64)

    # 1. A zoo model in a plain loop, static images, AMP.
    model = create_model("resnet18_cifar", **ARCH, **NEURON).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        loss = train_epoch(model, train_loader, optimizer, device, amp_dtype, scaler)
        scheduler.step()
        print(f"epoch {epoch + 1}/{epochs}  loss {loss:.3f}")
    print(f"static test accuracy: {100 * accuracy(model, test_loader, device):.2f} %")

    # 2. The same model takes [T, N, C, H, W] sequences (T must match model.T); fine-tune it on spike trains.
    train_epoch(model, train_loader, optimizer, device, amp_dtype, scaler, events=True, max_steps=event_steps)
    print(f"event test accuracy: {100 * accuracy(model, test_loader, device, events=True):.2f} %")

    # 3. state_dict round trip: build the same architecture, load, compare outputs.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18_digits.pt")
        torch.save(model.state_dict(), path)
        restored = create_model("resnet18_cifar", **ARCH, **NEURON).to(device)
        restored.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    x = next(iter(test_loader))[0][:16].to(device)
    model.eval(), restored.eval()
    with torch.no_grad():
        functional.reset_net(model), functional.reset_net(restored)
        same = torch.equal(model(x), restored(x))
    print(f"state_dict round trip: identical outputs = {same}")

    # 4. Swap the neuron: any SpikingJelly node class (its kwargs pass through), or another backend of ours.
    lif = create_model("resnet18_cifar", **ARCH, spiking_neuron=neuron.LIFNode, tau=2.0).to(device)
    reference = create_model("resnet18_cifar", **ARCH, **NEURON, backend="reference").to(device)  # the spec, slow
    reference.load_state_dict(model.state_dict())  # same weights, the plain-autograd implementation
    with torch.no_grad():
        for net in (lif, reference):
            net.eval()
            functional.reset_net(net)
        functional.reset_net(model)
        close = torch.allclose(reference(x), model(x), atol=1e-4)
        print(f"LIFNode variant output {tuple(lif(x).shape)}; reference backend matches the fused one = {close}")

    # 5. SpikingJelly's own ResNet-18 with our neuron (multi-step: [T, N, 3, H, W] in, [T, N, classes] out).
    sj_net = spiking_resnet.spiking_resnet18(spiking_neuron=DecayFireNode, num_classes=10).to(device)
    functional.set_step_mode(sj_net, "m")
    with torch.no_grad():
        out = sj_net(torch.rand(T, 2, 3, 32, 32, device=device))
    functional.reset_net(sj_net)
    print(f"SpikingJelly spiking_resnet18 with DecayFireNode: output {tuple(out.shape)}")


if __name__ == "__main__":
    main()
