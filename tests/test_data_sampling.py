"""Contracts of clip sampling and clip transforms (no video files involved)."""

import random

import numpy as np
import pytest
import torch

from videodata.sampling import TooShortError, clip_span, random_clip, segment_clip, segment_clips, uniform_clips
from videodata.transforms import (ClipRandAugment, ClipRandomErasing, EvalTransform, Normalize, TrainTransform,
                                  random_resized_crop_box, uniform_crop_box)


def test_random_clip_covers_every_start_and_respects_stride():
    rng = random.Random(0)
    starts = set()
    for _ in range(500):
        clip = random_clip(20, 4, 3, rng)  # span 10 -> starts 0..10
        assert [b - a for a, b in zip(clip, clip[1:])] == [3, 3, 3]
        starts.add(clip[0])
    assert starts == set(range(11))


def test_too_short_raises_unless_padded():
    with pytest.raises(TooShortError):
        random_clip(9, 4, 3, random.Random(0))  # needs 10 frames
    assert random_clip(9, 4, 3, random.Random(0), pad=True) == [0, 3, 6, 8]
    with pytest.raises(TooShortError):
        segment_clip(3, 4)
    assert clip_span(16, 4) == 61


def test_uniform_clips_follow_reference_offset_sampling():
    # 100 frames, span 10 -> delta 90; 4 clips start at k * (90 // 3) = 0, 30, 60, 90.
    clips = uniform_clips(100, 4, 3, 4)
    assert [c[0] for c in clips] == [0, 30, 60, 90]
    assert clips[-1] == [90, 93, 96, 99]
    assert uniform_clips(100, 4, 3, 1) == [[45, 48, 51, 54]]


def test_segment_sampling_matches_ssv2_reference():
    # 33 frames, 4 segments: seg = 8 -> boundaries 0, 8, 16, 24, 32; test takes middles.
    assert segment_clip(33, 4) == [4, 12, 20, 28]
    rng = random.Random(1)
    for _ in range(200):
        clip = segment_clip(33, 4, rng=rng)
        for i, f in enumerate(clip):
            assert 8 * i <= f <= 8 * (i + 1)
    two = segment_clips(33, 4, 2)
    assert two[0] != two[1] and all(8 * i <= f <= 8 * (i + 1) for c in two for i, f in enumerate(c))


def test_random_resized_crop_box_in_bounds_and_scale():
    rng = random.Random(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(120, 160, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        areas.append(h * w / (120 * 160))
    assert min(areas) >= 0.48 and max(areas) <= 1.0 and np.std(areas) > 0.05


def test_uniform_crops_left_centre_right():
    assert uniform_crop_box(32, 64, 32, 0, 3) == (0, 0, 32, 32)
    assert uniform_crop_box(32, 64, 32, 1, 3) == (0, 16, 32, 32)
    assert uniform_crop_box(32, 64, 32, 2, 3) == (0, 32, 32, 32)
    assert uniform_crop_box(64, 32, 32, 2, 3) == (32, 0, 32, 32)  # portrait: along the height
    assert uniform_crop_box(40, 60, 32, 0, 1) == (4, 14, 32, 32)


def test_normalize_formula():
    clip = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)  # (T, 3, H, W)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = Normalize(mean, std)(clip)
    assert out.shape == (3, 2, 4, 5)
    for c in range(3):
        expected = (clip[:, c].float() / 255 - mean[c]) / std[c]
        torch.testing.assert_close(out[c], expected)


def _textured_clip(t=4, h=48, w=64, same=True):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if same:
        return np.stack([frame] * t)
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_rand_augment_same_ops_on_every_frame():
    aug = ClipRandAugment("rand-m9-n3-mstd0.5-inc1")
    clip = _textured_clip()
    changed = 0
    for seed in range(8):
        out = aug(clip, seed)
        assert out.shape == clip.shape and out.dtype == np.uint8
        for t in range(1, len(out)):
            np.testing.assert_array_equal(out[t], out[0])
        changed += int(not np.array_equal(out[0], clip[0]))
    assert changed >= 4  # it does augment


def test_rand_augment_leaves_global_rngs_alone():
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    ClipRandAugment("rand-m9-n2")(_textured_clip(), seed=5)
    assert (random.random(), np.random.rand()) == expected


def test_random_erasing_is_one_box_through_all_frames():
    clip = torch.zeros(3, 4, 32, 32)
    out = ClipRandomErasing(1.0)(clip.clone(), seed=3)
    erased = out != 0  # (3, T, H, W)
    box = erased[0, 0]
    assert box.any() and not box.all()
    for t in range(4):
        for c in range(3):
            assert torch.equal(erased[c, t], box)
    assert not torch.equal(out[:, 0], out[:, 1])  # per-pixel noise differs per frame


def test_train_transform_shape_and_flip_off():
    frames = _textured_clip(t=4, same=False)
    transform = TrainTransform(24, scale=(1.0, 1.0), ratio=(64 / 48, 64 / 48), flip=False,
                               mean=(0, 0, 0), std=(1, 1, 1))
    out = transform(frames, random.Random(0))
    assert out.shape == (3, 4, 24, 24) and out.dtype == torch.float32
    # The whole frame resized: the mean colour is preserved (no flip, no crop).
    np.testing.assert_allclose(out.mean(dim=(2, 3)).numpy(), frames.mean(axis=(1, 2)).T / 255, atol=0.02)


def test_train_transform_flip_happens_about_half_the_time():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[:, :, :4] = 255  # left half white
    transform = TrainTransform(8, scale=(1, 1), ratio=(1, 1), mean=(0, 0, 0), std=(1, 1, 1))
    rng = random.Random(0)
    flipped = sum(float(transform(frames, rng)[0, 0, 0, 0]) < 0.5 for _ in range(200))
    assert 70 < flipped < 130


def test_eval_transform_crop_positions():
    frames = np.zeros((2, 16, 48, 3), np.uint8)
    frames[:, :, :16] = 255  # left third white
    transform = EvalTransform(16, 3, mean=(0, 0, 0), std=(1, 1, 1))
    assert float(transform(frames, 0).mean()) == pytest.approx(1.0)
    assert float(transform(frames, 1).mean()) == pytest.approx(0.0)
    assert float(transform(frames, 2).mean()) == pytest.approx(0.0)
