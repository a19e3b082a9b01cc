"""The loader: webdataset shards -> decoded, sampled, augmented clip batches.

Splitting. Every DataLoader worker of every rank is one "slot" g of G = world_size x
num_workers. With at least G shards, slot g owns shards g, g + G, ... and reads nothing
else; with fewer shards every slot reads every shard and keeps the samples at positions
g, g + G, ... of each. Either way no two slots ever see the same sample, so the training
loader is complete as it is: do not pass it through `accelerator.prepare` (that would
shard it a second time). Rank and world size come from the arguments, else from
torch.distributed when initialized, else from the RANK / WORLD_SIZE variables that
`accelerate launch` and torchrun set.

Training streams forever: each slot draws its own shards with replacement (resampled),
reads them through a shuffle buffer, and an "epoch" is only a count of batches
(`epoch_samples` videos over all ranks, default: the manifest's total). The stream is
seeded by (seed, start_epoch, rank, worker) and continues across epochs (workers are
persistent), so pass a different `start_epoch` when resuming to draw fresh samples.

Evaluation reads each video exactly once over all ranks and workers (no resampling) and
yields every view (clip x crop) of it, tagged with the video id and view index.

Masks for masked-token pretraining can be made here too (`mask_generator`): each worker
draws every batch's masks with a torch.Generator seeded by (seed, start_epoch, rank,
worker, batch index), so the main process does no per-clip mask work and a run (or a
resumed run, which passes its start step as start_epoch) draws the same masks again.

A sample that fails to decode or is too short is skipped with a one-line warning and
counted; each batch's "skipped" is the number its worker skipped since its previous batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from videodata.decode import DecodeError, decode_frames, one_line
from videodata.sampling import TooShortError, random_clip, segment_clip, segment_clips, uniform_clips
from videodata.shards import manifest_for_urls
from videodata.sources import VIDEO_EXTENSIONS
from videodata.transforms import KINETICS_MEAN, KINETICS_STD, EvalTransform, TrainTransform

log = logging.getLogger("videodata")
_VIDEO_KEYS = tuple(e.lstrip(".") for e in VIDEO_EXTENSIONS)


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed, else RANK / WORLD_SIZE, else (0, 1)."""
    if rank is not None and world_size is not None:
        pass
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
    return rank, world_size


def expand_urls(urls) -> list[str]:
    """Shard URLs from a brace pattern ("a-{000000..000009}.tar"), several joined by "::",
    or a list of them. Local paths and anything webdataset's gopen opens: http(s):// (curl),
    gs:// (gsutil), and "pipe:cmd", which runs `cmd` in a shell and reads its stdout."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [str(urls)]
    out = []
    for u in urls:
        out.extend(wds.shardlists.expand_urls(str(u)))
    if not out:
        raise ValueError("no shard URLs")
    return out


@dataclass
class Sample:
    """One video read from a shard."""

    data: bytes
    meta: dict
    key: str

    @property
    def video_id(self) -> str:
        return str(self.meta.get("id") or self.key)

    @property
    def label(self) -> int:
        label = self.meta.get("label", -1)
        return -1 if label is None else int(label)

    @property
    def num_frames(self) -> int:
        n = int(self.meta.get("frames") or 0)
        if n <= 0:
            raise DecodeError("sample has no frame count")
        return n


def _to_sample(raw: dict) -> Sample:
    video = next((raw[k] for k in _VIDEO_KEYS if k in raw), None)
    if video is None:
        raise DecodeError(f"no video file in sample (has {sorted(k for k in raw if not k.startswith('__'))})")
    meta = json.loads(raw["json"]) if "json" in raw else {}
    return Sample(video, meta, raw["__key__"])


class _Slot:
    """This worker's place among all readers: slot g of G, and its own RNG."""

    def __init__(self, rank: int, world_size: int, seed: int, epoch: int):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.rank, self.worker = rank, worker
        self.index, self.count = rank * workers + worker, world_size * workers
        self.rng = random.Random(f"{seed}/{epoch}/{rank}/{worker}")
        self.mask_seeds = random.Random(f"mask/{seed}/{epoch}/{rank}/{worker}")  # one seed per batch


