"""Writing H.264 mp4 files with PyAV's bundled libx264.

Used twice: by the synthetic video generator (frames made in numpy) and by shard
preparation, which re-encodes source videos to a short side of S pixels with a short
GOP so that a random clip decodes few frames (measured: the GOP length matters more than
the decoding library).
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np


def even(x: int) -> int:
    """H.264 with 4:2:0 chroma needs even frame sides."""
    return max(2, int(x) // 2 * 2)


def short_side_size(height: int, width: int, short_side: int | None, upscale: bool = False) -> tuple[int, int]:
    """(height, width) after scaling the short side to `short_side`, both even.

    With upscale=False a video already smaller than `short_side` keeps its size (making
    a 240p source 320p only costs bytes). None keeps the size.
    """
    if short_side is None or (not upscale and min(height, width) <= short_side):
        return even(height), even(width)
    if height <= width:
        return even(short_side), even(round(width * short_side / height))
    return even(round(height * short_side / width)), even(short_side)


class Mp4Writer:
    """Encode RGB frames into an H.264 mp4 (a path or an in-memory buffer).

    Frames get consecutive presentation timestamps in units of 1/fps, so frame k of the
    output is at pts k: the decoder's frame index is exact (see decode.py).

        with Mp4Writer(buf, width=160, height=128, fps=24, gop=16) as w:
            w.write(rgb)  # rgb: (H, W, 3) uint8, or an av.VideoFrame
    """

    def __init__(self, target, *, width: int, height: int, fps, gop: int | None = 16, crf: int = 23,
                 preset: str = "veryfast", threads: int = 1):
        self.container = av.open(target, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(100000)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base = 1 / rate
        self.stream.width, self.stream.height = even(width), even(height)
        self.stream.pix_fmt = "yuv420p"
        ctx = self.stream.codec_context
        ctx.thread_count = threads
        options = {"crf": str(crf), "preset": preset}
        if gop is not None:
            # keyint is the *maximum* distance between keyframes; scene cuts may add more.
            ctx.gop_size = gop
            options["x264-params"] = f"keyint={gop}:min-keyint={max(1, min(gop, 4))}"
        self.stream.options = options
        self.num_frames = 0

    def write(self, frame) -> None:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        if (frame.width, frame.height) != (self.stream.width, self.stream.height) or frame.format.name != "yuv420p":
            frame = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p",
                                   interpolation="AREA")
        frame.pts = self.num_frames
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.num_frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush delayed frames
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.container.close()


def encode_frames(frames, *, fps, gop: int | None = 16, crf: int = 23, preset: str = "veryfast") -> bytes:
    """frames: (T, H, W, 3) uint8 array or list of them -> mp4 bytes."""
    buf = io.BytesIO()
    height, width = frames[0].shape[:2]
    with Mp4Writer(buf, width=width, height=height, fps=fps, gop=gop, crf=crf, preset=preset) as w:
        for f in frames:
            w.write(f)
    return buf.getvalue()


def reencode(source, *, short_side: int | None = 320, max_fps: float | None = None, gop: int = 16,
             crf: int = 23, preset: str = "veryfast") -> tuple[bytes, dict]:
    """Re-encode a video (path or bytes) for cheap random clip access.

    Output: H.264 mp4, short side `short_side` (never upscaled), at most `max_fps` frames
    per second (frames dropped by timestamp), a keyframe at least every `gop` frames, no
    audio. Returns (mp4 bytes, info dict with fps, frames, width, height, gop).
    Raises DecodeError for unreadable or truncated input.
    """
    from videodata.decode import check_complete, iter_frames, probe

    info = probe(source)
    fps = info.fps if not max_fps or info.fps <= max_fps else float(max_fps)
    buf = io.BytesIO()
    writer, last_slot, decoded = None, -1, 0
    try:
        for index, frame in iter_frames(source):
            decoded += 1
            # Output frame k shows the first source frame at or after time k / fps.
            slot = math.floor(index * fps / info.fps + 1e-6)
            if slot <= last_slot:
                continue
            last_slot = slot
            if writer is None:
                height, width = short_side_size(frame.height, frame.width, short_side)
                writer = Mp4Writer(buf, width=width, height=height, fps=fps, gop=gop, crf=crf, preset=preset)
            writer.write(frame)
        check_complete(decoded, info.declared_frames)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.container.close()
        raise
    return buf.getvalue(), dict(fps=float(Fraction(fps).limit_denominator(100000)), frames=writer.num_frames,
                                width=writer.stream.width, height=writer.stream.height, gop=gop)
