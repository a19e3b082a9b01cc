"""Bad videos never stop a run: at preparation they go to the failures file, at load
they are skipped, warned about and counted."""

import csv
import importlib.util
import io
import json
import os
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

from videodata import build_eval_loader, build_train_loader, read_manifest
from videodata.encode import encode_frames
from videodata.shards import parallel_map

ROOT = Path(__file__).resolve().parents[1]
GOOD_FRAMES = 16


def make_shards_main(args):
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "scripts" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def rgb(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)


def write_with_pyav(target, frames, *, fmt: str, codec: str, pix_fmt: str = "yuv420p", options=None):
    """frames (T, 32, 48, 3) uint8 -> `codec` in a `fmt` container at 12 fps (a path or a buffer)."""
    with av.open(target, "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 48, 32, pix_fmt
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def faststart_mp4(path: Path, n=24) -> bytes:
    """mp4 with the index (moov) first, as web downloads often are: a truncated copy still
    opens and decodes its first frames."""
    write_with_pyav(str(path), rgb(n, 5), fmt="mp4", codec="libx264", options={"movflags": "faststart"})
    return path.read_bytes()


def audio_only_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000, layout="mono")
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def live_webm() -> bytes:
    """A webm as live recorders write it: no duration and no frame count in the header."""
    buf = io.BytesIO()
    write_with_pyav(buf, rgb(GOOD_FRAMES, 7), fmt="webm", codec="libvpx-vp9", options={"live": "1"})
    return buf.getvalue()


def png_image() -> bytes:
    buf = io.BytesIO()
    write_with_pyav(buf, rgb(1), fmt="image2pipe", codec="png", pix_fmt="rgb24")
    return buf.getvalue()


def empty_packets_mkv(source: bytes) -> bytes:
    """An mkv whose video packets are all empty: it opens, its stream looks fine, and
    nothing decodes from it."""
    buf = io.BytesIO()
    with av.open(io.BytesIO(source)) as inp, av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                empty = av.Packet(b"")
                empty.pts, empty.dts, empty.time_base, empty.stream = packet.pts, packet.dts, packet.time_base, stream
                out.mux(empty)
    return buf.getvalue()


