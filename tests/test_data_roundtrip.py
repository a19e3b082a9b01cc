"""Round trip: synthetic videos -> shards -> loaders give the right shapes, labels and
frames. Every synthetic frame carries its own index in its background colour
(videodata.synthetic docstring); the tests read it back from the loader's output."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from videodata import build_eval_loader, build_train_loader, read_manifest, write_shards, write_synthetic_videos

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
NUM_VIDEOS = 12


def video_length(i: int) -> int:
    return 24 + (i * 7) % 25  # 24 .. 48 frames


def read_markers(video: torch.Tensor) -> list[int]:
    """video: (3, T, H, W) normalized -> the frame index encoded in each frame's background
    (red = 8 + 16 * (i % 16), green = 8 + 16 * (i // 16))."""
    pixels = (video * torch.tensor(STD).view(3, 1, 1, 1) + torch.tensor(MEAN).view(3, 1, 1, 1)) * 255
    median = pixels.flatten(2).median(dim=2).values  # (3, T)
    red, green = median[0], median[1]
    return [int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16)) for r, g in zip(red.tolist(), green.tolist())]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    videos = write_synthetic_videos(root / "videos", NUM_VIDEOS, size=(48, 64), mark_frames=True, seed=1,
                                    frames_per_video=video_length)
    manifest = write_shards(videos, root / "shards", name="train", max_count=3, short_side=48, workers=2, seed=0)
    copy = write_shards(videos, root / "copy", name="train", max_count=4, reencode=False, seed=0)
    # label name and length of each video id, from what the generator wrote (not the loader)
    truth = {Path(p).stem: (label, video_length(int(Path(p).stem))) for p, label in videos}
    return dict(root=root, videos=videos, manifest=manifest, copy=copy, truth=truth,
                urls=str(root / "shards" / manifest["url_pattern"]),
                copy_urls=str(root / "copy" / copy["url_pattern"]))


