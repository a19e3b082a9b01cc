"""Two ranks x two DataLoader workers: training streams never share a sample, evaluation
sees every video exactly once. Ranks are simulated in one process, once through explicit
arguments and once through the RANK / WORLD_SIZE variables that `accelerate launch` sets."""

import pytest
import torch

from videodata import build_eval_loader, build_train_loader, resolve_rank, write_shards, write_synthetic_videos

NUM_VIDEOS = 24


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    videos = write_synthetic_videos(root / "videos", NUM_VIDEOS, frames=12, size=(32, 32), gop=4)
    many = write_shards(videos, root / "many", name="train", max_count=3, reencode=False)  # 8 shards
    few = write_shards(videos, root / "few", name="train", max_count=12, reencode=False)  # 2 shards < 4 slots
    ids = {p.rsplit("/", 1)[1][:-4] for p, _ in videos}
    return dict(ids=ids, many=str(root / "many" / many["url_pattern"]), few=str(root / "few" / few["url_pattern"]))


def test_resolve_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_rank() == (1, 2)
    assert resolve_rank(0, 4) == (0, 4)
    with pytest.raises(ValueError):
        resolve_rank(2, 2)


def train_streams(urls, monkeypatch):
    """{(rank, worker): set of video ids} over two epochs."""
    streams = {}
    for rank in (0, 1):
        if rank == 1:  # rank from the environment, as under `accelerate launch`
            monkeypatch.setenv("RANK", "1")
            monkeypatch.setenv("WORLD_SIZE", "2")
            kwargs = {}
        else:
            kwargs = dict(rank=0, world_size=2)
        loader = build_train_loader(urls, frames=2, stride=2, crop=16, batch_size=2, num_workers=2, seed=0,
                                    epoch_samples=32, **kwargs)
        assert len(loader) == 8  # 32 videos / 2 ranks / 2 per batch
        for _ in range(2):
            for i, batch in enumerate(loader):
                # an IterableDataset's batches come from workers 0, 1, 0, 1, ...
                streams.setdefault((rank, i % 2), set()).update(batch["video_id"])
        del loader
    return streams


@pytest.mark.parametrize("which", ["many", "few"])
def test_train_ranks_and_workers_see_disjoint_samples(shards, monkeypatch, which):
    streams = train_streams(shards[which], monkeypatch)
    assert sorted(streams) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    keys = list(streams)
    for i, a in enumerate(keys):
        assert streams[a] <= shards["ids"]
        for b in keys[i + 1:]:
            assert not streams[a] & streams[b], (a, b)
    assert len(set().union(*streams.values())) >= NUM_VIDEOS // 2


@pytest.mark.parametrize("which", ["many", "few"])
def test_eval_sees_every_video_exactly_once(shards, which):
    seen = []
    for rank in (0, 1):
        loader = build_eval_loader(shards[which], frames=2, stride=2, crop=16, num_clips=2, num_crops=1,
                                   batch_size=3, num_workers=2, rank=rank, world_size=2)
        per_rank = [(vid, int(v)) for b in loader for vid, v in zip(b["video_id"], b["view"])]
        assert per_rank  # both ranks get work
        seen += per_rank
    assert sorted(seen) == sorted((vid, v) for vid in shards["ids"] for v in (0, 1))


def _worker_masks(urls, rank, seed=0, start_epoch=0, mode="cube", batches=4):
    """[(worker, video ids, mask)] of the first batches of one rank's loader with masks."""
    from pretrain.masking import CubeMaskGenerator
    masker = CubeMaskGenerator((4, 7, 7), 0.4, min_area=9, mode=mode)
    loader = build_train_loader(urls, frames=2, stride=2, crop=16, batch_size=3, num_workers=2, seed=seed,
                                epoch_samples=48, rank=rank, world_size=2, start_epoch=start_epoch,
                                mask_generator=masker)
    out = []
    for i, batch in zip(range(batches), loader):
        assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (3, 4, 7, 7)
        out.append((i % 2, batch["video_id"], batch["mask"]))
    return out


def test_loader_workers_make_reproducible_masks(shards):
    first = _worker_masks(shards["many"], rank=0)
    again = _worker_masks(shards["many"], rank=0)
    for (w, ids, m), (w2, ids2, m2) in zip(first, again):  # same (seed, epoch, rank, worker, batch): same masks
        assert ids == ids2 and torch.equal(m, m2)
    masks = [m for _, _, m in first]
    assert not torch.equal(masks[0], masks[1])  # worker 0 vs worker 1
    assert not torch.equal(masks[0], masks[2])  # worker 0, batch 0 vs batch 1
    for other in (_worker_masks(shards["many"], rank=1), _worker_masks(shards["many"], rank=0, seed=1),
                  _worker_masks(shards["many"], rank=0, start_epoch=5)):  # a resumed run draws fresh ones
        assert all(not torch.equal(m, o) for (_, _, m), (_, _, o) in zip(first, other))
    # the masker's statistics: round(0.4 * 196) = 78 units at most per clip
    counts = torch.cat(masks).flatten(1).sum(1)
    assert counts.max() <= 78 and counts.float().mean() > 70


@pytest.mark.parametrize("mode", ["tube", "random"])
def test_loader_masks_in_every_mode(shards, mode):
    masks = torch.cat([m for _, _, m in _worker_masks(shards["many"], rank=0, mode=mode, batches=2)])
    if mode == "tube":
        assert torch.equal(masks, masks[:, :1].expand_as(masks))
    else:
        assert (masks.flatten(1).sum(1) == 78).all()
