"""Synthetic labelled videos written as real mp4 files, for tests and the no-data demo.

Each video is one shape (circle, square, triangle) crossing a textured background in one
direction (left, right, up, down): 12 classes named "<shape>_<direction>", so a model
must see motion to tell "circle_left" from "circle_right". Files land in the
class-per-folder layout `root/<label>/<id>.mp4` that scripts/make_shards.py reads.

With mark_frames=True the background is a flat colour that encodes the frame index, so a
test can read back which source frames a loader returned, whatever the crop, resize or
flip (the shape covers well under half of the frame, so the per-channel median is the
background):

    red   = 8 + 16 * (index % 16)
    green = 8 + 16 * (index // 16 % 16)
    blue  = 128

16 grey levels apart survive H.264 at the default quality; 256 frames at most.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from videodata.encode import Mp4Writer

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
LABELS = tuple(f"{s}_{d}" for s in SHAPES for d in DIRECTIONS)
MARK_STEP, MARK_OFFSET, MARK_MAX_FRAMES = 16, 8, 256
BACKGROUNDS = ("texture", "plain", "stripes", "scene")
# photographs scikit-image ships inside its wheel (no download): the "scene" backgrounds
SCENE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "brick",
                "grass", "gravel", "camera", "moon", "coins", "clock", "text", "page")


def frame_marker(index: int) -> tuple[int, int, int]:
    """RGB colour of the background of frame `index` when mark_frames=True."""
    if not 0 <= index < MARK_MAX_FRAMES:
        raise ValueError(f"frame index {index} cannot be marked (0..{MARK_MAX_FRAMES - 1})")
    return (MARK_OFFSET + MARK_STEP * (index % 16), MARK_OFFSET + MARK_STEP * (index // 16 % 16), 128)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth coloured texture, (H, W, 3) float in [0, 255]: gratings plus blurred noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tex = np.zeros((height, width, 3), np.float32)
    for _ in range(3):
        freq = rng.uniform(0.02, 0.15)
        angle = rng.uniform(0, np.pi)
        wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
        tex += wave[..., None] * rng.uniform(10, 40, size=3)
    # Low-frequency blobs: random values on a coarse grid, repeated up to the frame size.
    coarse = rng.uniform(-40, 40, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    tex += np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:height, :width]
    return np.clip(tex + rng.uniform(80, 170, size=3), 0, 255)


def _grating(rng: np.random.Generator, height: int, width: int, angle: float) -> np.ndarray:
    """A sinusoidal grating of two random colours, (H, W, 3) float: strong gradients in every
    8x8 cell along one orientation (HOG sees the angle, not codec noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(10, 16)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi / period * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    b = np.where(np.abs(a - b).max() < 100, 255 - a, b)  # enough contrast in some channel
    return a + wave[..., None] * (b - a)


@functools.lru_cache(maxsize=None)
def _scene_image(name: str) -> np.ndarray:
    """A scikit-image sample photograph as (H, W, 3) float32 in [0, 255]."""
    import skimage.data
    image = np.asarray(getattr(skimage.data, name)(), np.float32)
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a random photograph, flipped, recoloured and lowered in contrast,
    (H, W, 3) float: natural clutter that differs from video to video."""
    from PIL import Image
    image = _scene_image(SCENE_IMAGES[rng.integers(len(SCENE_IMAGES))])
    h, w = image.shape[:2]
    scale = rng.uniform(0.35, 1.0) * min(h / height, w / width)
    ch, cw = int(height * scale), int(width * scale)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(image[y:y + ch, x:x + cw].astype(np.uint8)).resize((width, height), Image.BILINEAR)
    scene = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        scene = scene[:, ::-1]
    # a colour cast per channel and less contrast: the moving shape stays the strongest edge
    mean = scene.mean((0, 1))
    scene = (scene - mean) * rng.uniform(0.4, 0.8) + mean * rng.uniform(0.6, 1.3, size=3)
    return np.clip(scene + rng.uniform(-30, 30), 0, 255)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask of the shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c * c
    if shape == "square":
        return np.ones((size, size), bool)
    # Triangle pointing up: apex at the top centre, base at the bottom.
    return np.abs(xx - c) <= yy / 2


def synthetic_frames(label: str, *, frames: int, size: tuple[int, int], seed: int,
                     mark_frames: bool = False, noise: float = 0.0, background: str = "texture"):
    """Yield the frames of one video of class `label`, each (H, W, 3) uint8.

    background: "texture" (gratings and blobs, panning), "plain" (one flat colour per
    video, still camera; the shape is larger and contrasts with it), "stripes" (still
    camera; two gratings of different orientations split by a line, behind a larger shape
    filled with a grating of its own) or "scene" (still camera; a recoloured crop of a
    photograph scikit-image ships, behind a flat shape a third to half of the frame high,
    dark on a bright scene or bright on a dark one: the demo's videos).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    shape, direction = label.split("_")
    height, width = size
    rng = np.random.default_rng(seed)
    still = background in ("plain", "stripes", "scene")
    fill = None
    if mark_frames:
        scene = None
    elif background == "plain":
        scene = np.empty((height, width, 3), np.float32)
        scene[:] = rng.uniform(20, 235, size=3)
    elif background == "stripes":
        # two gratings of different orientations split by a random line: the HOG of a hidden
        # region is told by its neighbours, not by the clip's average
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cut = rng.uniform(0, np.pi)
        side_a = ((xx - width * rng.uniform(0.3, 0.7)) * np.cos(cut) + (yy - height * rng.uniform(0.3, 0.7))
                  * np.sin(cut)) > 0
        scene = np.where(side_a[..., None], _grating(rng, height, width, angle),
                         _grating(rng, height, width, angle + rng.uniform(np.pi / 3, 2 * np.pi / 3)))
        fill = _grating(rng, height, width, angle + rng.uniform(np.pi / 4, 3 * np.pi / 4))
    elif background == "scene":
        scene = _scene(rng, height, width)
    else:
        scene = _texture(rng, height, width)
    low, high = {"scene": (0.4, 0.55), "texture": (0.2, 0.3)}.get(background, (0.3, 0.4))
    side = max(4, int(min(height, width) * rng.uniform(low, high)))
    mask = _shape_mask(shape, side)
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    if background == "plain":  # contrast: the shape is at least 100 grey levels away from the background
        colour = np.where(np.abs(colour - scene[0, 0]) < 100, (scene[0, 0] + 128) % 256, colour).astype(np.float32)
    elif background == "scene":  # a flat shape, dark on a bright scene or bright on a dark one: a brightness edge
        level = 45.0 if scene.mean() > 128 else 210.0
        colour = np.clip(level + rng.uniform(-45, 45, size=3), 0, 255).astype(np.float32)
    # The shape travels from one edge region to the opposite one over the clip.
    travel_x, travel_y = width - side, height - side
    fixed = rng.uniform(0.2, 0.8)
    for t in range(frames):
        p = t / max(1, frames - 1)
        x, y = {"right": (p * travel_x, fixed * travel_y), "left": ((1 - p) * travel_x, fixed * travel_y),
                "down": (fixed * travel_x, p * travel_y), "up": (fixed * travel_x, (1 - p) * travel_y)}[direction]
        x, y = int(round(x)), int(round(y))
        if mark_frames:
            frame = np.empty((height, width, 3), np.float32)
            frame[:] = frame_marker(t)
        else:
            # The camera pans slowly so that the background is not static either.
            frame = scene.copy() if still else np.roll(scene, t, axis=1)
            if noise > 0:
                frame += rng.normal(0, noise, size=frame.shape).astype(np.float32)
        patch = frame[y:y + side, x:x + side]
        inside = mask[:patch.shape[0], :patch.shape[1]]
        # a striped shape carries its grating with it (the texture moves with the object)
        patch[inside] = colour if fill is None else fill[:patch.shape[0], :patch.shape[1]][inside]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_synthetic_videos(root, num_videos: int, *, frames: int = 48, size: tuple[int, int] = (128, 160),
                           fps: float = 24, seed: int = 0, mark_frames: bool = False, noise: float = 0.0,
                           gop: int | None = 12, crf: int = 23, preset: str = "veryfast",
                           labels=LABELS, frames_per_video=None, background: str = "texture") -> list[tuple[str, str]]:
    """Write `num_videos` mp4 files as root/<label>/<id>.mp4; returns [(path, label), ...].

    Video i has class labels[i % len(labels)], so classes are balanced. frames_per_video
    (a callable i -> frame count) gives videos of different lengths. gop=None keeps
    x264's default keyframe interval (250), like typical downloaded video; noise adds
    per-frame grain so the bitrate looks more like camera footage.
    """
    root = Path(root)
    out = []
    for i in range(num_videos):
        label = labels[i % len(labels)]
        n = frames if frames_per_video is None else int(frames_per_video(i))
        path = root / label / f"{i:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with Mp4Writer(str(tmp), width=size[1], height=size[0], fps=fps, gop=gop, crf=crf, preset=preset) as w:
            for frame in synthetic_frames(label, frames=n, size=size, seed=seed * 100003 + i,
                                          mark_frames=mark_frames, noise=noise, background=background):
                w.write(frame)
        os.replace(tmp, path)
        out.append((str(path), label))
    return out
