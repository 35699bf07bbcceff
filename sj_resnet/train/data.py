"""Datasets and loaders: bundled digits (default), FakeData, CIFAR-10/100, ImageNet folders, DVS event data.

Every builder returns a :class:`DataBundle`. Static images come as ``[C, H, W]`` samples (the model repeats
them over T, direct encoding); event datasets come as ``[T, C, H, W]`` frames and the loader transposes each
batch to ``[T, N, C, H, W]`` (see :func:`to_model_input`). A missing or malformed data directory raises
:class:`DataError` with the layout that was expected and the option that fixes it.

Determinism: the training sampler is a ``DistributedSampler`` (also with one process) seeded by ``--seed``
and the epoch, and able to start mid-epoch (:class:`ResumableSampler`), so a resumed run sees the same
batches in the same order; per-sample augmentation draws from the torch RNG (saved in checkpoints) or, with
``--workers > 0``, from per-epoch worker seeds derived from the same generator.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the split is fixed whatever --seed is, so every run is scored on the same 360 images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(RuntimeError):
    """The dataset cannot be loaded; the message says what was expected and how to fix it."""


@dataclass
class DataBundle:
    """Train/test datasets plus what the model needs to know about them."""

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    sequence: bool  # samples are [T, C, H, W] event frames
    description: str
    train_collate: Callable | None = None  # the training loader's collate_fn (batch augmentation), default_collate


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled)
# --------------------------------------------------------------------------------------------------


class TensorImages(Dataset):
    """In-memory images ``[N, C, H, W]`` with labels; augmentation is a batch transform (:class:`AffineJitter`)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


