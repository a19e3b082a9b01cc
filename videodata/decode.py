"""Decoding video bytes (or files) with PyAV: probing, whole-video scans, clip frames.

A frame's index is its presentation time times the frame rate,
`round((pts - start_time) * time_base * fps)`, so that for the constant-rate mp4 files
that shard preparation writes, index k is the k-th frame exactly. Clip decoding seeks to
the keyframe at or before the first wanted frame and decodes forward only as far as the
last wanted frame; with a short GOP that is a few frames more than the clip itself.

Decoding uses one thread (FFmpeg's frame threads would fight the DataLoader workers for
cores; parallelism comes from the workers).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# A clip may ask for a frame slightly past the end when the container's frame count is a
# little off (variable frame rate, trailing frames dropped by the decoder); up to this many
# missing tail frames are filled with the last decoded frame, more is an error.
TAIL_SLACK = 3
# Without a known GOP length, wanted frames further apart than this are reached by a new
# seek rather than by decoding through the gap.
DEFAULT_SEEK_GAP = 64


class DecodeError(Exception):
    """The bytes are not a decodable video (or not the part of it a clip needs)."""


@dataclass
class VideoInfo:
    fps: float
    num_frames: int  # 1 + index of the last frame (see the module docstring)
    width: int
    height: int
    declared_frames: int = 0  # the container header's count (0: not given)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(source):
    """av container for bytes (decoded from memory) or a path; DecodeError on failure."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty file")
        source = io.BytesIO(source)
    try:
        container = av.open(source, mode="r")
    except av.FFmpegError as exn:
        raise DecodeError(f"cannot open: {_reason(exn)}") from None
    except OSError as exn:
        raise DecodeError(f"cannot open: {exn}") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return container, stream


def _reason(exn: Exception) -> str:
    """A one-line reason without FFmpeg's file path or error number noise."""
    return one_line(getattr(exn, "strerror", None) or exn)


def one_line(text, limit: int = 200) -> str:
    """Any message (or exception) as one line of at most `limit` characters."""
    return " ".join(str(text).split())[:limit]


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise DecodeError("unknown frame rate")
    return float(rate)


class _FrameIndexer:
    """Maps a decoded frame to its index; frames without a pts continue the count."""

    def __init__(self, stream, fps: float):
        self.tb = float(stream.time_base)
        self.start = stream.start_time or 0
        self.fps = fps
        self.last = -1

    def __call__(self, frame) -> int:
        if frame.pts is None:
            self.last += 1
        else:
            self.last = round((frame.pts - self.start) * self.tb * self.fps)
        return self.last

    def pts(self, index: int) -> int:
        """Presentation timestamp slightly before frame `index` (for seeking)."""
        return self.start + max(0, math.floor((index - 0.5) / self.fps / self.tb))


def iter_frames(source):
    """Yield (index, av.VideoFrame) for every frame of the first video stream.

    Raises DecodeError when the file cannot be opened or decoding fails part way.
    """
    container, stream = _open(source)
    try:
        index_of = _FrameIndexer(stream, _fps(stream))
        try:
            for frame in container.decode(stream):
                yield index_of(frame), frame
        except av.FFmpegError as exn:
            raise DecodeError(f"decoding failed after frame {index_of.last}: {_reason(exn)}") from None
    finally:
        container.close()


def check_complete(decoded: int, declared: int) -> None:
    """Raise DecodeError when a full decode gave no frames or clearly fewer than the header
    promised (a truncated download often still opens and decodes its first part)."""
    if decoded == 0:
        raise DecodeError("no decodable frames")
    if declared and decoded < declared - TAIL_SLACK:
        raise DecodeError(f"truncated: decoded {decoded} of {declared} frames")


def scan_video(source) -> VideoInfo:
    """Decode the whole video to check it and count its frames (no pixel conversion)."""
    info = probe(source)
    last, count = -1, 0
    for index, frame in iter_frames(source):
        last, count = max(last, index), count + 1
        info.width, info.height = frame.width, frame.height
    check_complete(count, info.declared_frames)
    info.num_frames = last + 1
    return info


def probe(source) -> VideoInfo:
    """Frame rate, frame count and size from the container header, without decoding.

    Raises DecodeError for files that do not open or have no video stream.

    The frame count comes from the header or, when missing (webm), from the duration;
    prefer the metadata written into shards, which was counted by decoding.
    """
    container, stream = _open(source)
    try:
        fps = _fps(stream)
        num_frames = stream.frames
        if not num_frames:
            if stream.duration is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                raise DecodeError("unknown duration")
            num_frames = int(round(seconds * fps))
        return VideoInfo(fps=fps, num_frames=int(num_frames), width=stream.width, height=stream.height,
                         declared_frames=stream.frames or 0)
    finally:
        container.close()


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side` (None: unchanged)."""
    if short_side is None:
        return height, width
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def _runs(wanted: list[int], gap: int) -> list[list[int]]:
    """Split sorted frame indices into runs; a new run starts after a gap > `gap`."""
    runs = [[wanted[0]]]
    for i in wanted[1:]:
        if i - runs[-1][-1] > gap:
            runs.append([i])
        else:
            runs[-1].append(i)
    return runs


def decode_frames(source, indices, *, fps: float | None = None, short_side: int | None = None,
                  gop: int | None = None) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed).

    source: video bytes or a path. fps: the frame rate the indices refer to (default: the
    stream's average rate). short_side: resize while converting to RGB (swscale, cheap).
    gop: the keyframe interval if known, to decide when seeking beats decoding through.
    Returns (len(indices), H, W, 3) uint8 RGB.
    """
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no frame indices")
    if min(indices) < 0:
        raise ValueError(f"negative frame index in {indices}")
    wanted = sorted(set(indices))
    container, stream = _open(source)
    got: dict[int, np.ndarray] = {}
    try:
        index_of = _FrameIndexer(stream, fps or _fps(stream))
        size = None
        # One swscale context for the whole clip: frame.to_ndarray() would build one per
        # frame, which costs more than decoding a frame at 320p.
        reformatter = VideoReformatter()

        def to_rgb(frame) -> np.ndarray:
            nonlocal size
            if size is None:
                size = resized_size(frame.height, frame.width, short_side)
            return reformatter.reformat(frame, format="rgb24", height=size[0], width=size[1],
                                        interpolation="BILINEAR").to_ndarray()

        for run in _runs(wanted, gop if gop else DEFAULT_SEEK_GAP):
            pending = iter(run)
            want = next(pending)
            last_index, last_frame = -1, None
            container.seek(index_of.pts(run[0]), stream=stream, backward=True, any_frame=False)
            try:
                for frame in container.decode(stream):
                    last_index, last_frame = index_of(frame), frame
                    if last_index < want:
                        continue
                    rgb = to_rgb(frame)
                    # A frame stands in for every wanted index up to its own: with variable
                    # frame rates some indices have no frame of their own.
                    while want is not None and want <= last_index:
                        got[want] = rgb
                        want = next(pending, None)
                    if want is None:
                        break
            except av.FFmpegError as exn:
                raise DecodeError(f"decoding failed near frame {index_of.last}: {_reason(exn)}") from None
            if want is not None:
                # The stream ended before the run did.
                if last_frame is None or run[-1] > last_index + TAIL_SLACK:
                    raise DecodeError(f"video ends at frame {last_index}, clip needs frame {run[-1]}")
                rgb = to_rgb(last_frame)
                for i in run:
                    got.setdefault(i, rgb)
    finally:
        container.close()
    return np.stack([got[i] for i in indices])
