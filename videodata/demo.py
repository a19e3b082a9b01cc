"""The synthetic demo dataset both stages default to: labelled mp4 videos -> shards.

Three splits, so that the demo shows what pretraining is for:

    pretrain  every video that is not a test video, with its label in the shard. MaskFeat
              ignores the labels (the "unlabeled" collection); the supervised upper bound
              of scripts/demo_report.py trains on them
    train     the first few videos of each class of `pretrain` (the low-label finetuning set:
              a subset of the pretraining collection, as in low-label benchmarks)
    val       held-out videos for testing and the frozen kNN / linear probe

Every video is a flat shape (circle, square, triangle) crossing a still photograph in one of
four directions ("scene" in videodata/synthetic.py): the class needs the outline and the
motion; the photograph, its crop and colour cast change from video to video, so the nuisance
is natural clutter that a few labels cannot average out.

Made once under `root` and reused; the manifests are written last, so a half-made set is
never taken for a finished one, and a set made with another spec is made again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from videodata.shards import read_manifest, write_shards
from videodata.synthetic import LABELS, write_synthetic_videos

SPEC = {"version": 3, "background": "scene", "frames": 40, "size": [144, 192],
        "videos": {"pretrain": 480, "val": 120}, "seeds": {"pretrain": 10, "val": 1}, "labelled_per_class": 8}
SPLITS = ("pretrain", "train", "val")


def demo_urls(root: str | Path) -> dict[str, str]:
    """{split: url pattern} of the demo shards under root."""
    root = Path(root)
    return {split: str(root / "shards" / read_manifest(root / "shards" / f"{split}-manifest.json")["url_pattern"])
            for split in SPLITS}


def _is_complete(root: Path, spec: dict) -> bool:
    found = root / "spec.json"
    shards = root / "shards"
    return (found.is_file() and json.loads(found.read_text()) == json.loads(json.dumps(spec))
            and all((shards / f"{s}-manifest.json").is_file() for s in SPLITS))


def ensure_demo_dataset(root: str | Path, *, spec: dict | None = None, progress: bool = True) -> dict[str, str]:
    """Create the demo dataset under root unless it is complete; returns demo_urls(root).
    spec: SPEC with other values (a larger or smaller set for experiments and tests)."""
    root = Path(root)
    spec = {**SPEC, **(spec or {})}
    if _is_complete(root, spec):
        return demo_urls(root)
    shutil.rmtree(root / "shards", ignore_errors=True)  # an older demo set, or a half-made one
    (root / "spec.json").unlink(missing_ok=True)
    videos = root / "videos"
    height, width = spec["size"]
    written = {}
    for split in ("pretrain", "val"):
        count, seed = spec["videos"][split], spec["seeds"][split]
        if progress:
            print(f"making the synthetic demo dataset: {count} {split} videos")
        written[split] = write_synthetic_videos(videos / split, count, frames=spec["frames"], size=(height, width),
                                                seed=seed, background=spec["background"])
    # video i has class i % 12: the first k * 12 pretraining videos hold k of each class
    written["train"] = written["pretrain"][:spec["labelled_per_class"] * len(LABELS)]
    for split in SPLITS:
        # the files are ours, written with short keyframe intervals: copied into the shards as they are
        write_shards(written[split], root / "shards", name=split, max_count=64, reencode=False, workers=1,
                     seed=spec["seeds"].get(split, 0), classes=sorted(LABELS), progress=progress)
    shutil.rmtree(videos, ignore_errors=True)  # the shards hold everything the runs need
    (root / "spec.json").write_text(json.dumps(spec))
    return demo_urls(root)
