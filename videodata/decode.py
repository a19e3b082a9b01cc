"""Decoding video bytes (or files) with PyAV: probing, whole-video scans, clip frames.

A frame's index is its presentation time times the frame rate,
`round((pts - start_time) * time_base * fps)`, so that for the constant-rate mp4 files
that shard preparation writes, index k is the k-th frame exactly. Clip decoding seeks to
the keyframe at or before the first wanted frame and decodes forward only as far as the
last wanted frame; with a short GOP that is a few frames more than the clip itself.

On the way, frames that no other frame references and that the clip does not use are not
decoded at all (`skip_unused`): before each packet goes to the decoder, FFmpeg's
`skip_frame` is set to NONREF when the packet's own frame index (from its pts) is not
wanted, else to DEFAULT. Skipping a non-reference frame cannot change any other frame, so
the returned pixels are the same as from a full decode. How much it saves depends on the
encoding: with shard preparation's `ref_stride=4` layout (encode.py) every 4th frame is a
reference and the three between are not, so a stride-4 clip that starts on that grid
decodes about one frame in four of its span.

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
    # counter-clockwise degrees that turn a decoded frame upright (see upright()); probe()
    # reads only the `rotate` tag, scan_video() the display matrix of the decoded frames too
    rotation: int = 0

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _open(source):
    """av container for bytes (decoded from memory) or a path; DecodeError with a reason a
    user can act on when it is not a video (see `not_a_video`)."""
    head = _head(source)
    if not head:
        raise DecodeError("empty file")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        container = av.open(source, mode="r")
    except av.FFmpegError as exn:
        raise DecodeError(_unopenable(head, _reason(exn))) from None
    except OSError as exn:
        raise DecodeError(f"cannot open: {exn}") from None
    reason = not_a_video(container)
    if reason:
        container.close()
        raise DecodeError(reason)
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return container, stream


def _head(source, size: int = 1024) -> bytes:
    """The first bytes of a file or buffer (to say what it is when FFmpeg cannot open it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:size])
    try:
        with open(source, "rb") as f:
            return f.read(size)
    except OSError as exn:
        raise DecodeError(f"cannot read: {exn.strerror or exn}") from None


# Signatures of the containers we read: a file that starts like one but does not open is a
# truncated or damaged video, not some other kind of file.
_CONTAINER_MAGIC = (("mp4/mov", 4, b"ftyp"), ("mp4/mov", 4, b"moov"), ("mp4/mov", 4, b"mdat"),
                    ("mkv/webm", 0, b"\x1aE\xdf\xa3"), ("avi", 8, b"AVI "), ("flv", 0, b"FLV"),
                    ("mpeg", 0, b"\x00\x00\x01\xba"))
_IMAGE_MAGIC = (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("gif", b"GIF8"), ("bmp", b"BM"))


def _unopenable(head: bytes, reason: str) -> str:
    """Why FFmpeg could not open a file that starts with `head`."""
    for kind, offset, magic in _CONTAINER_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"truncated or unreadable {kind} container: {reason}"
    for kind, magic in _IMAGE_MAGIC:
        if head.startswith(magic):
            return f"not a video file: {kind} image ({reason})"
    try:
        head.decode("utf-8")
        text = b"\x00" not in head
    except UnicodeDecodeError as exn:
        text = exn.start >= len(head) - 3 and b"\x00" not in head  # a character cut by the 1 KB read
    if text:
        return "not a video file: text"
    return f"not a media file: unrecognized format ({reason})"


def not_a_video(container) -> str | None:
    """Why an opened media file is not a video (audio only, a still image, ...), or None."""
    if not container.streams.video:
        audio = container.streams.audio
        if audio:
            return f"not a video file: audio only ({audio[0].codec_context.name})"
        return "not a video file: no video or audio stream"
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg's demuxers for single images
        return f"not a video file: {container.streams.video[0].codec_context.name} image"
    return None


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

    def index(self, pts: int | None) -> int | None:
        """Frame index of a timestamp (a packet's), without counting; None for None."""
        return None if pts is None else round((pts - self.start) * self.tb * self.fps)

    def pts(self, index: int) -> int:
        """Presentation timestamp slightly before frame `index` (for seeking)."""
        return self.start + max(0, math.floor((index - 0.5) / self.fps / self.tb))


