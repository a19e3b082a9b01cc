"""Clip transforms: the same spatial operation on every frame of a clip.

Training follows the reference order (slowfast/datasets/kinetics.py): RandAugment on the
decoded frames -> random resized crop + horizontal flip -> mean/std normalization ->
random erasing. Testing: short side resize (done by the decoder) -> one of `num_crops`
crops spaced along the long side -> normalization.

A clip comes in as frames (T, H, W, 3) uint8 (numpy, from decode.py) and goes out as
float (3, T, S, S), normalized; or, with TrainTransform(normalize=False), as uint8
(3, T, S, S), normalized later on the training device by normalize_video (a quarter of the
bytes through collation and the host-to-device copy, and no float work on the loader's
cores: the normalization was a third of the transform's CPU time).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

# Reference MaskFeat / MViTv2 video configs (DATA.MEAN / DATA.STD in slowfast/config).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextmanager
def seeded_global_rngs(seed: int):
    """Run a block with Python's, numpy's and torch's global RNGs seeded, then restore them.

    timm's RandAugment and RandomErasing draw from the global generators; seeding them
    from our per-worker generator keeps a run reproducible without disturbing anyone
    else's use of the globals.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def random_resized_crop_box(height: int, width: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random area fraction in `scale` with aspect
    ratio (w / h) log-uniform in `ratio`; 10 tries, then the largest central crop whose
    ratio is within range (the Inception-style crop of torchvision and the reference's
    random_resized_crop).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def uniform_crop_box(height: int, width: int, size: int, index: int, num_crops: int) -> tuple[int, int, int, int]:
    """(top, left, size, size) of test crop `index` of `num_crops`.

    One crop is central; three are at the start, centre and end of the long side (left,
    centre, right for landscape video), as the reference's uniform_crop
    (slowfast/datasets/transform.py). Other counts are spaced evenly along the long side.
    """
    if size > min(height, width):
        raise ValueError(f"crop {size} larger than frame {height}x{width}")
    free_y, free_x = height - size, width - size
    if num_crops == 1:
        return free_y // 2, free_x // 2, size, size
    if not 0 <= index < num_crops:
        raise ValueError(f"crop index {index} not in 0..{num_crops - 1}")
    frac = index / (num_crops - 1)
    if height > width:
        return round(free_y * frac), free_x // 2, size, size
    return free_y // 2, round(free_x * frac), size, size


def crop_resize(frames: torch.Tensor, box, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """frames: (T, H, W, 3) uint8 -> (T, 3, size, size) uint8 (channels-last in memory).

    Resizing uint8 channels-last is torch's fast path (several times faster than on
    float); rounding back to uint8 changes values by at most 1/255.
    """
    top, left, h, w = box
    clip = frames[:, top:top + h, left:left + w].permute(0, 3, 1, 2)  # (T, 3, h, w), a view
    if (h, w) != (size, size):
        # align_corners=False, no antialias: the reference's interpolate call.
        clip = F.interpolate(clip.contiguous(memory_format=torch.channels_last), size=(size, size),
                             mode=interpolation, align_corners=False, antialias=False)
    return clip


class Normalize:
    """(T, 3, H, W) uint8 -> (3, T, H, W) float, (x / 255 - mean) / std, in one pass."""

    def __init__(self, mean, std):
        std = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std)).view(3, 1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std).view(3, 1, 1, 1)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        t, c, h, w = clip.shape
        out = torch.empty((c, t, h, w), dtype=torch.float32)
        torch.mul(clip.permute(1, 0, 2, 3), self.scale, out=out)
        return out.sub_(self.shift)


def normalize_video(video: torch.Tensor, mean=KINETICS_MEAN, std=KINETICS_STD) -> torch.Tensor:
    """video: (B, 3, T, H, W) uint8 (from a loader with normalize=False), on any device ->
    float32 (x / 255 - mean) / std, the same values as Normalize gives on the host."""
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=video.device))).view(1, 3, 1, 1, 1)
    shift = (torch.tensor(mean, dtype=torch.float32, device=video.device) * 255.0 * scale.view(3)).view(1, 3, 1, 1, 1)
    return video.float().mul_(scale).sub_(shift)