class TooManyFailures(RuntimeError):
    """Nothing decoded for max_consecutive_failures samples in a row: the data or the clip
    settings are wrong, and waiting longer would not help."""


class _FailureGuard:
    """Counts skips; raises when nothing has succeeded for too long (never loop forever).
    Warnings are rate-limited: the first few, then one every `quiet_every` skips."""

    def __init__(self, limit: int, loud: int = 10, quiet_every: int = 100):
        self.limit, self.consecutive, self.since_batch, self.total = limit, 0, 0, 0
        self.loud, self.quiet_every = loud, quiet_every

    def failed(self, what: str, reason: str, sample: bool = True):
        self.total += 1
        if self.total <= self.loud or self.total % self.quiet_every == 0:
            more = f" ({self.total} skipped by this worker so far)" if self.total > self.loud else ""
            log.warning("videodata: skipped %s: %s%s", what, reason, more)
        self.since_batch += int(sample)
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise TooManyFailures(f"videodata: {self.consecutive} consecutive failures (last: {what}: {reason}); "
                                  "check the shards with scripts/make_shards.py --check and the clip length")

    def ok(self):
        self.consecutive = 0

    def take(self) -> int:
        n, self.since_batch = self.since_batch, 0
        return n


def _read_shard(url: str, guard: _FailureGuard):
    """Samples of one shard; an unreadable shard (or tar member) is logged and counted."""

    def handler(exn):
        # webdataset appends the stream and URL to exn.args; the first one is the reason.
        reason = exn.args[0] if exn.args else exn
        guard.failed(f"shard {url}", f"{type(exn).__name__}: {one_line(reason)}", sample=False)
        return True  # continue with the next shard / member

    yield from wds.tarfile_to_samples(handler=handler)([dict(url=url)])


def _describe(raw: dict) -> str:
    """A sample as a user finds it: the video's id from its json (else the tar key) and the shard."""
    try:
        vid = json.loads(raw["json"])["id"]
    except (KeyError, TypeError, ValueError):
        vid = None
    where = f"{raw.get('__key__')} in {raw.get('__url__')}"
    return f"video {vid} (sample {where})" if vid else f"sample {where}"


def _decode(raw: dict, clips_of, short_side: int | None, guard: _FailureGuard):
    """(sample, clips, frames) for one shard sample, or None when it is skipped.

    clips_of(sample) -> list of clips (frame index lists); all of them are decoded in one
    pass: frames is (num_clips * T, H, W, 3) uint8.
    """
    try:
        sample = _to_sample(raw)
        clips = clips_of(sample)
        frames = decode_frames(sample.data, [i for c in clips for i in c], fps=sample.meta.get("fps"),
                               gop=sample.meta.get("gop"), short_side=short_side, rotation=sample.meta.get("rotation"))
    except (DecodeError, TooShortError, ValueError) as exn:
        guard.failed(_describe(raw), str(exn))
        return None
    guard.ok()
    return sample, clips, frames


def _my_samples(urls: list[str], slot: _Slot, guard: _FailureGuard, resample: bool):
    """Samples owned by this slot: whole shards when there are enough, else every G-th
    sample of each shard. resample=True draws shards with replacement, forever."""
    if len(urls) >= slot.count:
        mine, pick = urls[slot.index::slot.count], None
    else:
        mine, pick = urls, slot.index
    shards = iter(lambda: slot.rng.choice(mine), None) if resample else iter(mine)
    for url in shards:
        n = -1
        for n, raw in enumerate(_read_shard(url, guard)):
            if pick is None or n % slot.count == pick:
                yield raw
        if n < 0:
            guard.failed(f"shard {url}", "no samples", sample=False)


def _shuffle(samples, size: int, rng: random.Random):
    """Shuffle buffer of `size` samples (videos are large: keep it modest)."""
    buf = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf


def _collate(items: list[dict], skipped: int) -> dict:
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, 3, T, H, W)
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),  # (B,)
        "frame_index": torch.tensor([it["frame_index"] for it in items], dtype=torch.long),  # (B, T)
        "video_id": [it["video_id"] for it in items],
        "view": torch.tensor([it["view"] for it in items], dtype=torch.long),  # (B,)
        "skipped": torch.tensor(skipped, dtype=torch.long),
    }


class TrainClips(IterableDataset):
    """Endless stream of training batches for one rank; see the module docstring.

    One iteration (epoch) yields `batches_per_worker` batches per worker. With a
    mask_generator ((batch_size, generator=torch.Generator) -> bool (B, t, h, w)), every
    batch also carries "mask", drawn in the worker.
    """

    def __init__(self, urls, *, frames: int, stride: int, transform: TrainTransform, batch_size: int,
                 batches_per_worker: int, num_workers: int, rank: int, world_size: int, seed: int = 0,
                 start_epoch: int = 0, shuffle_buffer: int = 64, repeats: int = 1, sampling: str = "random",
                 short_side: int | None = None, max_consecutive_failures: int = 1000, mask_generator=None,
                 align_starts: bool = False):
        if sampling not in ("random", "segment"):
            raise ValueError(f"training sampling must be 'random' or 'segment', got {sampling!r}")
        if batch_size % repeats:
            raise ValueError(f"batch_size {batch_size} is not a multiple of repeats {repeats}")
        self.urls = expand_urls(urls)
        self.frames, self.stride, self.transform = frames, stride, transform
        self.batch_size, self.repeats, self.sampling = batch_size, repeats, sampling
        self.batches_per_worker, self.num_workers = batches_per_worker, max(1, num_workers)
        self.rank, self.world_size, self.seed, self.start_epoch = rank, world_size, seed, start_epoch
        self.shuffle_buffer, self.short_side = shuffle_buffer, short_side
        self.max_consecutive_failures = max_consecutive_failures
        self.mask_generator = mask_generator
        self.align_starts = align_starts
        self._stream = None

    def __len__(self) -> int:
        return self.batches_per_worker * self.num_workers

    @property
    def samples_per_epoch(self) -> int:
        """Videos per epoch over all ranks (each gives `repeats` clips)."""
        return len(self) * self.world_size * self.batch_size // self.repeats

    def _clips(self, sample: Sample, rng: random.Random) -> list[list[int]]:
        if self.sampling == "segment":
            return [segment_clip(sample.num_frames, self.frames, rng=rng) for _ in range(self.repeats)]
        return [random_clip(sample.num_frames, self.frames, self.stride, rng, align=self._align(sample))
                for _ in range(self.repeats)]

    def _align(self, sample: Sample) -> int:
        """The start grid of a random clip: the shard's reference-frame stride when
        align_starts is on and the clip stride is a multiple of it, else 1 (any start)."""
        ref = int(sample.meta.get("ref_stride") or 1)
        return ref if self.align_starts and ref > 1 and self.stride % ref == 0 else 1

    def _batches(self):
        slot = _Slot(self.rank, self.world_size, self.seed, self.start_epoch)
        rng = slot.rng
        guard = _FailureGuard(self.max_consecutive_failures)
        raw = _shuffle(_my_samples(self.urls, slot, guard, resample=True), self.shuffle_buffer, rng)
        items = []
        for r in raw:
            decoded = _decode(r, lambda sample: self._clips(sample, rng), self.short_side, guard)
            if decoded is None:
                continue
            sample, clips, frames = decoded  # frames: (repeats * T, H, W, 3)
            for k, clip in enumerate(clips):
                video = self.transform(frames[k * self.frames:(k + 1) * self.frames], rng)
                items.append(dict(video=video, label=sample.label, frame_index=clip, video_id=sample.video_id,
                                  view=k))
            if len(items) == self.batch_size:
                batch = _collate(items, guard.take())
                if self.mask_generator is not None:
                    generator = torch.Generator().manual_seed(slot.mask_seeds.getrandbits(63))
                    batch["mask"] = self.mask_generator(len(items), generator=generator)
                yield batch
                items = []

    def __iter__(self):
        # The stream outlives one epoch (workers are persistent): no refilling of the
        # shuffle buffer, and epoch e + 1 continues where epoch e stopped.
        if self._stream is None:
            self._stream = self._batches()
        for _ in range(self.batches_per_worker):
            yield next(self._stream)