def test_shards_and_manifest(dataset):
    m = read_manifest(dataset["root"] / "shards")
    assert m["total"] == NUM_VIDEOS and m["failures"] == 0
    assert [s["count"] for s in m["shards"]] == [3, 3, 3, 3]
    assert m["classes"] == sorted({label for label, _ in dataset["truth"].values()})
    assert m["options"]["short_side"] == 48 and m["command"] is None
    assert not list((dataset["root"] / "shards").glob("*.tmp"))
    seen = []
    for shard in sorted((dataset["root"] / "shards").glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert len(names) == 6 and {n.split(".", 1)[1] for n in names} == {"mp4", "json"}
            for n in names:
                if n.endswith(".json"):
                    meta = json.load(tar.extractfile(n))
                    label, length = dataset["truth"][meta["id"]]
                    assert meta["label_name"] == label and m["classes"][meta["label"]] == label
                    assert meta["frames"] == length and meta["fps"] == 24 and meta["gop"] == 16
                    assert meta["duration"] == pytest.approx(length / 24, abs=1e-3)
                    seen.append(meta["id"])
    assert sorted(seen) == sorted(dataset["truth"])
    # shuffled across shards: not in the input order
    assert seen != sorted(seen)


def shard_ids(folder, manifest):
    """[[sample id, ...] per shard] in tar order."""
    out = []
    for s in manifest["shards"]:
        with tarfile.open(Path(folder) / s["file"]) as tar:
            out.append([json.load(tar.extractfile(n))["id"] for n in tar.getnames() if n.endswith(".json")])
    return out


def test_reruns_place_samples_identically(dataset, tmp_path):
    # Same seed: same samples in the same shards and positions. (The encoded bytes may
    # differ by a few bytes: libx264 is not bit-exact across runs through PyAV.)
    again = write_shards(dataset["videos"], tmp_path, name="train", max_count=3, short_side=48, seed=0)
    assert [s["count"] for s in again["shards"]] == [s["count"] for s in dataset["manifest"]["shards"]]
    first = shard_ids(dataset["root"] / "shards", dataset["manifest"])
    assert shard_ids(tmp_path, again) == first
    other = write_shards(dataset["videos"], tmp_path / "seed1", name="train", max_count=3, reencode=False, seed=1)
    assert shard_ids(tmp_path / "seed1", other) != first
    # a re-run into the same folder with fewer shards removes the stale ones
    write_shards(dataset["videos"][:5], tmp_path, name="train", max_count=3, short_side=48, seed=0)
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == ["train-000000.tar", "train-000001.tar"]


def check_batch(batch, dataset, classes, frames, size):
    b = batch["video"].shape[0]
    assert batch["video"].shape == (b, 3, frames, size, size) and batch["video"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["label"].shape == (b,)
    assert batch["frame_index"].shape == (b, frames)
    assert int(batch["skipped"]) == 0
    for i in range(b):
        label, length = dataset["truth"][batch["video_id"][i]]
        assert classes[int(batch["label"][i])] == label
        index = batch["frame_index"][i].tolist()
        assert max(index) < length
        assert read_markers(batch["video"][i]) == index  # the frames really are those frames


def test_train_random_clips(dataset):
    classes = dataset["manifest"]["classes"]
    loader = build_train_loader(dataset["urls"], frames=4, stride=3, crop=32, batch_size=4, num_workers=0,
                                seed=0, mean=MEAN, std=STD)
    assert len(loader) == 3 and loader.dataset.samples_per_epoch == NUM_VIDEOS  # from the manifest
    starts = []
    for epoch in range(2):
        for batch in loader:
            check_batch(batch, dataset, classes, 4, 32)
            for clip in batch["frame_index"].tolist():
                assert [b - a for a, b in zip(clip, clip[1:])] == [3, 3, 3]
                starts.append(clip[0])
    assert len(set(starts)) > 5  # random temporal positions


def test_train_repeated_sampling(dataset):
    loader = build_train_loader(dataset["urls"], frames=4, stride=2, crop=32, batch_size=6, repeats=3,
                                num_workers=0, seed=3, epoch_samples=NUM_VIDEOS, mean=MEAN, std=STD)
    assert len(loader) == 6  # 12 videos / 2 videos per batch
    batch = next(iter(loader))
    check_batch(batch, dataset, dataset["manifest"]["classes"], 4, 32)
    ids = batch["video_id"]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] == ids[5]
    assert batch["view"].tolist() == [0, 1, 2, 0, 1, 2]


def test_train_segment_sampling_without_flip(dataset):
    loader = build_train_loader(dataset["urls"], frames=6, crop=32, batch_size=4, num_workers=0, seed=1,
                                sampling="segment", flip=False, mean=MEAN, std=STD)
    for batch in loader:
        check_batch(batch, dataset, dataset["manifest"]["classes"], 6, 32)
        for vid, clip in zip(batch["video_id"], batch["frame_index"].tolist()):
            n = dataset["truth"][vid][1]
            seg = (n - 1) / 6
            for i, f in enumerate(clip):
                assert round(seg * i) <= f <= round(seg * (i + 1))


def test_eval_multi_clip_multi_crop(dataset):
    loader = build_eval_loader(dataset["urls"], frames=4, stride=2, crop=32, num_clips=3, num_crops=3,
                               batch_size=5, num_workers=0, mean=MEAN, std=STD)
    views = {}
    for batch in loader:
        check_batch(batch, dataset, dataset["manifest"]["classes"], 4, 32)
        for vid, view, clip in zip(batch["video_id"], batch["view"].tolist(), batch["frame_index"].tolist()):
            views.setdefault(vid, {})[view] = clip
    assert sorted(views) == sorted(dataset["truth"])
    for vid, v in views.items():
        assert sorted(v) == list(range(9))
        n = dataset["truth"][vid][1]
        delta = n - 7  # span of 4 frames at stride 2
        for k in range(3):
            expected = [k * (delta // 2) + 2 * j for j in range(4)]
            assert v[3 * k] == v[3 * k + 1] == v[3 * k + 2] == expected


def test_eval_segment_single_clip(dataset):
    loader = build_eval_loader(dataset["copy_urls"], frames=5, crop=32, num_clips=1, num_crops=3,
                               sampling="segment", batch_size=4, num_workers=0, mean=MEAN, std=STD)
    count = 0
    for batch in loader:
        check_batch(batch, dataset, dataset["manifest"]["classes"], 5, 32)
        for vid, clip in zip(batch["video_id"], batch["frame_index"].tolist()):
            n = dataset["truth"][vid][1]
            seg = (n - 1) / 5
            assert clip == [(round(seg * i) + round(seg * (i + 1))) // 2 for i in range(5)]
            count += 1
    assert count == NUM_VIDEOS * 3


def test_copy_mode_keeps_original_bytes(dataset):
    originals = {p.stem: p.read_bytes() for p in (dataset["root"] / "videos").glob("*/*.mp4")}
    shard = dataset["root"] / "copy" / dataset["copy"]["shards"][0]["file"]
    with tarfile.open(shard) as tar:
        members = {n: tar.extractfile(n).read() for n in tar.getnames()}
    for name, data in members.items():
        if name.endswith(".json"):
            meta = json.loads(data)
            assert meta["reencoded"] is False and meta["gop"] is None
            assert members[name[:-5] + ".mp4"] == originals[meta["id"]]


def test_short_side_resize_while_decoding(dataset):
    # frames decoded at short side 24, so a full-frame crop of 24 needs no resize
    loader = build_train_loader(dataset["urls"], frames=2, stride=1, crop=24, batch_size=2, num_workers=0,
                                short_side=24, scale=(1, 1), ratio=(1, 1), epoch_samples=2, mean=MEAN, std=STD)
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 2, 24, 24)
    assert read_markers(batch["video"][0]) == batch["frame_index"][0].tolist()
    assert np.isfinite(batch["video"].numpy()).all()
