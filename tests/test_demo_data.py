"""The demo's data: "scene" videos show their class (shape x direction), and the demo dataset's
splits are what docs/demo.md says (a labelled subset of the pretraining collection, held-out
test videos), made once and remade when the spec changes."""
import json

import numpy as np
import pytest

from videodata.synthetic import DIRECTIONS, synthetic_frames


def centroid_track(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) frames of a still scene -> (T, 2) (y, x) centroid of what differs from the
    temporal median (the background: the shape moves on)."""
    background = np.median(frames.astype(np.float32), axis=0)
    moving = np.abs(frames.astype(np.float32) - background).max(-1) > 40  # (T, H, W)
    ys, xs = np.mgrid[0:frames.shape[1], 0:frames.shape[2]]
    return np.stack([[ys[m].mean(), xs[m].mean()] for m in moving])


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_scene_shape_moves_in_its_labelled_direction(direction):
    frames = np.stack(list(synthetic_frames(f"circle_{direction}", frames=24, size=(72, 96), seed=7,
                                            background="scene")))
    dy, dx = centroid_track(frames)[-1] - centroid_track(frames)[0]
    expected = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[direction]
    moved = (dy, dx)
    for axis in (0, 1):
        if expected[axis]:
            assert np.sign(moved[axis]) == expected[axis] and abs(moved[axis]) > 20, (direction, moved)
        else:
            assert abs(moved[axis]) < 3, (direction, moved)


def test_scene_videos_are_reproducible_and_differ_by_seed():
    def first(seed):
        return next(synthetic_frames("square_left", frames=4, size=(72, 96), seed=seed, background="scene"))
    assert np.array_equal(first(1), first(1))
    assert np.abs(first(1).astype(int) - first(2).astype(int)).mean() > 10  # another photograph, crop or cast


def test_demo_dataset_splits_reuse_and_remake(tmp_path):
    from videodata import build_eval_loader, expand_urls
    from videodata.demo import ensure_demo_dataset
    from videodata.shards import manifest_for_urls
    spec = {"frames": 12, "size": [48, 64], "videos": {"pretrain": 36, "val": 12}, "labelled_per_class": 2}
    urls = ensure_demo_dataset(tmp_path, spec=spec, progress=False)
    totals = {split: manifest_for_urls(expand_urls(u))["total"] for split, u in urls.items()}
    assert totals == {"pretrain": 36, "train": 24, "val": 12}

    def ids(split):
        loader = build_eval_loader(urls[split], frames=2, stride=1, crop=32, num_clips=1, num_crops=1,
                                   num_workers=0, batch_size=64)
        return {(v, int(lb)) for b in loader for v, lb in zip(b["video_id"], b["label"])}
    train, pretrain = ids("train"), ids("pretrain")
    assert train <= pretrain  # the labelled videos are a subset of the pretraining collection, same labels
    assert sorted(np.bincount([lb for _, lb in train], minlength=12)) == [2] * 12  # 2 per class

    stamp = (tmp_path / "spec.json").stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path, spec=spec, progress=False) == urls  # complete: reused as it is
    assert (tmp_path / "spec.json").stat().st_mtime_ns == stamp
    remade = ensure_demo_dataset(tmp_path, spec={**spec, "labelled_per_class": 1}, progress=False)  # another spec
    assert json.loads((tmp_path / "spec.json").read_text())["labelled_per_class"] == 1
    assert manifest_for_urls(expand_urls(remade["train"]))["total"] == 12