class EvalClips(IterableDataset):
    """Every video once over all ranks and workers, every view of it; see the module docstring."""

    def __init__(self, urls, *, frames: int, stride: int, transform: EvalTransform, num_clips: int, num_crops: int,
                 sampling: str, batch_size: int, rank: int, world_size: int, short_side: int,
                 pad_short: bool = True, max_consecutive_failures: int = 1000):
        if sampling not in ("uniform", "segment"):
            raise ValueError(f"eval sampling must be 'uniform' or 'segment', got {sampling!r}")
        self.urls = expand_urls(urls)
        self.frames, self.stride, self.transform = frames, stride, transform
        self.num_clips, self.num_crops, self.sampling = num_clips, num_crops, sampling
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.short_side, self.pad_short = short_side, pad_short
        self.max_consecutive_failures = max_consecutive_failures

    @property
    def views_per_video(self) -> int:
        return self.num_clips * self.num_crops

    def _clips(self, sample: Sample) -> list[list[int]]:
        if self.sampling == "segment":
            return segment_clips(sample.num_frames, self.frames, self.num_clips, pad=self.pad_short)
        return uniform_clips(sample.num_frames, self.frames, self.stride, self.num_clips, pad=self.pad_short)

    def _views(self, guard: _FailureGuard):
        """Every view of every video this worker owns, as item dicts."""
        slot = _Slot(self.rank, self.world_size, seed=0, epoch=0)
        for r in _my_samples(self.urls, slot, guard, resample=False):
            decoded = _decode(r, self._clips, self.short_side, guard)
            if decoded is None:
                continue
            sample, clips, frames = decoded  # frames: (num_clips * T, H, W, 3)
            for k, clip in enumerate(clips):
                for c in range(self.num_crops):
                    yield dict(video=self.transform(frames[k * self.frames:(k + 1) * self.frames], c),
                               label=sample.label, frame_index=clip, video_id=sample.video_id,
                               view=k * self.num_crops + c)

    def __iter__(self):
        guard = _FailureGuard(self.max_consecutive_failures)
        items, full = [], None
        for item in self._views(guard):
            # A full batch waits for the next good view, so that videos skipped after it
            # are still counted in some batch (the stream ends here, unlike training's).
            if full is not None:
                yield _collate(full, guard.take())
                full = None
            items.append(item)
            if len(items) == self.batch_size:
                full, items = items, []
        if full is not None or items:
            yield _collate(full or items, guard.take())
        elif guard.since_batch:
            log.warning("videodata: a worker skipped all of its %d samples", guard.since_batch)


def _worker_init(_):
    # Parallelism comes from the workers; torch's intra-op threads would oversubscribe.
    torch.set_num_threads(1)