class ClipRandAugment:
    """timm's RandAugment with the same ops and magnitudes on every frame of a clip.

    timm draws the ops and magnitudes from the global `random` / `np.random` generators
    inside each call; re-seeding them with one seed before every frame makes all frames
    draw the same ones.
    """

    def __init__(self, config: str, mean=KINETICS_MEAN):
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        self.config = config
        self.mean = mean
        self._make = rand_augment_transform
        self._bicubic = Image.BICUBIC
        self._transforms = {}

    def _transform(self, height: int, width: int):
        # translate_const depends on the frame size (timm's create_transform and the
        # reference's create_random_augment use 45% of the short side).
        key = (height, width)
        if key not in self._transforms:
            hparams = dict(translate_const=int(min(height, width) * 0.45),
                           img_mean=tuple(min(255, round(255 * m)) for m in self.mean),
                           interpolation=self._bicubic)
            self._transforms[key] = self._make(self.config, hparams)
        return self._transforms[key]

    def __call__(self, frames: np.ndarray, seed: int) -> np.ndarray:
        """frames: (T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
        from PIL import Image

        transform = self._transform(*frames.shape[1:3])
        out = []
        for frame in frames:
            with seeded_global_rngs(seed):
                out.append(np.asarray(transform(Image.fromarray(frame))))
        return np.stack(out)


class ClipRandomErasing:
    """timm's RandomErasing on the same box in every frame, with per-pixel noise.

    Viewing the clip (3, T, H, W) as one image with 3T channels makes timm erase one box
    through all frames (the reference erases a cube, slowfast/datasets/random_erasing.py).
    """

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1):
        from timm.data.random_erasing import RandomErasing

        self.erase = RandomErasing(probability, mode=mode, max_count=max_count, device="cpu")

    def __call__(self, clip: torch.Tensor, seed: int) -> torch.Tensor:
        c, t, h, w = clip.shape
        with seeded_global_rngs(seed):
            self.erase(clip.reshape(c * t, h, w))  # in place, on a view of `clip`
        return clip


class TrainTransform:
    """Training augmentation for one clip: frames (T, H, W, 3) uint8 -> (3, T, S, S) float
    (normalized), or uint8 with normalize=False."""

    def __init__(self, crop: int, *, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True,
                 rand_augment: str | None = None, erase_prob: float = 0.0, mean=KINETICS_MEAN,
                 std=KINETICS_STD, interpolation: str = "bilinear", normalize: bool = True):
        if not normalize and erase_prob > 0:
            raise ValueError("random erasing works on normalized clips: it needs normalize=True")
        self.crop, self.scale, self.ratio, self.flip = crop, tuple(scale), tuple(ratio), flip
        self.normalize_here = normalize
        self.interpolation = interpolation
        self.rand_augment = ClipRandAugment(rand_augment, mean) if rand_augment else None
        self.erasing = ClipRandomErasing(erase_prob) if erase_prob > 0 else None
        self.normalize = Normalize(mean, std)

    def __call__(self, frames: np.ndarray, rng: random.Random) -> torch.Tensor:
        if self.rand_augment is not None:
            frames = self.rand_augment(frames, rng.getrandbits(32))
        frames = torch.from_numpy(frames)
        box = random_resized_crop_box(frames.shape[1], frames.shape[2], self.scale, self.ratio, rng)
        clip = crop_resize(frames, box, self.crop, self.interpolation)  # (T, 3, S, S) uint8
        if self.flip and rng.random() < 0.5:
            clip = clip.flip(-1)
        if not self.normalize_here:
            return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S) uint8
        clip = self.normalize(clip)  # (3, T, S, S) float
        if self.erasing is not None:
            clip = self.erasing(clip, rng.getrandbits(32))
        return clip


class EvalTransform:
    """Test view of a clip decoded at short side >= crop: (T, H, W, 3) uint8 -> (3, T, S, S)."""

    def __init__(self, crop: int, num_crops: int = 1, mean=KINETICS_MEAN, std=KINETICS_STD):
        self.crop, self.num_crops = crop, num_crops
        self.normalize = Normalize(mean, std)

    def __call__(self, frames: np.ndarray, crop_index: int) -> torch.Tensor:
        frames = torch.from_numpy(frames)
        box = uniform_crop_box(frames.shape[1], frames.shape[2], self.crop, crop_index, self.num_crops)
        return self.normalize(crop_resize(frames, box, self.crop))
