"""Contracts for MaskFeat mask generation (pretrain/masking.py)."""

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.masking import CubeMaskGenerator, upsample_mask


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _sequential_reference(rng, grid=(8, 7, 7), budget=157, min_area=9, max_area=49):
    """The reference cube masking rules (SlowFast MaskingGenerator3D), one try at a time in plain Python (the reference
    algorithm's structure), to compare distributions with the batched generator."""
    T, H, W = grid
    mask = np.zeros(grid, dtype=bool)
    count = 0
    log_lo, log_hi = math.log(0.3), math.log(1 / 0.3)
    while count < budget:
        added = 0
        for _ in range(100):
            area = rng.uniform(min_area, max_area)
            r = math.exp(rng.uniform(log_lo, log_hi))
            h, w, t = round(math.sqrt(area * r)), round(math.sqrt(area / r)), rng.randint(1, T)
            if h < H and w < W:
                y, x, f = rng.randint(0, H - h), rng.randint(0, W - w), rng.randint(0, T - t)
                box = mask[f : f + t, y : y + h, x : x + w]
                new = box.size - int(box.sum())
                if 0 < new <= budget - count:
                    box[...] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask


def test_defaults_match_reference_statistics():
    gen = CubeMaskGenerator()
    assert gen.budget == 157  # round(0.4 * 392)
    masks = gen(256, _seeded(0))
    assert masks.shape == (256, 8, 7, 7) and masks.dtype == torch.bool
    counts = masks.flatten(1).sum(1).float()
    assert 0.39 <= counts.mean().item() / 392 <= 0.40
    # The reference (200 draws): mean 155.7, min 150, max 157. The mean of 256
    # draws has a standard deviation of about 0.1 units.
    assert 155.0 <= counts.mean().item() <= 156.4
    assert counts.max().item() == 157 and counts.min().item() >= 140
    assert (counts > 0).all()


def test_batched_generator_matches_sequential_reference_distribution():
    ours = CubeMaskGenerator()(400, _seeded(1)).flatten(1).sum(1).double()
    rng = random.Random(1)
    ref = torch.tensor([float(_sequential_reference(rng).sum()) for _ in range(400)])
    # Count std is ~1.63 units: the difference of two 400-draw means has std ~0.12.
    assert abs(ours.mean() - ref.mean()) < 0.6
    # About 36% of draws reach the budget exactly; std of the difference ~0.034.
    assert abs((ours == 157).double().mean() - (ref == 157).double().mean()) < 0.15


def _reachable_block_sizes(min_area=9, max_area=49, aspect=(0.3, 1 / 0.3)):
    areas = np.linspace(min_area, max_area, 801)
    ratios = np.exp(np.linspace(math.log(aspect[0]), math.log(aspect[1]), 801))
    a, r = np.meshgrid(areas, ratios)
    bh = np.round(np.sqrt(a * r)).astype(int).ravel()
    bw = np.round(np.sqrt(a / r)).astype(int).ravel()
    return set(zip(bh, bw))


def test_blocks_respect_size_rules_and_explain_the_mask():
    gen = CubeMaskGenerator()
    masks, blocks = gen(64, _seeded(2), return_blocks=True)
    reachable = _reachable_block_sizes()
    for mask, placed in zip(masks, blocks):
        assert placed, "every mask has at least one block"
        replay = torch.zeros(8, 7, 7, dtype=torch.bool)
        for front, top, left, bt, bh, bw, new in placed:
            assert 1 <= bt <= 8 and bh < 7 and bw < 7 and (bh, bw) in reachable
            assert front + bt <= 8 and top + bh <= 7 and left + bw <= 7
            box = torch.zeros_like(replay)
            box[front : front + bt, top : top + bh, left : left + bw] = True
            # Each block adds between 1 and the remaining budget new units.
            assert new == int((box & ~replay).sum()) >= 1
            replay |= box
        assert torch.equal(replay, mask)
        assert sum(b[-1] for b in placed) == int(mask.sum()) <= 157


def test_seed_reproducible_and_seeds_differ():
    gen = CubeMaskGenerator()
    a, b, c = gen(8, _seeded(3)), gen(8, _seeded(3)), gen(8, _seeded(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 8))  # samples differ
    torch.manual_seed(0)
    assert gen(2).shape == (2, 8, 7, 7)  # global RNG when no generator is given


def test_tube_mode_is_constant_over_time():
    gen = CubeMaskGenerator(mode="tube")
    assert gen.budget == 20  # round(0.4 * 49) per time step
    masks, blocks = gen(200, _seeded(5), return_blocks=True)
    assert torch.equal(masks, masks[:, :1].expand_as(masks))
    per_frame = masks[:, 0].flatten(1).sum(1).float()
    assert per_frame.max() <= 20 and per_frame.min() > 0
    assert 0.37 <= per_frame.mean().item() / 49 <= 0.41
    assert all(b[3] == 1 for placed in blocks for b in placed)  # 2-D blocks


def test_random_mode_masks_exactly_the_budget():
    gen = CubeMaskGenerator(mode="random")
    masks = gen(500, _seeded(6))
    assert (masks.flatten(1).sum(1) == 157).all()
    assert not torch.equal(masks[0], masks[1])
    freq = masks.float().mean(0)  # each unit masked with probability 157/392
    assert (freq - 157 / 392).abs().max() < 0.1


def test_other_grids_and_ratios():
    gen = CubeMaskGenerator(grid=(4, 14, 14), mask_ratio=0.75)
    masks = gen(16, _seeded(7))
    assert masks.shape == (16, 4, 14, 14)
    assert (masks.flatten(1).sum(1) <= gen.budget).all() and gen.budget == round(0.75 * 784)
    assert masks.flatten(1).sum(1).float().mean() > 0.9 * gen.budget
    assert not CubeMaskGenerator(mask_ratio=0.0)(4).any()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mode"):
        CubeMaskGenerator(mode="blocks")
    with pytest.raises(ValueError, match="mask_ratio"):
        CubeMaskGenerator(mask_ratio=1.5)
    with pytest.raises(ValueError, match="min_area"):
        CubeMaskGenerator(min_area=60)
    with pytest.raises(ValueError, match="max_temporal"):
        CubeMaskGenerator(max_temporal=9)
    with pytest.raises(ValueError, match="random"):
        CubeMaskGenerator(mode="random")(2, return_blocks=True)


@pytest.mark.parametrize("token_grid", [(8, 56, 56), (8, 14, 14), (16, 7, 14)])
def test_upsample_mask_repeats_units(token_grid):
    mask = CubeMaskGenerator()(3, _seeded(8))
    up = upsample_mask(mask, token_grid)
    assert up.shape == (3, *token_grid) and up.dtype == torch.bool
    ft, fh, fw = (g // u for g, u in zip(token_grid, (8, 7, 7)))
    t, y, x = torch.meshgrid(*(torch.arange(n) for n in token_grid), indexing="ij")
    assert torch.equal(up, mask[:, t // ft, y // fh, x // fw])
    # Same as the reference's nearest-neighbour F.interpolate for integer factors.
    nearest = F.interpolate(mask[:, None].float(), size=token_grid)[:, 0].bool()
    assert torch.equal(up, nearest)


def test_upsample_mask_errors():
    mask = torch.zeros(2, 8, 7, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="multiple"):
        upsample_mask(mask, (8, 16, 16))
    with pytest.raises(ValueError, match="multiple"):
        upsample_mask(mask, (4, 14, 14))
    with pytest.raises(ValueError, match=r"\(B, t, h, w\)"):
        upsample_mask(mask[0], (8, 14, 14))
