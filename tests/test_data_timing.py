"""Shards keep the source's time and orientation: scripts/make_shards.py on sources with a
variable frame rate, a 60 fps rate, a start offset and B-frames, and on rotated phone-style
videos. Each source frame is painted with its index (videodata.synthetic.frame_marker), so
the tests read back which source frame every stored frame shows."""

import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from videodata import build_eval_loader, decode_frames, read_manifest
from videodata.synthetic import MARK_OFFSET, MARK_STEP, frame_marker

HEIGHT, WIDTH = 32, 48


def write_video(path: Path, times, *, fmt: str, time_base: Fraction, rate=30, paint=None, rotation: int = 0,
                tags: dict | None = None) -> Path:
    """H.264 with B-frames, frame i shown from times[i] seconds on. (Without scenecut=0,
    x264 makes every frame of a changing flat colour a keyframe.)"""
    paint = paint or (lambda i: np.broadcast_to(np.array(frame_marker(i), np.uint8), (HEIGHT, WIDTH, 3)))
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=rate, options={"x264-params": "bframes=3:b-adapt=0:scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = time_base
        stream.metadata.update(tags or {})
        if rotation:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(paint(i)), format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


# name: (container, time base, frame times in seconds)
TIMINGS = {
    # a phone in low light: 50 frames at 30 fps, then 50 at 15 fps (20.4 fps on average)
    "vfr.mp4": ("mp4", Fraction(1, 90000), [i / 30 for i in range(50)] + [5 / 3 + i / 15 for i in range(50)]),
    "fps60.mp4": ("mp4", Fraction(1, 60), [i / 60 for i in range(90)]),
    # timestamps from 1.5 s on, in webm/mkv's milliseconds (rounded: 33, 67, 100, ...)
    "offset.mkv": ("matroska", Fraction(1, 1000), [1.5 + round(i * 1000 / 30) / 1000 for i in range(40)]),
}


@pytest.fixture(scope="module")
def timed(make_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("timing")
    (root / "videos").mkdir()
    for name, (fmt, tb, times) in TIMINGS.items():
        write_video(root / "videos" / name, times, fmt=fmt, time_base=tb, rate=round(1 / (times[1] - times[0])))
    for out, extra in (("default", []), ("max30", ["--max-fps", "30"])):
        assert make_shards.main(["unlabeled", str(root / "videos"), "--out", str(root / out), "--workers", "0",
                                 "--no-progress", *extra]) == 0
    return root


def stored(out_dir: Path) -> dict:
    """{id: (meta, video bytes)} of every sample in out_dir's shards."""
    samples = {}
    for shard in sorted(out_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {n: tar.extractfile(n).read() for n in tar.getnames()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                video = next(v for n, v in members.items() if n.startswith(name[:-4]) and n != name)
                samples[meta["id"]] = (meta, video)
    return samples


def markers(rgb: np.ndarray) -> list[int]:
    """(T, H, W, 3) frames painted by frame_marker -> their indices."""
    med = np.median(rgb.reshape(len(rgb), -1, 3), axis=1)
    return [round((r - MARK_OFFSET) / MARK_STEP) + 16 * round((g - MARK_OFFSET) / MARK_STEP) for r, g, _ in med]


def on_screen(times, t: float, tick: float) -> int:
    """Index of the source frame on screen at `t` seconds after the first frame; a frame
    less than one time-base tick late counts as on time (its timestamp was rounded)."""
    return max(i for i, ti in enumerate(times) if ti - times[0] <= t + min(tick, 1e-3))


@pytest.mark.parametrize("name, out, fps", [("vfr.mp4", "default", 1000 / 49), ("fps60.mp4", "default", 60),
                                            ("fps60.mp4", "max30", 30), ("offset.mkv", "default", 30)])
def test_stored_frames_keep_source_time(timed, name, out, fps):
    _, time_base, times = TIMINGS[name]
    meta, video = stored(timed / out)[Path(name).stem]
    assert meta["fps"] == pytest.approx(fps, rel=1e-3)
    # as long as the source (its last frame shows for one frame interval), to one stored frame
    length = times[-1] - times[0] + (times[-1] - times[-2])
    assert abs(meta["duration"] - length) <= 1 / fps
    assert meta["duration"] == pytest.approx(meta["frames"] / fps, abs=1e-4)
    # stored frame k shows the source frame on screen at k / fps
    shown = markers(decode_frames(video, range(meta["frames"])))
    assert shown == [on_screen(times, k / fps, float(time_base)) for k in range(meta["frames"])]


def test_vfr_source_has_reordered_frames(timed):
    # B-frames: decoding order differs from presentation order, which the timing must survive
    with av.open(str(timed / "videos" / "vfr.mp4")) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert pts != sorted(pts)


def two_colours(i: int) -> np.ndarray:
    """Left half red, right half blue: which way is up after rotation shows in the halves."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, : WIDTH // 2], frame[:, WIDTH // 2:] = (220, 30, 30), (30, 30, 220)
    return frame


@pytest.fixture(scope="module")
def rotated(make_shards, tmp_path_factory):
    """shards(variant) -> the folder of the rotated sources' shards made with that variant's
    options (made on first use)."""
    root = tmp_path_factory.mktemp("rotation")
    videos = root / "videos"
    videos.mkdir()
    times = [i / 30 for i in range(12)]
    # display matrices (counter-clockwise degrees, as PyAV writes and reads them) in a phone's
    # .mov, and the older `rotate` tag (clockwise degrees) that survives remuxing to mkv
    write_video(videos / "ccw90.mov", times, fmt="mov", time_base=Fraction(1, 30), paint=two_colours, rotation=90)
    write_video(videos / "ccw270.mov", times, fmt="mov", time_base=Fraction(1, 30), paint=two_colours, rotation=270)
    write_video(videos / "tag90.mkv", times, fmt="matroska", time_base=Fraction(1, 1000), paint=two_colours,
                tags={"rotate": "90"})
    variants = {"reencoded": [], "copy": ["--copy"], "raw": ["--no-autorotate"],
                "raw_copy": ["--copy", "--no-autorotate"]}

    def shards(variant: str) -> Path:
        out = root / variant
        if not out.exists():
            assert make_shards.main(["unlabeled", str(videos), "--out", str(out), "--workers", "0",
                                     "--no-progress", *variants[variant]]) == 0
        return out

    return shards


# Where the source's left (red) half ends up as a player shows the video.
RED_ENDS_UP = {"ccw90": "bottom", "ccw270": "top", "tag90": "top"}


@pytest.mark.parametrize("out", ["reencoded", "copy"])
@pytest.mark.parametrize("name", sorted(RED_ENDS_UP))
def test_frames_are_upright(rotated, out, name):
    folder = rotated(out)
    meta, _ = stored(folder)[name]
    assert (meta["width"], meta["height"]) == (HEIGHT, WIDTH)  # portrait
    manifest = read_manifest(folder)
    loader = build_eval_loader(str(folder / manifest["url_pattern"]), frames=2, stride=1, crop=24,
                               num_clips=1, num_crops=1, batch_size=8, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1))
    batch = next(b for b in loader if name in b["video_id"])
    video = batch["video"][batch["video_id"].index(name)]  # (3, T, 24, 24), the centre of the portrait frame
    top, bottom = video[:, :, :8].mean(dim=(1, 2, 3)), video[:, :, -8:].mean(dim=(1, 2, 3))
    red, blue = (top, bottom) if RED_ENDS_UP[name] == "top" else (bottom, top)
    assert red[0] > 0.7 and red[2] < 0.3 and blue[2] > 0.7 and blue[0] < 0.3


@pytest.mark.parametrize("out", ["raw", "raw_copy"])
def test_no_autorotate_keeps_frames_as_stored(rotated, out):
    for name in RED_ENDS_UP:
        meta, video = stored(rotated(out))[name]
        assert (meta["width"], meta["height"]) == (WIDTH, HEIGHT) and meta["rotation"] == 0
        frame = decode_frames(video, [0], rotation=meta["rotation"])[0].astype(int)
        assert frame.shape == (HEIGHT, WIDTH, 3)
        assert frame[:, :8, 0].mean() > 180 and frame[:, -8:, 2].mean() > 180  # red left, blue right
