"""Learning contracts: short runs of the real entry points, with their default recipes, must
learn, measured against predictors that need no learning.

- MaskFeat: after pretraining, the masked-token HOG loss on the training clips is at most
  0.8x the loss of both trivial predictors, computed here on the same clips and masks: the
  mean target vector, and the mean target of the clip's visible tokens (the best
  context-free guess).
- MAE (`task=mae`): the masked-token loss of per-patch normalized pixels on central clips with fresh
  masks is at most 0.8x that of each trivial predictor: zero (the mean of every normalized patch), the
  batch mean, and the clip's visible-patch mean (strong on the demo's videos: a clip's colour cast
  survives the normalization). Demo videos (a flat shape over a still photograph).
- Classification: a from-scratch finetune fits its own training clips (>= 90 % top-1).

The MaskFeat and finetuning data is an older kind of demo video (a striped shape moving over still
gratings), tiny.
With the old demo recipe (lr 4e-3 per 32 clips) the same model collapsed to the mean
predictor (token-constant outputs) within ~40 steps, in our loop and in a plain one.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_learning_shards(root: Path, videos: int, seed: int, background: str) -> str:
    """`videos` synthetic 24-frame 96x128 videos of one background kind, in two labelled shards."""
    from videodata import write_shards, write_synthetic_videos
    from videodata.synthetic import LABELS
    made = write_synthetic_videos(root / "videos", videos, frames=24, size=(96, 128), seed=seed,
                                  background=background)
    manifest = write_shards(made, root / "shards", name="train", max_count=videos // 2, short_side=96,
                            classes=sorted(LABELS))
    return str(root / "shards" / manifest["url_pattern"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_learning_shards(tmp_path_factory.mktemp("learn_data"), 12, seed=5, background="stripes")


def run(stage: str, args: list[str]):
    r = subprocess.run([sys.executable, str(ROOT / stage / "run.py"), *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def center_clips(urls: str, crop: int):
    from videodata import build_eval_loader
    batches = list(build_eval_loader(urls, frames=8, stride=2, crop=crop, short_side=96, num_workers=0,
                                     batch_size=16))
    return torch.cat([b["video"] for b in batches]), torch.cat([b["label"] for b in batches])


def heldout_masked_loss(out, shards: str, target_name: str, **trivial_options) -> tuple[float, dict]:
    """The pretraining run in `out` (its last checkpoint) on the central clips of `shards`, masks
    from seed 0: its loss on the masked tokens, and the trivial predictors' on the same tokens."""
    from pretrain.masking import upsample_mask
    from pretrain.run import load_task
    task, cfg = load_task(out)
    video, _ = center_clips(shards, cfg.data.crop)
    torch.manual_seed(0)
    with torch.no_grad():
        units = task.make_masks(len(video), "cpu")
        masked = upsample_mask(units, task.token_grid).flatten(1)
        target = task.targets(video)[target_name]
        pred = task.heads[target_name](task.forward_encoder(video, units))
        loss = ((pred - target) ** 2).mean(-1)[masked].mean().item()
        trivial = {k: v.item() for k, v in task.trivial_losses(target, masked, **trivial_options).items()}
    return loss, trivial


def test_maskfeat_pretraining_beats_the_trivial_predictors(shards, tmp_path):
    out = tmp_path / "pt"
    run("pretrain", [f"data.train={shards}", f"train.output_dir={out}", "train.steps=450", "train.progress=false",
                     "train.image_every=0", "train.save_every=450", "data.num_workers=1"])
    loss, trivial = heldout_masked_loss(out, shards, "hog")
    print("MaskFeat held-out masked loss", loss, trivial)
    assert loss <= 0.8 * trivial["mean"] and loss <= 0.8 * trivial["visible"], (loss, trivial)
    # the run's own log says the same about its training batches
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["train/loss_hog"] < min(last["train/trivial_mean_hog"], last["train/trivial_visible_hog"])


@pytest.fixture(scope="module")
def scene_shards(tmp_path_factory):
    """The demo's kind of video (videodata/demo.py): a flat shape crossing a still photograph."""
    return write_learning_shards(tmp_path_factory.mktemp("scene_data"), 24, seed=7, background="scene")


def test_mae_pretraining_beats_the_trivial_predictors(scene_shards, tmp_path):
    """The MAE demo recipe (task=mae: sin-cos position tables at the start, mask 0.75) with a smaller ViT
    and decoder, on demo videos, shortened for CI: 1000 steps of 16 clips at a constant lr 4e-3 (the
    copy of a still background from another frame is learned late: with the preset's cosine decay at 8
    clips, 1000 steps reached 0.85-0.88x the visible mean; docs/mae.md)."""
    out = tmp_path / "mae"
    run("pretrain", ["task=mae", f"data.train={scene_shards}", f"train.output_dir={out}", "train.steps=1000",
                     "train.batch_size=16", "optim.min_lr=4e-3", "model.arch={depths: [4], embed_dim: 64}",
                     "decoder.dim=64", "decoder.depth=1", "decoder.heads=2", "train.progress=false",
                     "train.image_every=0", "train.save_every=1000", "data.num_workers=1"])
    loss, trivial = heldout_masked_loss(out, scene_shards, "pixel", with_zero=True)
    print("MAE held-out masked loss", loss, trivial)
    assert loss <= 0.8 * min(trivial["zero"], trivial["mean"], trivial["visible"]), (loss, trivial)


def test_finetune_from_scratch_fits_its_training_clips(shards, tmp_path):
    out = tmp_path / "ft"
    run("finetune", [f"data.train={shards}", f"data.val={shards}", "init=none", f"train.output_dir={out}",
                     "train.steps=200", "train.progress=false", "val_every=0", "data.num_workers=1",
                     "data.test_clips=1", "train.save_every=200"])
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["videos"] == 12
    assert metrics["top1"] >= 0.9, metrics