def garbled_tail(mp4: bytes) -> bytes:
    """The second half of the frame data replaced by noise, the index (at the end) intact:
    the first frames decode, then FFmpeg's decoder fails."""
    data, start, end = bytearray(mp4), mp4.find(b"mdat"), mp4.rfind(b"moov") - 4
    middle = (start + end) // 2
    data[middle:end] = np.random.default_rng(1).integers(0, 256, end - middle, dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory):
    """{name: bytes} of every kind of bad input, plus three good videos and a short one."""
    tmp = tmp_path_factory.mktemp("bad")
    plain = encode_frames(rgb(24, 1), fps=12)
    files = {
        "zero.mp4": b"",
        "truncated.mp4": plain[: len(plain) // 2],  # index at the end: does not open
        "truncated_faststart.mp4": faststart_mp4(tmp / "fs.mp4")[:-4000],  # opens, then fails
        "audio_only.mp4": audio_only_mp4(),
        "text.mp4": b"this is a text file, not a video\n" * 20,
        "image.mp4": png_image(),
        "noise.mp4": np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "no_frames.mkv": empty_packets_mkv(plain),
        "one_frame.mp4": encode_frames(rgb(1, 6), fps=12),
        "garbled.mp4": garbled_tail(plain),
        "good1.mp4": encode_frames(rgb(GOOD_FRAMES, 2), fps=12),
        "good2.mp4": encode_frames(rgb(GOOD_FRAMES, 3), fps=12),
        "live.webm": live_webm(),
        "short.mp4": encode_frames(rgb(3, 4), fps=12),
    }
    return files


# What each bad input is recorded as: a reason a user can act on (the README's list).
BAD = {
    "missing.mp4": "file not found",
    "zero.mp4": "empty file",
    "truncated.mp4": "truncated or unreadable mp4/mov container: ",
    "truncated_faststart.mp4": "truncated or damaged container after frame ",
    "audio_only.mp4": "not a video file: audio only (aac)",
    "text.mp4": "not a video file: text",
    "image.mp4": "not a video file: png image",
    "noise.mp4": "not a media file: unrecognized format (",
    "no_frames.mkv": "no decodable frames",
    "one_frame.mp4": "too short: 1 frame (fewer than 2)",
    "garbled.mp4": "decode error after frame ",
}


def test_preparation_records_failures_and_completes(bad_files, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for name, data in bad_files.items():
        (src / name).write_bytes(data)
    (src / "list.txt").write_text("".join(f"{name}\n" for name in [*bad_files, "missing.mp4"]))
    out = tmp_path / "shards"
    rc = make_shards_main(["unlabeled", str(src / "list.txt"), "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0
    m = read_manifest(out)
    assert m["total"] == 4 and m["failures"] == len(BAD)  # good1, good2, live, short
    with open(out / "data-failures.csv", newline="") as f:
        rows = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(rows) == set(BAD)
    for name, reason in BAD.items():
        assert rows[name].startswith(reason) and "\n" not in rows[name], (name, rows[name])
    assert rows["garbled.mp4"].endswith(": Invalid data found when processing input")  # FFmpeg's words
    # --check finds the same files and says so with exit code 1
    rc = make_shards_main(["unlabeled", str(src / "list.txt"), "--out", str(tmp_path / "check"), "--check",
                           "--no-progress", "--workers", "1"])
    assert rc == 1
    with open(tmp_path / "check" / "data-failures.csv", newline="") as f:
        assert {Path(r["path"]).name for r in csv.DictReader(f)} == set(BAD)
    assert not list((tmp_path / "check").glob("*.tar"))


def write_raw_shard(path: Path, samples):
    """A shard written by hand, bypassing preparation: (key, video bytes, meta or None)."""
    with tarfile.open(path, "w") as tar:
        for key, data, meta in samples:
            members = [(f"{key}.mp4", data)]
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="session")
def bad_shards(bad_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_shards")
    samples = []
    # (A truncated faststart file, a garbled one and a one-frame one are bad for preparation,
    # but their first frames decode: at load time only some clips would fail, so they are
    # left out here.)
    for i, (name, data) in enumerate(bad_files.items()):
        if name in ("truncated_faststart.mp4", "garbled.mp4", "one_frame.mp4", "live.webm"):
            continue
        frames = 3 if name == "short.mp4" else GOOD_FRAMES
        samples.append((f"{i:04d}", data, dict(id=name, label=i, frames=frames, fps=12)))
    samples.append(("0100", bad_files["good1.mp4"], None))  # no metadata: no frame count
    write_raw_shard(root / "mixed-000000.tar", samples)
    (root / "mixed-000001.tar").write_bytes(b"not a tar file at all" * 50)
    write_raw_shard(root / "allbad-000000.tar", [(f"{i:04d}", b"junk" * 10, dict(frames=8, fps=12))
                                                  for i in range(30)])
    return root


def test_eval_skips_and_counts(bad_shards, caplog):
    urls = str(bad_shards / "mixed-{000000..000001}.tar")
    loader = build_eval_loader(urls, frames=4, stride=2, crop=16, batch_size=2, num_workers=0, pad_short=False)
    ids, skipped = [], 0
    with caplog.at_level("WARNING", logger="videodata"):
        for batch in loader:
            ids += batch["video_id"]
            skipped += int(batch["skipped"])
    assert sorted(ids) == ["good1.mp4", "good2.mp4"]
    # 7 bad files + the short video + the sample without metadata
    assert skipped == 7 + 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("mixed-000001.tar" in m for m in messages)  # the broken shard was reported
    assert all("\n" not in m for m in messages)
    # a skipped video is named by its id (from its json), with the shard it is in
    short = [m for m in messages if "video short.mp4 " in m]
    assert len(short) == 1 and "mixed-000000.tar" in short[0] and "clip needs" in short[0]


def test_eval_pads_short_videos_by_default(bad_shards):
    loader = build_eval_loader(str(bad_shards / "mixed-000000.tar"), frames=4, stride=2, crop=16, batch_size=8,
                               num_workers=0)
    batches = list(loader)
    ids = [i for b in batches for i in b["video_id"]]
    assert sorted(ids) == ["good1.mp4", "good2.mp4", "short.mp4"]
    short = ids.index("short.mp4")
    assert [b["frame_index"] for b in batches][0][short].tolist() == [0, 2, 2, 2]
    assert sum(int(b["skipped"]) for b in batches) == 7 + 1


def test_train_skips_bad_samples_and_keeps_going(bad_shards):
    urls = str(bad_shards / "mixed-{000000..000001}.tar")
    loader = build_train_loader(urls, frames=4, stride=2, crop=16, batch_size=2, num_workers=0, epoch_samples=8,
                                shuffle_buffer=4)
    skipped = 0
    for batch in loader:
        assert set(batch["video_id"]) <= {"good1.mp4", "good2.mp4"}
        assert batch["video"].shape == (2, 3, 4, 16, 16)
        skipped += int(batch["skipped"])
    assert skipped >= 4


@pytest.mark.timeout(60)
def test_nothing_retries_forever(bad_shards):
    loader = build_train_loader(str(bad_shards / "allbad-000000.tar"), frames=4, stride=2, crop=16, batch_size=2,
                                num_workers=0, epoch_samples=4, max_consecutive_failures=50)
    with pytest.raises(RuntimeError, match="consecutive failures"):
        next(iter(loader))


def crash_or_hang(x):
    if x == 3:
        os._exit(7)  # as a segfault inside FFmpeg looks to the parent
    if x == 5:
        time.sleep(120)  # as a decoder stuck in a loop
    return x * 10


@pytest.mark.timeout(60)
def test_preparation_survives_crashing_and_hanging_workers():
    out = list(parallel_map(crash_or_hang, range(8), 2, timeout=2,
                            on_crash=lambda x, reason: ("failed", x, reason)))
    assert [o[1] if isinstance(o, tuple) else o for o in out] == [0, 10, 20, 3, 40, 5, 60, 70]  # in order
    failed = [o for o in out if isinstance(o, tuple)]
    assert all("worker process died" in reason for _, _, reason in failed)
