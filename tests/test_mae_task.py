"""The masked-modeling task in its MAE corner (encoder on the visible tokens, decoder, pixel targets):
masks, what the encoder can see, targets, loss, HOG targets on the same encoder, bad input."""
import pytest
import torch

import mvit
from pretrain.hog import pixel_targets
from pretrain.maskfeat import MaskedModeling
from pretrain.masking import TokenMaskGenerator

SIZE = (4, 32, 48)  # 2x2x3 = 12 tokens of 2x16x16 px


def tiny_task(targets=("pixel",), ratio=0.75, mode="random", **kw):
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", depths=(2,), embed_dim=32, num_heads=4,
                                input_size=SIZE)
    return MaskedModeling(encoder, SIZE, encoder_mode="drop", mask_ratio=ratio, mask_mode=mode, targets=targets,
                          decoder_dim=16, decoder_depth=1, decoder_heads=2, **kw)


def test_masks_keep_the_reference_count():
    """SlowFast keeps int(L * (1 - r)) (156 of 1568 at 0.9); VideoMAE's tube masks int(r * h * w) per frame."""
    m = TokenMaskGenerator((8, 14, 14), 0.9)(4)
    assert ((~m).flatten(1).sum(1) == 156).all()
    tube = TokenMaskGenerator((8, 14, 14), 0.9, "tube")(4)
    assert (tube.flatten(2).sum(-1) == 176).all() and (tube == tube[:, :1]).all()
    with pytest.raises(ValueError, match="keeps no token"):
        TokenMaskGenerator((4, 6, 6), 0.995)


def test_encoder_never_sees_masked_pixels():
    """MAE's point: the encoder's tokens and the predictions do not depend on the masked patches' pixels;
    changing one visible patch changes them."""
    torch.manual_seed(0)
    task = tiny_task().eval()
    video = torch.randn(2, 3, *SIZE)
    units = task.make_masks(2, "cpu")  # (2, 2, 2, 3)
    pix = units.repeat_interleave(2, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)  # (2, T, H, W)
    other = torch.where(pix[:, None], torch.randn_like(video), video)
    with torch.no_grad():
        a, b = task.forward_encoder(video, units), task.forward_encoder(other, units)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        visible = torch.where(~pix[:, None], torch.randn_like(video), video)
        assert not torch.allclose(task.forward_encoder(visible, units), a)


def test_decoder_puts_each_token_back_in_its_place():
    """With every decoder weight that mixes tokens silenced (no blocks), output token i is the decoder
    embedding of encoder token i for visible tokens and the mask token for masked ones (+ its position)."""
    torch.manual_seed(0)
    task = tiny_task()
    task.decoder.blocks = torch.nn.ModuleList()
    video = torch.randn(2, 3, *SIZE)
    units = task.make_masks(2, "cpu")
    with torch.no_grad():
        latent, restore = task.forward_visible(video, units)
        out = task.forward_decoder(latent, restore)  # (B, N, 16)
        full = task.encoder(video, keep=torch.arange(12).expand(2, -1), tokens=True)  # every token, grid order
        pos = task.decoder.pos_table()[0, 1:]
        flat = units.flatten(1)
        for b in range(2):
            for i in range(12):
                want = task.decoder.mask_token[0, 0] if flat[b, i] else None
                if want is None:  # a visible token: its own embedding (encoder of the visible set only)
                    j = (~flat[b, :i]).sum()
                    want = task.decoder.decoder_embed(latent[b, 1 + j])
                torch.testing.assert_close(out[b, i], want + pos[i])
    assert full.shape == (2, 13, 32)


def test_pixel_targets_are_the_reference_patches():
    """Frames ::2, 16x16 patches in (t, h, w) order, (dy, dx, c) inside, per-patch (x - mean) / sqrt(var + 1e-6),
    unbiased variance (SlowFast `_get_pixel_label_3d`)."""
    task = tiny_task()
    video = torch.randn(1, 3, *SIZE)
    target = task.targets(video)["pixel"]  # (1, 12, 768)
    t, h, w = 1, 0, 2
    patch = video[0, :, 2 * t, 16 * h:16 * h + 16, 16 * w:16 * w + 16].permute(1, 2, 0).reshape(-1)
    want = (patch - patch.mean()) / torch.sqrt(patch.var(unbiased=True) + 1e-6)
    torch.testing.assert_close(target[0, t * 6 + h * 3 + w], want)
    torch.testing.assert_close(target, pixel_targets(video[:, :, ::2], patch=(1, 16, 16)))