def build_train_loader(urls, *, frames: int = 16, stride: int = 4, crop: int = 224, batch_size: int = 8,
                       num_workers: int = 4, seed: int = 0, epoch_samples: int | None = None,
                       scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True, short_side: int | None = None,
                       rand_augment: str | None = None, erase_prob: float = 0.0, repeats: int = 1,
                       sampling: str = "random", mean=KINETICS_MEAN, std=KINETICS_STD, rank: int | None = None,
                       world_size: int | None = None, start_epoch: int = 0, shuffle_buffer: int = 64,
                       interpolation: str = "bilinear", pin_memory: bool = False,
                       max_consecutive_failures: int = 1000, mask_generator=None,
                       align_starts: bool = False, normalize: bool = True) -> DataLoader:
    """Training DataLoader over shards; already split across ranks and workers.

    Batches: {"video": float (B, 3, T, crop, crop) normalized (uint8 with normalize=False),
    "label": long (B,) (-1: unlabeled), "skipped": long scalar, "frame_index": long (B, T), "video_id": list[str],
    "view": long (B,) (repeat index)}, plus "mask": bool (B, t, h, w) from
    mask_generator(B, generator=...) when given (made in the workers; see the module
    docstring). B = batch_size clips = batch_size / repeats videos
    with `repeats` clips each (repeated sampling amortizes one decode over several clips).

    len(loader) is the batches per epoch on this rank; loader.dataset.samples_per_epoch
    the videos per epoch over all ranks: epoch_samples (default: the manifest's total)
    rounded up to whole batches on every worker.
    short_side: resize frames while decoding (None: keep the shards' size, 320 by default).
    sampling: "random" (clip of `frames` frames every `stride`) or "segment" (one random
    frame from each of `frames` equal segments of the whole video, for SSv2; stride unused).
    align_starts: random clips start only on the reference-frame grid of shards written
    with a ref_stride that divides `stride` (decoding then skips the frames between;
    docs/data_speed.md); False: any start, as the reference samples.
    normalize: False gives "video" as uint8 (B, 3, T, crop, crop), to be normalized on the
    training device with videodata.normalize_video(video, mean, std) (not with erase_prob).
    """
    url_list = expand_urls(urls)
    rank, world_size = resolve_rank(rank, world_size)
    if epoch_samples is None:
        manifest = manifest_for_urls(url_list)
        if manifest is None:
            raise ValueError("epoch_samples not given and no manifest next to the shards")
        epoch_samples = manifest["total"]
    workers = max(1, num_workers)
    videos_per_batch = batch_size // repeats if repeats else batch_size
    batches_per_worker = max(1, math.ceil(epoch_samples / (world_size * workers * videos_per_batch)))
    transform = TrainTransform(crop, scale=scale, ratio=ratio, flip=flip, rand_augment=rand_augment,
                               erase_prob=erase_prob, mean=mean, std=std, interpolation=interpolation,
                               normalize=normalize)
    dataset = TrainClips(url_list, frames=frames, stride=stride, transform=transform, batch_size=batch_size,
                         batches_per_worker=batches_per_worker, num_workers=num_workers, rank=rank,
                         world_size=world_size, seed=seed, start_epoch=start_epoch, shuffle_buffer=shuffle_buffer,
                         repeats=repeats, sampling=sampling, short_side=short_side,
                         max_consecutive_failures=max_consecutive_failures, mask_generator=mask_generator,
                         align_starts=align_starts)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, worker_init_fn=_worker_init)


def build_eval_loader(urls, *, frames: int = 16, stride: int = 4, crop: int = 224, num_clips: int = 1,
                      num_crops: int = 1, sampling: str = "uniform", batch_size: int = 8, num_workers: int = 2,
                      rank: int | None = None, world_size: int | None = None, short_side: int | None = None,
                      mean=KINETICS_MEAN, std=KINETICS_STD, pad_short: bool = True, pin_memory: bool = False,
                      max_consecutive_failures: int = 1000) -> DataLoader:
    """Multi-view test DataLoader: every video exactly once over all ranks, num_clips x
    num_crops views each.

    Batches as for training plus "video_id" (list[str]) and "view" (long (B,), = clip *
    num_crops + crop) to average the views of a video. The last batch of a worker may be
    smaller. Frames are resized while decoding to `short_side`, by default as the
    reference tests (slowfast/datasets/kinetics.py): short side = crop for several crops,
    crop * 256 / 224 (256 at 224) with one central crop. pad_short: a video shorter than
    a clip repeats its last frame instead of being skipped, so none drops out of the
    metric.
    """
    rank, world_size = resolve_rank(rank, world_size)
    if short_side is None:
        short_side = crop if num_crops > 1 else round(crop * 256 / 224)
    dataset = EvalClips(urls, frames=frames, stride=stride, transform=EvalTransform(crop, num_crops, mean, std),
                        num_clips=num_clips, num_crops=num_crops, sampling=sampling, batch_size=batch_size,
                        rank=rank, world_size=world_size, short_side=short_side, pad_short=pad_short,
                        max_consecutive_failures=max_consecutive_failures)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=_worker_init)
