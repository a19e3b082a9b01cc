"""The cheaper decoding paths return exactly the frames they claim: selective decoding
(non-reference frames a clip does not use are skipped), the reference-frame shard layout
(`ref_stride`), CAVLC shards, and clips started on the reference grid (`align_starts`).
Every frame is painted with its index (videodata.synthetic.frame_marker), so the tests read
back which source frame each returned frame is."""

import io
import random
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from test_data_timing import TIMINGS, markers, write_video
import videodata.decode
from videodata import build_train_loader, decode_frames, read_manifest, write_shards, write_synthetic_videos
from videodata.encode import encode_frames
from videodata.sampling import random_clip
from videodata.synthetic import frame_marker

FRAMES = 64


def marked(n: int = FRAMES) -> np.ndarray:
    """(n, 32, 48, 3) frames, frame i a flat frame_marker(i) colour."""
    return np.stack([np.broadcast_to(np.array(frame_marker(i), np.uint8), (32, 48, 3)) for i in range(n)])


@pytest.fixture(scope="module")
def videos():
    frames = marked()
    return {"x264 default": encode_frames(frames, fps=30, gop=16),
            "ref_stride 4": encode_frames(frames, fps=30, gop=16, ref_stride=4),
            "ref_stride 4, cavlc": encode_frames(frames, fps=30, gop=16, ref_stride=4, cavlc=True)}