class AffineJitter:
    """A ``collate_fn`` that stacks a batch and moves every image by its own random affine map, in one warp.

    Per image ``n`` (drawn from the torch RNG: ``rand(N, 2)`` then ``randint(N, 2)``): rotation by
    ``phi ~ U[-rotate, rotate]`` degrees, zoom ``z ~ U[1 - scale, 1 + scale]``, translation by integer pixels
    ``(dy, dx) ~ U{-shift..shift}``. The output is ``out(p) = in(A (p + delta))`` in normalised coordinates, with
    ``A = R(phi) / z`` and ``delta`` the translation (``2 dx / W``, ``2 dy / H``): the rotated, zoomed image moved by
    ``(dy, dx)`` pixels, sampled once (bilinear); pixels from outside the image take the image's minimum (the
    background after normalisation). One ``affine_grid`` + ``grid_sample`` per batch instead of per sample.
    """

    def __init__(self, rotate: float = 0.0, scale: float = 0.0, shift: int = 0) -> None:
        self.rotate = float(rotate)
        self.scale = float(scale)
        self.shift = int(shift)

    @property
    def active(self) -> bool:
        return self.rotate > 0 or self.scale > 0 or self.shift > 0

    def __call__(self, batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(batch)
        return self.warp(x), y

    def warp(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> the same shape, each image moved by its own random map (see the class)."""
        if not self.active:
            return x
        n, _, h, w = x.shape
        u = torch.rand(n, 2, dtype=torch.float64) * 2 - 1
        angle = u[:, 0] * math.radians(self.rotate)
        zoom = 1.0 + self.scale * u[:, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [N, 2, 2], (x, y) order
        d = torch.randint(-self.shift, self.shift + 1, (n, 2)).to(torch.float64)  # (dy, dx) pixels
        delta = torch.stack([2.0 * d[:, 1] / w, 2.0 * d[:, 0] / h], -1)  # normalised (x, y)
        theta = torch.cat([a, (a @ delta[:, :, None])], -1).to(x.dtype)  # [N, 2, 3]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        bg = x.amin(dim=(1, 2, 3), keepdim=True)
        return F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg


def digits(image_size: int = 16, augment: bool = True, max_shift: int | None = None, rotate: float = 0.0,
           scale: float = 0.0) -> DataBundle:
    """scikit-learn's 1797 handwritten digits (8x8, 0..16), bilinearly upsampled to ``image_size``.

    Fixed stratified 80/20 split (``random_state=0``): 1437 train / 360 test images; standardised with the
    training set's mean and std. Augmentation (:class:`AffineJitter`, per sample, applied to the batch): random
    translation by up to ``max_shift`` pixels (default ``max(1, image_size // 8)``: 1 pixel at the training
    default 12x12, 2 pixels at 16x16), rotation by up to ``rotate`` degrees and zoom by up to ``scale``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(y, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=DIGITS_TEST_FRACTION, stratify=y.numpy(),
        random_state=DIGITS_SPLIT_SEED,
    )
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    shift = (max(1, image_size // 8) if max_shift is None else int(max_shift)) if augment else 0
    jitter = AffineJitter(rotate if augment else 0.0, scale if augment else 0.0, shift)
    return DataBundle(
        train=TensorImages(x[idx_train], y[idx_train]),
        test=TensorImages(x[idx_test], y[idx_test]),
        num_classes=10,
        in_channels=1,
        sequence=False,
        description=(
            f"digits (sklearn, 8x8 -> {image_size}x{image_size}): {len(idx_train)} train / {len(idx_test)} test"
        ),
        train_collate=jitter if jitter.active else None,
    )


# --------------------------------------------------------------------------------------------------
# torchvision datasets
# --------------------------------------------------------------------------------------------------


def fake(size: int, image_size: int, num_classes: int = 10) -> DataBundle:
    """torchvision ``FakeData`` (random images, random labels) for smoke tests; a test set a quarter as large."""
    from torchvision import datasets, transforms

    tf = transforms.ToTensor()
    shape = (3, image_size, image_size)
    test_size = max(32, size // 4)
    return DataBundle(
        train=datasets.FakeData(size, shape, num_classes, transform=tf, random_offset=0),
        test=datasets.FakeData(test_size, shape, num_classes, transform=tf, random_offset=size),
        num_classes=num_classes,
        in_channels=3,
        sequence=False,
        description=f"FakeData {shape}: {size} train / {test_size} test",
    )


def cifar(name: str, root: str, download: bool, augment: bool) -> DataBundle:
    """CIFAR-10/100 from torchvision: RandomCrop(32, 4) + flip for training, per-channel normalisation."""
    from torchvision import datasets, transforms

    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    if not download and not (Path(root) / folder).is_dir():
        raise DataError(
            f"{name}: expected the extracted python version at {Path(root) / folder}/ (as torchvision writes it). "
            f"Pass --download to fetch it into --data-dir {root}, or point --data-dir at the folder that contains "
            f"{folder}/."
        )
    mean, std = CIFAR_STATS[name]
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_tf = transforms.Compose(
        ([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []) + norm
    )
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(root, train=True, download=download, transform=train_tf)
        test = cls(root, train=False, download=download, transform=transforms.Compose(norm))
    except RuntimeError as exc:
        raise DataError(f"{name} under {root} could not be read ({exc}); re-download with --download") from exc
    n_cls = 10 if name == "cifar10" else 100
    return DataBundle(train, test, n_cls, 3, False, f"{name}: {len(train)} train / {len(test)} test")


def _check_image_folder(path: Path, split: str) -> list[str]:
    if not path.is_dir():
        raise DataError(
            f"imagenet: expected an ImageFolder directory {path}/ ({split} split) with one sub-folder per class "
            f"holding the images, i.e. --data-dir ROOT with ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG"
        )
    classes = sorted(d.name for d in os.scandir(path) if d.is_dir())
    if not classes:
        raise DataError(
            f"imagenet: {path}/ has no class sub-folders; expected {path}/<class>/<image> (val images sorted "
            "into class folders, e.g. with the usual valprep.sh)"
        )
    for c in classes:
        if not any(f.name.lower().endswith(IMAGE_EXTENSIONS) for f in os.scandir(path / c) if f.is_file()):
            raise DataError(f"imagenet: class folder {path / c}/ holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes


def imagenet(root: str, image_size: int, augment: bool) -> DataBundle:
    """ImageNet-style folders ``ROOT/train/<class>/`` and ``ROOT/val/<class>/`` (torchvision ``ImageFolder``).

    Training: RandomResizedCrop(image_size) + horizontal flip; evaluation: Resize(image_size / 0.875) +
    CenterCrop(image_size); ImageNet mean/std normalisation.
    """
    from torchvision import datasets, transforms

    base = Path(root)
    train_classes = _check_image_folder(base / "train", "training")
    val_classes = _check_image_folder(base / "val", "validation")
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))[:5]
        raise DataError(
            f"imagenet: train/ has {len(train_classes)} classes but val/ has {len(val_classes)} "
            f"(e.g. {', '.join(only)} in only one); both must have the same class folders"
        )
    norm = [transforms.ToTensor(), transforms.Normalize(*IMAGENET_STATS)]
    if augment:
        train_tf = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        train_tf = [transforms.Resize(int(round(image_size / 0.875))), transforms.CenterCrop(image_size)]
    test_tf = [transforms.Resize(int(round(image_size / 0.875))), transforms.CenterCrop(image_size)]
    train = datasets.ImageFolder(str(base / "train"), transform=transforms.Compose(train_tf + norm))
    test = datasets.ImageFolder(str(base / "val"), transform=transforms.Compose(test_tf + norm))
    return DataBundle(train, test, len(train_classes), 3, False,
                      f"imagenet folders {root}: {len(train)} train / {len(test)} val, {len(train_classes)} classes")


# --------------------------------------------------------------------------------------------------
# event data (SpikingJelly)
# --------------------------------------------------------------------------------------------------


class FrameResize:
    """``[T, C, H, W]`` numpy/tensor event frames -> float tensor resized to ``size`` (area interpolation)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, frames: Any) -> Tensor:
        x = torch.as_tensor(frames, dtype=torch.float32)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return x


def event(name: str, root: str | None, T: int, image_size: int) -> DataBundle:
    """CIFAR10-DVS (TEBN split: 900 train / 100 test per class) or DVS128 Gesture, integrated by SpikingJelly into
    ``T`` frames each holding the same number of events (``split_by='number'``), resized to ``image_size``."""
    if root is None:
        raise DataError(f"{name}: pass --data-dir, the SpikingJelly dataset root (it holds download/ or extract/)")
    path = Path(root)
    if not path.is_dir():
        raise DataError(
            f"{name}: --data-dir {root} does not exist; expected SpikingJelly's dataset root, holding download/ "
            "with the original archive(s) (SpikingJelly extracts and integrates them on first use)"
        )
    from spikingjelly import datasets as sjd

    if name == "cifar10-dvs":
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVSTEBNSplit as cls
        n_cls = 10
    else:
        cls = sjd.DVS128Gesture
        n_cls = 11
    tf = FrameResize(image_size)
    try:
        train = cls(str(path), train=True, data_type="frame", frames_number=T, split_by="number", transform=tf)
        test = cls(str(path), train=False, data_type="frame", frames_number=T, split_by="number", transform=tf)
    except Exception as exc:  # SpikingJelly raises several types for missing/partial data
        raise DataError(
            f"{name}: SpikingJelly could not prepare the data under {root}: {exc}. Expected {root}/download/ with "
            "the original archive(s) (see the SpikingJelly dataset docs for the file names), or an already "
            f"integrated {root}/frames_number_{T}_split_by_number/ folder."
        ) from exc
    return DataBundle(train, test, n_cls, 2, True,
                      f"{name} ({T} frames, {image_size}x{image_size}): {len(train)} train / {len(test)} test")


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------


def build_datasets(cfg) -> DataBundle:
    """The :class:`DataBundle` for ``cfg.dataset`` (raises :class:`DataError` naming the expected layout)."""
    name = cfg.dataset
    if name == "digits":
        return digits(cfg.image_size or 16, cfg.augment, cfg.max_shift, cfg.max_rotate, cfg.max_scale)
    if name == "fake":
        return fake(cfg.fake_size, cfg.image_size or 32)
    if name in ("cifar10", "cifar100"):
        return cifar(name, cfg.data_dir or "./data", cfg.download, cfg.augment)
    if name == "imagenet":
        if cfg.data_dir is None:
            raise DataError("imagenet: pass --data-dir ROOT with ROOT/train/<class>/ and ROOT/val/<class>/ folders")
        return imagenet(cfg.data_dir, cfg.image_size or 224, cfg.augment)
    if name in ("cifar10-dvs", "dvs128-gesture"):
        if cfg.download:
            raise DataError(f"{name}: --download is not supported; SpikingJelly fetches what it can on first use")
        return event(name, cfg.data_dir, cfg.T, cfg.image_size or (48 if name == "cifar10-dvs" else 64))
    raise DataError(f"unknown dataset {name!r}")


def to_model_input(x: Tensor, sequence: bool) -> Tensor:
    """A batch from the loader -> the model's input: ``[N, C, H, W]``, or ``[T, N, C, H, W]`` for event frames."""
    return x.transpose(0, 1).contiguous() if sequence else x


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, ``set_epoch``) that can skip the first samples of an epoch.

    Used with one process too, so single- and multi-process runs share one sampling rule. ``set_start(k)`` makes
    the current epoch start at this rank's ``k``-th index (mid-epoch resume after Ctrl-C).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``k`` takes indices ``r, r+k, ...`` (no padding: no sample counts twice)."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, n, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def build_loaders(bundle: DataBundle, cfg, rank: int, world_size: int, pin_memory: bool):
    """``(train_loader, test_loader, train_sampler)``; the caller sets epoch and start, and seeds ``.generator``."""
    sampler = ResumableSampler(bundle.train, world_size, rank, seed=cfg.seed, shuffle=True)
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    common = {"num_workers": cfg.workers, "pin_memory": pin_memory, "worker_init_fn": _seed_worker,
              "persistent_workers": False}
    train = DataLoader(bundle.train, batch_size=cfg.batch_size, sampler=sampler, generator=gen,
                       collate_fn=bundle.train_collate, **common)
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    # its own generator: an evaluation draws nothing from the global torch RNG that the training augmentation uses,
    # so when and how often a run evaluates (--eval-every) does not change its training
    test_gen = torch.Generator()
    test_gen.manual_seed(cfg.seed)
    test = DataLoader(bundle.test, batch_size=eval_bs, sampler=ShardSampler(len(bundle.test), world_size, rank),
                      generator=test_gen, **common)
    return train, test, sampler
