"""Video data for both stages: shards, decoding, clip sampling, transforms, loaders.

    decode.py     PyAV: probe, full scans, clip frames from bytes (seek + decode forward)
    encode.py     PyAV libx264: mp4 writer, re-encoding (short GOPs, constant rate, upright)
    sampling.py   which frames make a clip (random, uniform multi-view, segment)
    transforms.py crops, flip, RandAugment / random erasing per clip, normalization
    sources.py    Kinetics CSV, SSv2 JSON, class folders, unlabeled inputs
    shards.py     writing tar shards + manifest + failures file; reading the manifest
    pipeline.py   webdataset loaders for training (resampled) and multi-view testing
    synthetic.py  labelled synthetic mp4 videos for tests and the demo
    demo.py       the synthetic demo dataset both stages default to
"""

from videodata.decode import DecodeError, decode_frames, probe, scan_video
from videodata.pipeline import build_eval_loader, build_train_loader, expand_urls, resolve_rank
from videodata.shards import check_videos, read_manifest, write_shards
from videodata.sources import VideoSource
from videodata.synthetic import write_synthetic_videos
from videodata.transforms import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, normalize_video

__all__ = [
    "DecodeError", "decode_frames", "probe", "scan_video",
    "build_train_loader", "build_eval_loader", "expand_urls", "resolve_rank",
    "write_shards", "check_videos", "read_manifest", "VideoSource",
    "write_synthetic_videos",
    "KINETICS_MEAN", "KINETICS_STD", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_video",
]
