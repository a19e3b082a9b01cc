"""Writing H.264 mp4 files with PyAV's bundled libx264.

Used twice: by the synthetic video generator (frames made in numpy) and by shard
preparation, which re-encodes source videos to a short side of S pixels with a short
GOP so that a random clip decodes few frames (measured: the GOP length matters more than
the decoding library).
"""

from __future__ import annotations

import io
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

    ref_stride: lay the frames out so that every `ref_stride`-th frame from each keyframe is
    a reference frame and the ones between are non-reference B-frames (x264 bframes =
    ref_stride - 1 with a fixed pattern: no adaptive B-frames, no B-pyramid, no scene-cut
    keyframes). A decoder can then skip the frames between (decode.py), so a clip taking
    every ref_stride-th frame from a frame on that grid decodes about 1 / ref_stride of
    its span. Needs a gop that is a multiple of ref_stride (keyframes stay on the grid).
    None: x264's own choice (adaptive B-frames with a pyramid: about half the frames are
    references).

    cavlc: H.264's CAVLC entropy coding instead of CABAC (x264 `cabac=0`). Same pictures at
    the same crf, about 10% more bytes, and entropy decoding, the largest part of decoding
    at these bitrates, several times cheaper (docs/data_speed.md).
    """

    def __init__(self, target, *, width: int, height: int, fps, gop: int | None = 16, crf: int = 23,
                 preset: str = "veryfast", threads: int = 1, ref_stride: int | None = None, cavlc: bool = False):
        self.container = av.open(target, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(100000)
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.time_base = 1 / rate
        self.stream.width, self.stream.height = even(width), even(height)
        self.stream.pix_fmt = "yuv420p"
        ctx = self.stream.codec_context
        ctx.thread_count = threads
        options = {"crf": str(crf), "preset": preset}
        if ref_stride is not None:
            if gop is None or ref_stride < 1 or gop % ref_stride:
                raise ValueError(f"ref_stride {ref_stride} needs a gop that is a multiple of it, got gop {gop}")
            ctx.gop_size = gop
            # A keyframe exactly every gop frames and a fixed I/P B..B P pattern between them.
            options["x264-params"] = (f"keyint={gop}:scenecut=0:bframes={ref_stride - 1}:b-adapt=0"
                                      ":b-pyramid=none")
        elif gop is not None:
            # keyint is the *maximum* distance between keyframes; scene cuts may add more.
            ctx.gop_size = gop
            options["x264-params"] = f"keyint={gop}:min-keyint={max(1, min(gop, 4))}"
        if cavlc:
            options["x264-params"] = ":".join(filter(None, [options.get("x264-params"), "cabac=0"]))
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


def encode_frames(frames, *, fps, gop: int | None = 16, crf: int = 23, preset: str = "veryfast",
                  ref_stride: int | None = None, cavlc: bool = False) -> bytes:
    """frames: (T, H, W, 3) uint8 array or list of them -> mp4 bytes."""
    buf = io.BytesIO()
    height, width = frames[0].shape[:2]
    with Mp4Writer(buf, width=width, height=height, fps=fps, gop=gop, crf=crf, preset=preset,
                   ref_stride=ref_stride, cavlc=cavlc) as w:
        for f in frames:
            w.write(f)
    return buf.getvalue()


class ConstantRate:
    """Puts frames with presentation times on a constant-rate grid of `fps` frames per second.

    Output frame k is the input frame on screen at time k / fps, times counted from the
    first frame: where the input leaves a gap (variable frame rate, a slower stretch) the
    previous frame repeats; of several frames inside one output period (bursts, or an
    output rate below the input's) only the one on screen at the grid time is kept. A frame
    within `tolerance` seconds after a grid time counts as on screen at it, which absorbs
    the rounding of timestamps to the container's time base (1 ms in webm). `period`, the
    source's nominal frame period, stands in for missing timestamps and durations.

        grid = ConstantRate(fps=30, tolerance=1e-3, period=1 / 60)
        for t, frame in timed_frames:         # t in seconds, or None
            for out in grid.push(t, frame): write(out)
        for out in grid.finish(last_frame_duration): write(out)
    """

    def __init__(self, fps: float, tolerance: float, period: float):
        self.fps, self.tolerance, self.period = fps, tolerance, period
        self.start = self.time = None  # first frame's timestamp; last frame's time after it
        self.step = 0.0  # time between the last two frames
        self.held = None
        self.count = 0  # output frames so far

    def _until(self, time: float):
        """The held frame for every grid time before `time` (seconds from the first frame)."""
        while self.held is not None and self.count / self.fps < time - self.tolerance:
            self.count += 1
            yield self.held

    def push(self, time: float | None, frame):
        """Yields the output frames that come before `frame` (shown from `time` seconds on)."""
        if time is None:
            time = 0.0 if self.start is None else self.start + self.time + self.period
        if self.start is None:
            self.start = time
        # Timestamps that step back (broken muxing) are taken as a burst at the last time.
        time = max(time - self.start, self.time or 0.0)
        self.step, self.time = time - (self.time or 0.0), time
        yield from self._until(time)
        self.held = frame

    def finish(self, duration: float | None = None):
        """Yields the last frame for the grid times before it ends, `duration` seconds after
        it started (default: the last frame interval, else `period`)."""
        if self.held is not None:
            yield from self._until(self.time + (duration or self.step or self.period))


def reencode(source, *, short_side: int | None = 320, max_fps: float | None = None, gop: int = 16,
             crf: int = 23, preset: str = "veryfast", autorotate: bool = True,
             ref_stride: int | None = None, cavlc: bool = False) -> tuple[bytes, dict]:
    """Re-encode a video (path or bytes) for cheap random clip access.

    Output: H.264 mp4 at a constant rate, short side `short_side` (never upscaled), a
    keyframe at least every `gop` frames, no audio. The rate is the source's average frame
    rate (frames / duration), at most `max_fps`; output frame k shows the source frame on
    screen at k / fps seconds after the first frame (ConstantRate), so the stored frames
    keep the source's timing whatever its timestamps (variable frame rate, a start offset,
    B-frame reordering). With autorotate the frames are turned upright by the display
    rotation (a phone's portrait video is stored as portrait). ref_stride, cavlc: the
    reference frame layout and entropy coding (Mp4Writer). Returns (mp4 bytes, info
    dict with fps, frames, width, height, gop, ref_stride, rotation: the rotation applied).
    Raises DecodeError for unreadable or truncated input.
    """
    from videodata.decode import check_complete, display_rotation, iter_frames, probe

    info = probe(source)
    fps = info.fps if not max_fps or info.fps <= max_fps else float(max_fps)
    buf = io.BytesIO()
    writer, grid, decoded, rotation = None, None, 0, 0
    last_in = last_out = None

    def write(frame):
        nonlocal last_in, last_out
        if frame is not last_in:  # a repeated frame is converted once
            last_in, last_out = frame, _converted(frame, writer, rotation)
        writer.write(last_out)

    try:
        for _, frame in iter_frames(source):
            decoded += 1
            if writer is None:
                rotation = display_rotation(frame, info.rotation) if autorotate else 0
                height, width = frame.height, frame.width
                if rotation in (90, 270):
                    height, width = width, height
                height, width = short_side_size(height, width, short_side)
                writer = Mp4Writer(buf, width=width, height=height, fps=fps, gop=gop, crf=crf, preset=preset,
                                   ref_stride=ref_stride, cavlc=cavlc)
                # At most one time-base tick, and well under one frame period.
                grid = ConstantRate(fps, min(float(frame.time_base or 1), 0.25 / max(fps, info.fps)), 1 / info.fps)
            for out in grid.push(frame.time, frame):
                write(out)
        check_complete(decoded, info.declared_frames)
        # The last frame shows for its own duration when the container gives one (PyAV >= 14).
        duration = getattr(frame, "duration", None)
        for out in grid.finish(float(duration * frame.time_base) if duration and frame.time_base else None):
            write(out)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.container.close()
        raise
    return buf.getvalue(), dict(fps=float(Fraction(fps).limit_denominator(100000)), frames=writer.num_frames,
                                width=writer.stream.width, height=writer.stream.height, gop=gop, ref_stride=ref_stride,
                                rotation=rotation)


def _converted(frame, writer: Mp4Writer, rotation: int):
    """A decoded frame as the writer takes it: yuv420p at the output size, turned upright."""
    width, height = writer.stream.width, writer.stream.height
    if not rotation:
        return frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
    from videodata.decode import upright

    if rotation in (90, 270):
        width, height = height, width
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(upright(rgb, rotation)), format="rgb24").reformat(
        format="yuv420p")