def display_rotation(frame, tagged: int = 0) -> int:
    """Counter-clockwise degrees (0, 90, 180 or 270) that turn `frame` upright, as players
    show it: the display matrix FFmpeg attaches to decoded frames (PyAV's frame.rotation),
    else `tagged`, the stream's `rotate` tag (see _tag_rotation). Mirroring in the matrix
    is ignored; phones only rotate. (PyAV before 14 has no frame.rotation: tags only.)"""
    return int(round((getattr(frame, "rotation", 0) or tagged) / 90)) % 4 * 90


def _tag_rotation(stream) -> int:
    """The `rotate` tag (clockwise degrees; older FFmpeg wrote it, and it survives as
    ROTATE in files remuxed to mkv) as counter-clockwise degrees, 0 when absent."""
    tag = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), "0")
    try:
        return -round(float(tag))
    except ValueError:
        return 0


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """(H, W, 3) -> the same picture turned `rotation` degrees counter-clockwise
    ((W, H, 3) for 90 and 270)."""
    return np.rot90(rgb, rotation // 90) if rotation else rgb


def iter_frames(source):
    """Yield (index, av.VideoFrame) for every frame of the first video stream.

    Raises DecodeError when the file cannot be opened or fails part way: reading the
    container (a cut download) or decoding a packet (damaged data), which it says.
    """
    container, stream = _open(source)
    try:
        index_of = _FrameIndexer(stream, _fps(stream))
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets, None)
            except av.FFmpegError as exn:
                raise DecodeError(f"truncated or damaged container after frame {index_of.last}: "
                                  f"{_reason(exn)}") from None
            if packet is None:
                break
            try:
                frames = packet.decode()
            except av.FFmpegError as exn:
                # The demuxer flags a packet that the file ends inside of (a cut download).
                what = "truncated or damaged container" if packet.is_corrupt else "decode error"
                raise DecodeError(f"{what} after frame {index_of.last}: {_reason(exn)}") from None
            for frame in frames:
                yield index_of(frame), frame
    finally:
        container.close()


def check_complete(decoded: int, declared: int) -> None:
    """Raise DecodeError when a full decode gave no frames or clearly fewer than the header
    promised (a truncated download often still opens and decodes its first part)."""
    if decoded == 0:
        raise DecodeError("no decodable frames")
    if declared and decoded < declared - TAIL_SLACK:
        raise DecodeError(f"truncated: decoded {decoded} of {declared} frames")


def scan_video(source, autorotate: bool = True) -> VideoInfo:
    """Decode the whole video to check it and count its frames (no pixel conversion).

    With autorotate, `rotation` is the display rotation and width / height are the upright
    picture's; without, 0 and the stored picture's.
    """
    info = probe(source)
    last, count = -1, 0
    for index, frame in iter_frames(source):
        if count == 0:
            info.width, info.height = frame.width, frame.height
            info.rotation = display_rotation(frame, info.rotation) if autorotate else 0
        last, count = max(last, index), count + 1
    check_complete(count, info.declared_frames)
    if info.rotation in (90, 270):
        info.width, info.height = info.height, info.width
    info.num_frames = last + 1
    return info


