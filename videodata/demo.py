"""The synthetic demo dataset both stages default to: labelled mp4 videos -> shards.

Made once under `root` (train and val shard sets plus their manifests) and reused; a
half-made set is never taken for a finished one (the manifests are written last).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from videodata.shards import read_manifest, write_shards
from videodata.synthetic import write_synthetic_videos

SPLITS = {"train": (192, 0), "val": (48, 1)}  # videos, seed


def demo_urls(root: str | Path) -> dict[str, str]:
    """{"train": url pattern, "val": url pattern} of the demo shards under root."""
    root = Path(root)
    return {split: str(root / "shards" / read_manifest(root / "shards" / f"{split}-manifest.json")["url_pattern"])
            for split in SPLITS}


def ensure_demo_dataset(root: str | Path, *, frames: int = 40, size: tuple[int, int] = (144, 192),
                        progress: bool = True) -> dict[str, str]:
    """Create the demo dataset under root if it is not complete; returns demo_urls(root)."""
    root = Path(root)
    shards = root / "shards"
    if all((shards / f"{s}-manifest.json").is_file() for s in SPLITS):
        return demo_urls(root)
    videos = root / "videos"
    for split, (count, seed) in SPLITS.items():
        if progress:
            print(f"making the synthetic demo dataset: {count} {split} videos in {videos / split}")
        samples = write_synthetic_videos(videos / split, count, frames=frames, size=size, seed=seed)
        write_shards(samples, shards, name=split, max_count=48, short_side=min(size), workers=1,
                     seed=seed, progress=progress)
    shutil.rmtree(videos, ignore_errors=True)  # the shards hold everything the runs need
    return demo_urls(root)
