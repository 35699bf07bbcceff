"""Batch augmentation of the digits data (``AffineJitter``): geometry, background, determinism, loader wiring."""

from __future__ import annotations

import math

import pytest
import torch

from sj_resnet.train.data import AffineJitter, digits


def _blob(n: int, size: int, at: tuple[float, float]) -> torch.Tensor:
    """``n`` images holding one Gaussian blob at pixel ``at = (row, col)`` on a background of -1."""
    r = torch.arange(size, dtype=torch.float32)
    g = torch.exp(-((r[:, None] - at[0]) ** 2 + (r[None, :] - at[1]) ** 2) / (2 * 0.8**2))
    return (g * 3.0 - 1.0).expand(n, 1, size, size).contiguous()


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    w = img[0] - img[0].min()
    r = torch.arange(img.shape[-1], dtype=torch.float32)
    total = float(w.sum())
    return float((w.sum(1) * r).sum()) / total, float((w.sum(0) * r).sum()) / total


def test_inactive_jitter_is_the_identity_and_digits_without_augment_has_none():
    x = torch.randn(4, 1, 12, 12)
    assert not AffineJitter().active
    assert AffineJitter().warp(x) is x
    assert digits(12, augment=False).train_collate is None
    assert isinstance(digits(12, augment=True, rotate=10.0).train_collate, AffineJitter)


def test_each_image_moves_by_its_own_rotation_zoom_and_shift():
    """The blob's centre lands where the drawn map puts it: ``z R(-phi) q - (dy, dx)`` around the image centre."""
    n, size, shift, rotate, scale = 64, 24, 2, 30.0, 0.2
    c = (size - 1) / 2  # the image centre, 11.5
    q = (-3.0, 2.5)  # the blob's (row, col) offset from the centre; it never reaches the border
    x = _blob(n, size, (c + q[0], c + q[1]))
    torch.manual_seed(3)
    out = AffineJitter(rotate, scale, shift).warp(x)
    torch.manual_seed(3)  # the documented draws: rand(N, 2) in float64, then randint(N, 2)
    u = torch.rand(n, 2, dtype=torch.float64) * 2 - 1
    d = torch.randint(-shift, shift + 1, (n, 2))
    assert len({tuple(v) for v in d.tolist()}) > 5  # the shifts vary per image
    for i in range(n):
        phi, z = math.radians(rotate) * float(u[i, 0]), 1.0 + scale * float(u[i, 1])
        # out(p) = in(A (p + delta)), A = R(phi) / z in (x, y) = (col, row) coordinates
        qx, qy = q[1], q[0]
        px = z * (math.cos(phi) * qx + math.sin(phi) * qy) - float(d[i, 1])
        py = z * (-math.sin(phi) * qx + math.cos(phi) * qy) - float(d[i, 0])
        row, col = _centroid(out[i])
        assert abs(row - (c + py)) < 0.1 and abs(col - (c + px)) < 0.1, (i, row, col, py, px)


def test_pure_shift_is_a_whole_pixel_translation_with_background_fill():
    x = torch.randn(32, 1, 12, 12)
    torch.manual_seed(0)
    out = AffineJitter(shift=1).warp(x)
    for i in range(32):
        bg = float(x[i].min())
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1), value=bg)
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.allclose(out[i], padded[:, dy:dy + 12, dx:dx + 12], atol=1e-5)]
        assert len(matches) == 1, (i, matches)


def test_a_flat_image_stays_flat_and_draws_follow_the_seed():
    flat = torch.full((8, 1, 12, 12), -0.7)
    jitter = AffineJitter(10.0, 0.1, 1)
    torch.testing.assert_close(jitter.warp(flat), flat)
    x = torch.randn(8, 1, 12, 12)
    torch.manual_seed(5)
    a = jitter.warp(x)
    torch.manual_seed(5)
    assert torch.equal(a, jitter.warp(x))
    assert not torch.equal(a, jitter.warp(x))


@pytest.mark.parametrize("augment", [True, False])
def test_digits_loader_augments_training_batches_only(augment):
    from types import SimpleNamespace

    from sj_resnet.train.data import build_loaders

    bundle = digits(12, augment=augment, rotate=10.0, scale=0.1)
    cfg = SimpleNamespace(seed=0, workers=0, batch_size=16, eval_batch_size=None)
    train, test, sampler = build_loaders(bundle, cfg, rank=0, world_size=1, pin_memory=False)
    sampler.set_epoch(0)
    x, y = next(iter(train))
    idx = list(iter(sampler))[:16]
    raw = torch.stack([bundle.train[i][0] for i in idx])
    assert x.shape == raw.shape and torch.equal(y, torch.tensor([bundle.train[i][1] for i in idx]))
    assert torch.equal(x, raw) != augment
    xt, _ = next(iter(test))
    assert torch.equal(xt, torch.stack([bundle.test[i][0] for i in range(xt.shape[0])]))