def probe(source) -> VideoInfo:
    """Frame rate, frame count and size from the container header, without decoding.

    Raises DecodeError for files that do not open or have no video stream.

    The frame count comes from the header or, when missing (webm), from the duration, and
    is 0 when neither is given (a live recording's webm); prefer the metadata written into
    shards, which was counted by decoding.
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
                seconds = 0.0
            num_frames = int(round(seconds * fps))
        return VideoInfo(fps=fps, num_frames=int(num_frames), width=stream.width, height=stream.height,
                         declared_frames=stream.frames or 0, rotation=_tag_rotation(stream))
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


class _StandIn(Exception):
    """Selective decoding met a wanted index without a frame of its own (variable frame
    rate): the frame that stands in for it must come from a full decode of the run."""


def decode_frames(source, indices, *, fps: float | None = None, short_side: int | None = None,
                  gop: int | None = None, rotation: int | None = None, skip_unused: bool = True) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed).

    source: video bytes or a path. fps: the frame rate the indices refer to (default: the
    stream's average rate). short_side: resize while converting to RGB (swscale, cheap).
    gop: the keyframe interval if known, to decide when seeking beats decoding through.
    rotation: counter-clockwise degrees to turn the frames (None: the video's display
    rotation, so frames come out as a player shows them; 0: as stored).
    skip_unused: do not decode non-reference frames that are not wanted (see the module
    docstring; the result is the same, only cheaper). A run in which some wanted index has
    no frame of its own (variable frame rate) is decoded again in full, so that the frame
    standing in for it is the one a full decode gives.
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
            nonlocal size, rotation
            if size is None:
                size = resized_size(frame.height, frame.width, short_side)
                if rotation is None:
                    rotation = display_rotation(frame, _tag_rotation(stream))
            return upright(reformatter.reformat(frame, format="rgb24", height=size[0], width=size[1],
                                                interpolation="BILINEAR").to_ndarray(), rotation)

        def frames_of(run: list[int], selective: bool):
            """Decoded frames from the keyframe before run[0] on; with `selective`, the
            non-reference frames whose index is not in `run` are skipped by the decoder."""
            codec = stream.codec_context
            codec.skip_frame = "DEFAULT"
            container.seek(index_of.pts(run[0]), stream=stream, backward=True, any_frame=False)
            if not selective:
                yield from container.decode(stream)
                return
            needed = set(run)
            try:
                for packet in container.demux(stream):
                    index = index_of.index(packet.pts)
                    codec.skip_frame = "NONREF" if index is not None and index not in needed else "DEFAULT"
                    yield from packet.decode()
            finally:
                codec.skip_frame = "DEFAULT"

        def decode_run(run: list[int], selective: bool) -> dict[int, np.ndarray]:
            out: dict[int, np.ndarray] = {}
            pending = iter(run)
            want = next(pending)
            last_index, last_frame = -1, None
            try:
                for frame in frames_of(run, selective):
                    last_index, last_frame = index_of(frame), frame
                    if last_index < want:
                        continue
                    if selective and last_index > want:
                        raise _StandIn()
                    rgb = to_rgb(frame)
                    # A frame stands in for every wanted index up to its own: with variable
                    # frame rates some indices have no frame of their own.
                    while want is not None and want <= last_index:
                        out[want] = rgb
                        want = next(pending, None)
                    if want is None:
                        break
            except av.FFmpegError as exn:
                raise DecodeError(f"decode error near frame {index_of.last}: {_reason(exn)}") from None
            if want is not None:
                if selective:
                    raise _StandIn()  # the tail rule below needs the last frame of a full decode
                # The stream ended before the run did.
                if last_frame is None or run[-1] > last_index + TAIL_SLACK:
                    raise DecodeError(f"video ends at frame {last_index}, clip needs frame {run[-1]}")
                rgb = to_rgb(last_frame)
                for i in run:
                    out.setdefault(i, rgb)
            return out

        for run in _runs(wanted, gop if gop else DEFAULT_SEEK_GAP):
            frames = None
            if skip_unused:
                try:
                    frames = decode_run(run, True)
                except _StandIn:
                    pass  # decoded again below, in full (outside the handler: the selective pass is closed)
            got.update(frames if frames is not None else decode_run(run, False))
    finally:
        container.close()
    return np.stack([got[i] for i in indices])
