"""Which frames of a video make a clip: random, uniform (multi-view test) and segment.

All functions work in frame indices of the stored video (after any fps cap applied by
shard preparation) and return plain lists of ints, so they are easy to test and to log.
The reference samples at a target fps of 30 (slowfast/datasets/decoder.py); prepare
shards with `--max-fps 30` to get the same time span per clip on high-fps sources.
"""

from __future__ import annotations

import random


class TooShortError(ValueError):
    """The video has fewer frames than the clip needs."""


def clip_span(frames: int, stride: int) -> int:
    """Frames covered by a clip of `frames` frames taken every `stride` frames."""
    return (frames - 1) * stride + 1


def _clip(start: int, frames: int, stride: int, num_frames: int) -> list[int]:
    # Clamping only matters in pad mode: a short video repeats its last frame.
    return [min(start + i * stride, num_frames - 1) for i in range(frames)]


def _check(num_frames: int, needed: int, pad: bool) -> None:
    if num_frames < 1 or (num_frames < needed and not pad):
        raise TooShortError(f"video has {num_frames} frames, clip needs {needed}")


def random_clip(num_frames: int, frames: int, stride: int, rng: random.Random, pad: bool = False,
                align: int = 1) -> list[int]:
    """Training clip: start uniform over every position where the clip fits (the
    reference), or with align > 1 over the multiples of `align` where it fits.

    align = the shards' ref_stride (videodata.encode.Mp4Writer) puts every frame of a
    clip whose stride is a multiple of it on a reference frame, so decoding can skip the
    frames between; the clip is still `frames` frames `stride` apart, only its start is
    on a coarser grid (every 4th frame: 133 ms at 30 fps).
    """
    span = clip_span(frames, stride)
    _check(num_frames, span, pad)
    start = align * rng.randint(0, max(0, num_frames - span) // align)
    return _clip(start, frames, stride, num_frames)


def uniform_clips(num_frames: int, frames: int, stride: int, num_clips: int, pad: bool = False) -> list[list[int]]:
    """Test clips 0..num_clips-1 spaced evenly from the first to the last position.

    The reference's offset sampling (USE_OFFSET_SAMPLING in the MViTv2 / MaskFeat configs,
    slowfast/datasets/decoder.py get_start_end_idx): one clip sits in the middle;
    otherwise clip k starts at k * floor(delta / (num_clips - 1)), delta = free frames.
    """
    span = clip_span(frames, stride)
    _check(num_frames, span, pad)
    delta = max(0, num_frames - span)
    if num_clips == 1:
        starts = [delta // 2]
    else:
        starts = [k * (delta // (num_clips - 1)) for k in range(num_clips)]
    return [_clip(s, frames, stride, num_frames) for s in starts]


def segment_clip(num_frames: int, frames: int, rng: random.Random | None = None, position: float | None = None,
                 pad: bool = False) -> list[int]:
    """Segment-based sampling over the whole video (TSN; the reference's SSv2 loader).

    The video is cut into `frames` equal segments with boundaries
    round(i * (num_frames - 1) / frames); training takes a random frame of each segment
    (boundaries included), testing the middle one ((start + end) // 2,
    slowfast/datasets/ssv2.py). `position` in [0, 1) picks another fixed point of each
    segment, for several test clips.
    """
    _check(num_frames, frames, pad)
    seg = (num_frames - 1) / frames
    out = []
    for i in range(frames):
        start, end = round(seg * i), round(seg * (i + 1))
        if rng is not None:
            out.append(rng.randint(start, end))
        elif position is None:
            out.append((start + end) // 2)
        else:
            out.append(start + int((end - start + 1) * position))
    return out


def segment_clips(num_frames: int, frames: int, num_clips: int, pad: bool = False) -> list[list[int]]:
    """num_clips test clips: clip k takes point (2k + 1) / (2 num_clips) of each segment.

    One clip gives exactly the reference's middle frames.
    """
    if num_clips == 1:
        return [segment_clip(num_frames, frames, pad=pad)]
    return [segment_clip(num_frames, frames, position=(2 * k + 1) / (2 * num_clips), pad=pad)
            for k in range(num_clips)]