@pytest.mark.parametrize("targets,mode", [(("pixel",), "random"), (("hog",), "tube"), (("pixel", "hog"), "random")])
def test_loss_decreases_on_a_fixed_batch_and_every_parameter_learns(targets, mode):
    torch.manual_seed(0)
    task = tiny_task(targets, mode=mode)
    batch = {"video": torch.randn(2, 3, *SIZE), "mask": task.masker(2)}
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, report = task(batch)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            silent = [k for k, p in task.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert silent == [], silent
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert report["mask_fraction"].item() == pytest.approx(1 - task.masker.keep / 12)
    if "pixel" in targets:
        assert {"trivial_zero_pixel", "trivial_mean_pixel", "trivial_visible_pixel"} <= set(report)


def test_masks_from_the_loader_must_fit():
    task = tiny_task()
    video = torch.randn(2, 3, *SIZE)
    uneven = task.masker(2)
    uneven[0, 0, 0, 0] = ~uneven[0, 0, 0, 0]
    with pytest.raises(ValueError, match="visible tokens"):
        task({"video": video, "mask": uneven})
    with pytest.raises(ValueError, match="mask_generator=task.masker"):
        task({"video": video, "mask": torch.zeros(2, 2, 2, 2, dtype=torch.bool)})


def test_bad_settings_are_one_line_errors():
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", depths=(1,), embed_dim=32, num_heads=4,
                                input_size=SIZE)
    with pytest.raises(ValueError, match="not tiled by the patch embed"):
        MaskedModeling(encoder, (4, 40, 48), encoder_mode="drop", mask_mode="random", targets=("pixel",))
    with pytest.raises(ValueError, match="keeps no token"):
        MaskedModeling(encoder, SIZE, encoder_mode="drop", mask_ratio=0.95, mask_mode="random", targets=("pixel",))
    with pytest.raises(ValueError, match="plain ViT in its MAE form"):
        MaskedModeling(mvit.create_model("vit_demo_8x2", pretraining=True), (8, 96, 96), encoder_mode="drop",
                       mask_mode="random")
    with pytest.raises(ValueError, match="encoder mode"):
        MaskedModeling(encoder, SIZE, encoder_mode="keep")


def test_mask_token_mode_on_a_vit_is_maskfeat_on_vit():
    """The other corner: a ViT with a mask token, every token through the encoder, HOG targets
    (SlowFast in1k_VIT_*_MaskFeat_PT)."""
    encoder = mvit.create_model("vit_b_16x4", pretraining="maskfeat", depths=(1,), embed_dim=32, num_heads=4,
                                input_size=SIZE)
    task = MaskedModeling(encoder, SIZE, encoder_mode="mask_token", mask_ratio=0.5, mask_mode="random",
                          mask_unit=(1, 1, 1), targets=("hog",))
    loss, report = task({"video": torch.randn(2, 3, *SIZE)})
    assert torch.isfinite(loss) and task.token_grid == (2, 2, 3)


def test_pixel_reconstruction_picture():
    torch.manual_seed(0)
    task = tiny_task(("pixel", "hog"))
    pics = task.images({"video": torch.randn(2, 3, *SIZE), "mask": task.masker(2)})
    assert pics["pixel/masked_target_reconstruction"].shape == (3, 2 * 32, 3 * 48)
    assert set(pics) == {"mask/input", "hog/target_vs_prediction", "pixel/masked_target_reconstruction"}


def test_accelerate_launch_runs_mae_with_one_key(tmp_path):
    """`accelerate launch pretrain/run.py task=mae`: the MAE preset (ViT, 75 % random tokens, decoder, pixels),
    masks from the loader's workers, the encoder export loads into the finetune form of the same ViT."""
    import json
    import os
    import subprocess
    import sys

    from test_pretrain_run import ROOT, RUN, scalars
    from videodata import write_shards, write_synthetic_videos
    videos = write_synthetic_videos(tmp_path / "videos", 4, frames=20, size=(64, 80), seed=3)
    manifest = write_shards(videos, tmp_path / "shards", name="train", max_count=4, short_side=64)
    out = tmp_path / "run"
    r = subprocess.run(["accelerate", "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", RUN, "task=mae",
                        f"data.train={tmp_path / 'shards' / manifest['url_pattern']}", f"train.output_dir={out}",
                        "data.frames=4", "data.crop=64", "data.num_workers=1", "train.batch_size=2",
                        "train.progress=false", "train.steps=2", "train.warmup_steps=1", "train.log_every=1",
                        "train.image_every=2", "model.arch={depths: [1], embed_dim: 32, num_heads: 2}",
                        "decoder.dim=16", "decoder.depth=1", "decoder.heads=2"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mae pretraining vit_demo_8x2" in r.stdout
    config = json.loads((out / "export" / "model_config.json").read_text())
    assert config["task"] == "mae" and config["mvit_config"]["final_norm"] and not config["mvit_config"]["mask_token"]
    logged = scalars(out)
    assert "pixel/masked_target_reconstruction" in logged["_images"]
    assert abs(logged["train/mask_fraction"][1] - (1 - 8 / 32)) < 1e-6  # 2x4x4 tokens at the demo's 0.75: 8 kept
    finetune = mvit.create_model("vit_demo_8x2", depths=(1,), embed_dim=32, num_heads=2, input_size=(4, 64, 64),
                                 num_classes=3)
    report = mvit.load_pretrained(finetune, str(out / "export" / "encoder.safetensors"), allow_new_head=True)
    assert report.missing == ["head.weight", "head.bias"] and not report.dropped, report.summary()
