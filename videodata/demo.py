"""The synthetic demo dataset both stages default to: labelled mp4 videos -> shards.

Three splits, so that the demo shows what pretraining is for:

    pretrain  many videos; MaskFeat ignores their labels (the "unlabeled" collection)
    train     few labelled videos per class (the low-label finetuning set)
    val       held-out videos for testing and the frozen kNN / linear probe

Every video is a shape filled with a grating moving in front of a still grating of another
orientation ("stripes" in videodata/synthetic.py): strong gradients in every HOG cell, so
MaskFeat's targets carry structure, not codec noise, and the class (shape x direction)
needs both the outline and the motion.

Made once under `root` and reused; the manifests are written last, so a half-made set is
never taken for a finished one, and a set made with another SPEC is made again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from videodata.shards import read_manifest, write_shards
from videodata.synthetic import LABELS, write_synthetic_videos

# split: (videos, seed); classes are balanced (video i has class i % 12)
SPLITS = {"pretrain": (360, 10), "train": (48, 0), "val": (96, 1)}
SPEC = {"version": 2, "background": "stripes", "frames": 40, "size": [144, 192], "splits": SPLITS}


def demo_urls(root: str | Path) -> dict[str, str]:
    """{split: url pattern} of the demo shards under root."""
    root = Path(root)
    return {split: str(root / "shards" / read_manifest(root / "shards" / f"{split}-manifest.json")["url_pattern"])
            for split in SPLITS}


def _is_complete(root: Path) -> bool:
    spec = root / "spec.json"
    shards = root / "shards"
    return (spec.is_file() and json.loads(spec.read_text()) == json.loads(json.dumps(SPEC))
            and all((shards / f"{s}-manifest.json").is_file() for s in SPLITS))


def ensure_demo_dataset(root: str | Path, *, progress: bool = True) -> dict[str, str]:
    """Create the demo dataset under root unless it is complete; returns demo_urls(root)."""
    root = Path(root)
    if _is_complete(root):
        return demo_urls(root)
    shutil.rmtree(root / "shards", ignore_errors=True)  # an older demo set, or a half-made one
    (root / "spec.json").unlink(missing_ok=True)
    videos = root / "videos"
    height, width = SPEC["size"]
    for split, (count, seed) in SPLITS.items():
        if progress:
            print(f"making the synthetic demo dataset: {count} {split} videos")
        samples = write_synthetic_videos(videos / split, count, frames=SPEC["frames"], size=(height, width),
                                         seed=seed, background=SPEC["background"])
        write_shards(samples, root / "shards", name=split, max_count=64, short_side=height, workers=1, seed=seed,
                     classes=sorted(LABELS), progress=progress)
    shutil.rmtree(videos, ignore_errors=True)  # the shards hold everything the runs need
    (root / "spec.json").write_text(json.dumps(SPEC))
    return demo_urls(root)
