"""Random-shift augmentation: a translation with edge padding, per sample and camera, shared by frames."""

import pytest
import torch

from fastwam.config import preset
from fastwam.data.augment import random_shift


def frames(b=3, t=3, h=12, w=24):
    return torch.randn(b, t, 3, h, w)


def offsets_of(x, y, pad, cameras):
    """The (dy, dx) in [-pad, pad] per (sample, camera) for which y's tile interior equals x's shifted tile."""
    b, t, c, h, w = x.shape
    tile = w // cameras
    found = {}
    for i in range(b):
        for k in range(cameras):
            xs, ys = x[i, ..., k * tile:(k + 1) * tile], y[i, ..., k * tile:(k + 1) * tile]
            inner = ys[..., pad:h - pad, pad:tile - pad]
            hits = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                    if torch.equal(inner, xs[..., pad + dy:h - pad + dy, pad + dx:tile - pad + dx])]
            assert len(hits) == 1, f"sample {i} camera {k}: not a single translation of the input ({hits})"
            found[i, k] = hits[0]
    return found


def test_each_camera_tile_is_a_translation_shared_by_all_frames():
    x = frames()
    y = random_shift(x, 2, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    found = offsets_of(x, y, 2, 2)  # the comparison spans every frame, so the shift is shared by them
    assert len(set(found.values())) > 1  # offsets are drawn per sample and camera


def test_padding_repeats_the_edge_and_never_crosses_into_the_next_camera():
    x = torch.zeros(1, 1, 3, 8, 16)
    x[..., :8] = 1.0  # left camera white, right camera black
    for seed in range(10):
        y = random_shift(x, 3, 2, torch.Generator().manual_seed(seed))
        assert torch.equal(y[..., :8], x[..., :8]) and torch.equal(y[..., 8:], x[..., 8:])


def test_zero_pad_is_the_identity_and_the_generator_decides():
    x = frames()
    assert random_shift(x, 0, 1, torch.Generator()) is x
    a = random_shift(x, 3, 1, torch.Generator().manual_seed(5))
    b = random_shift(x, 3, 1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape, pad, cameras, match", [
    ((2, 3, 12, 24), 2, 1, r"expected \(B, T, 3, H, W\), got \(2, 3, 12, 24\)"),
    ((1, 2, 3, 12, 25), 2, 2, "width 25 does not split into 2 camera"),
    ((1, 2, 3, 12, 24), 12, 2, r"pad must be in \[0, 12\)"),
])
def test_bad_input_is_named(shape, pad, cameras, match):
    with pytest.raises(ValueError, match=match):
        random_shift(torch.zeros(shape), pad, cameras, torch.Generator())


def test_config_rejects_a_shift_the_codec_or_image_cannot_take():
    cfg = preset("small")
    with pytest.raises(ValueError, match=r"train.augment_shift must be in \[0, 32\)"):
        cfg.replace(train=cfg.train.__class__(augment_shift=32))
    wan = preset("wan22-5b")
    with pytest.raises(ValueError, match="needs the patch codec"):
        wan.replace(train=wan.train.__class__(augment_shift=4))