def nonref_skipping_decode(data: bytes) -> list[int]:
    """Indices of the frames a decoder keeps with skip_frame=NONREF (the reference frames)."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        return sorted(round(f.pts * s.time_base * 30) for f in c.decode(s))


CLIPS = [list(range(0, 61, 4)), list(range(4, 64, 4)), list(range(1, 62, 4)), list(range(2, 60, 3)),
         [5, 6, 7], [63, 0, 17, 17, 40], list(range(0, 61, 4)) + list(range(3, 64, 4))]


@pytest.fixture
def fallbacks(monkeypatch):
    """Counts the runs that selective decoding hands back to a full decode."""
    count = []
    original = videodata.decode._StandIn.__init__
    monkeypatch.setattr(videodata.decode._StandIn, "__init__", lambda self: (count.append(1), original(self))[1])
    return count


@pytest.mark.parametrize("kind", ["x264 default", "ref_stride 4", "ref_stride 4, cavlc"])
def test_selective_decoding_returns_the_frames_asked_for(videos, kind, fallbacks):
    for clip in CLIPS:
        fast = decode_frames(videos[kind], clip, fps=30, gop=16)  # skip_unused=True is the default
        assert markers(fast) == clip
        assert np.array_equal(fast, decode_frames(videos[kind], clip, fps=30, gop=16, skip_unused=False))
    assert not fallbacks  # constant-rate video: every run was decoded selectively


def test_ref_stride_layout_puts_every_4th_frame_on_a_reference(videos):
    refs = nonref_skipping_decode(videos["ref_stride 4"])
    assert set(range(0, FRAMES, 4)) <= set(refs)
    assert len(refs) <= FRAMES // 4 + FRAMES // 16 + 1  # + the P-frame closing each GOP, + the last frame
    # x264's own layout keeps more references and misses some of the grid
    assert len(nonref_skipping_decode(videos["x264 default"])) > len(refs)
    with pytest.raises(ValueError):
        encode_frames(marked(8), fps=30, gop=16, ref_stride=3)


def test_selective_decoding_of_variable_rate_video_matches_full_decoding(tmp_path, fallbacks):
    # 30 fps, then 15 fps: at 30 fps indices half of the later ones have no frame of their own
    # and the next frame stands in; skipping must not change which frame that is.
    fmt, tb, times = TIMINGS["vfr.mp4"]
    path = write_video(tmp_path / "vfr.mp4", times, fmt=fmt, time_base=tb, rate=30)
    for clip in ([52, 53, 54, 55, 56], list(range(40, 100, 4)), [10, 11, 60, 61]):
        fast = decode_frames(str(path), clip, fps=30)
        assert np.array_equal(fast, decode_frames(str(path), clip, fps=30, skip_unused=False))
    assert fallbacks  # the stand-in frames came from full decodes


def test_random_clip_aligned_starts():
    rng = random.Random(0)
    starts = {random_clip(40, 4, 4, rng, align=4)[0] for _ in range(300)}
    assert starts == {0, 4, 8, 12, 16, 20, 24}  # span 13: last start 27, on the grid 24
    assert {random_clip(40, 4, 4, rng)[0] for _ in range(300)} == set(range(28))


@pytest.fixture(scope="module")
def ref4_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref4")
    videos = write_synthetic_videos(root / "videos", 4, size=(32, 48), frames=40, mark_frames=True)
    manifest = write_shards(videos, root / "shards", max_count=2, short_side=32, ref_stride=4, cavlc=True)
    assert manifest["options"]["ref_stride"] == 4 and manifest["options"]["cavlc"]
    return str(root / "shards" / manifest["url_pattern"])


def loader_clips(urls, **kw) -> list[tuple[list[int], list[int]]]:
    """[(frame_index, frame indices read from the pixels)] over two batches."""
    from test_data_roundtrip import read_markers

    loader = build_train_loader(urls, frames=4, crop=24, batch_size=4, num_workers=0, epoch_samples=8,
                                mean=(0.45,) * 3, std=(0.225,) * 3, **kw)
    return [(b["frame_index"][i].tolist(), read_markers(b["video"][i])) for b in loader for i in range(len(b["video"]))]


def test_loader_aligned_starts_on_ref_stride_shards(ref4_shards):
    aligned = loader_clips(ref4_shards, stride=4, align_starts=True, repeats=2)
    assert all(index == seen for index, seen in aligned)
    assert all(i % 4 == 0 for index, _ in aligned for i in index)
    # the reference's sampling stays the default; a stride the grid does not divide is never aligned
    for kw in (dict(stride=4), dict(stride=2, align_starts=True)):
        clips = loader_clips(ref4_shards, seed=1, **kw)
        assert all(index == seen for index, seen in clips)
        assert any(index[0] % 4 for index, _ in clips)


def test_uint8_clips_normalized_on_the_device_equal_the_loaders_float_clips(ref4_shards):
    from test_data_roundtrip import read_markers
    from videodata import normalize_video

    kw = dict(frames=4, stride=4, crop=24, batch_size=4, num_workers=0, epoch_samples=4, seed=3,
              mean=(0.45,) * 3, std=(0.225,) * 3)
    host = next(iter(build_train_loader(ref4_shards, **kw)))
    raw = next(iter(build_train_loader(ref4_shards, normalize=False, **kw)))
    assert raw["video"].dtype == torch.uint8 and raw["video"].shape == host["video"].shape
    assert raw["frame_index"].tolist() == host["frame_index"].tolist()
    video = normalize_video(raw["video"], (0.45,) * 3, (0.225,) * 3)
    assert torch.allclose(video, host["video"], atol=1e-6)
    assert all(read_markers(v) == i for v, i in zip(video, raw["frame_index"].tolist()))
    with pytest.raises(ValueError):
        build_train_loader(ref4_shards, normalize=False, erase_prob=0.25, **kw)


def test_pretraining_normalizes_the_loaders_uint8_clips_on_the_device():
    from pretrain.run import PretrainConfig, clips_normalizer
    from videodata.transforms import Normalize

    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)  # (B, 3, T, H, W)
    batch = clips_normalizer(PretrainConfig())({"video": clips, "label": None})
    host = torch.stack([Normalize((0.45,) * 3, (0.225,) * 3)(c.permute(1, 0, 2, 3)) for c in clips])
    assert batch["video"].dtype == torch.float32 and torch.equal(batch["video"], host)
    cfg = PretrainConfig()
    cfg.data.normalize_on_device = False
    assert clips_normalizer(cfg) is None


def test_make_shards_defaults_to_the_fast_decoding_layout(make_shards, tmp_path):
    write_synthetic_videos(tmp_path / "videos", 1, size=(32, 48), frames=12)
    runs = {"default": [], "x264": ["--ref-stride", "0", "--entropy", "cabac"], "gop 30": ["--gop", "30"]}
    for name, extra in runs.items():
        assert make_shards.main(["folders", str(tmp_path / "videos"), "--out", str(tmp_path / name), "--workers", "0",
                                 "--no-progress", *extra]) == 0
    options = {name: read_manifest(tmp_path / name)["options"] for name in runs}
    assert (options["default"]["ref_stride"], options["default"]["cavlc"]) == (4, True)
    assert (options["x264"]["ref_stride"], options["x264"]["cavlc"]) == (None, False)
    assert options["gop 30"]["ref_stride"] is None  # 4 does not divide 30: x264's layout
    assert make_shards.main(["folders", str(tmp_path / "videos"), "--out", str(tmp_path / "bad"),
                             "--ref-stride", "3"]) == 2
