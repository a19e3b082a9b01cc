"""The MaskFeat task: masking in the encoder, targets, the loss (masked tokens, optionally the visible ones), trivial baselines."""
import pytest
import torch

import mvit
from pretrain.hog import HOGLayer, hog_targets
from pretrain.maskfeat import MaskFeat

SIZE = (4, 64, 64)


def task(**kw):
    torch.manual_seed(0)
    enc = mvit.create_model("mvitv2_s_16x4_maskfeat", pretraining=True, depths=(1, 1, 1, 1), embed_dim=16,
                            input_size=SIZE)
    return MaskFeat(enc, SIZE, **kw)


def test_grids_and_head_sizes():
    t = task(targets=("hog", "pixel"))
    assert t.patch_grid == (2, 16, 16) and t.token_grid == (2, 4, 4) and t.mask_grid == (2, 2, 2)
    # 16 px per output token = 2×2 HOG cells × 3 channels × 9 bins; pixels: 16×16×3
    assert t.heads["hog"][1].out_features == 108 and t.heads["pixel"][1].out_features == 768


def test_loss_ignores_predictions_at_unmasked_tokens():
    t = task()
    video = torch.randn(2, 3, *SIZE)
    units = t.make_masks(2, "cpu")
    tokens = t.forward_encoder(video, units)
    targets = t.targets(video)
    loss, _ = t.forward_loss(tokens, targets, units)
    from pretrain.masking import upsample_mask
    visible = ~upsample_mask(units, t.token_grid).flatten(1)
    assert visible.any() and (~visible).any()
    changed = tokens.clone()
    changed[visible] = torch.randn_like(changed[visible]) * 10
    loss2, _ = t.forward_loss(changed, targets, units)
    torch.testing.assert_close(loss, loss2)
    changed[~visible] += torch.randn_like(changed[~visible])  # (a constant shift would vanish in the LayerNorm)
    loss3, _ = t.forward_loss(changed, targets, units)
    assert abs(loss3.item() - loss.item()) > 1e-4


def test_loss_is_mse_over_masked_tokens_against_hog_of_the_input():
    t = task()
    video = torch.randn(2, 3, *SIZE)
    units = t.make_masks(2, "cpu")
    tokens = t.forward_encoder(video, units)
    loss, parts = t.forward_loss(tokens, t.targets(video), units)
    from pretrain.masking import upsample_mask
    m = upsample_mask(units, t.token_grid).flatten(1)
    pred = t.heads["hog"](tokens)
    ref = hog_targets(HOGLayer(), video, temporal_stride=2, grid=t.token_grid)
    expected = ((pred - ref) ** 2)[m].mean()
    torch.testing.assert_close(loss, expected)


def test_loss_decreases_on_a_fixed_batch():
    t = task(targets=("hog", "pixel"))
    video = torch.randn(2, 3, *SIZE)
    opt = torch.optim.AdamW(t.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same masks every step: a fixed problem
        loss, report = t({"video": video})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert set(report) == {"loss_hog", "loss_pixel", "mask_fraction", "trivial_mean_hog", "trivial_visible_hog",
                           "trivial_mean_pixel", "trivial_visible_pixel", "trivial_zero_pixel"}


def test_mask_token_gets_gradient_and_masking_changes_the_encoding():
    t = task()
    video = torch.randn(1, 3, *SIZE)
    loss, _ = t({"video": video})
    loss.backward()
    assert t.encoder.mask_token.grad is not None and t.encoder.mask_token.grad.abs().sum() > 0


def test_images_are_pictures():
    t = task()
    images = t.images({"video": torch.randn(2, 3, *SIZE)})
    assert set(images) == {"mask/input", "hog/target_vs_prediction"}
    for img in images.values():
        assert img.dim() == 3 and img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1
    assert images["hog/target_vs_prediction"].shape[-1] == 2 * SIZE[2]  # target | prediction


def test_needs_pretraining_form():
    enc = mvit.create_model("mvitv2_s_16x4_maskfeat", depths=(1, 1, 1, 1), embed_dim=16, input_size=SIZE)
    with pytest.raises(ValueError, match="pretraining form"):
        MaskFeat(enc, SIZE)


def test_visible_weight_adds_the_visible_tokens_mse_and_reports_the_masked_one():
    from pretrain.masking import upsample_mask
    video = torch.randn(2, 3, *SIZE)
    plain, both = task(), task(visible_weight=0.5)
    units = plain.make_masks(2, "cpu")
    masked = upsample_mask(units, plain.token_grid).flatten(1)
    tokens = plain.forward_encoder(video, units)
    targets = plain.targets(video)
    err = (plain.heads["hog"](tokens) - targets["hog"]).pow(2).mean(-1)  # same weights: same seed
    loss0, parts0 = plain.forward_loss(tokens, targets, units)
    loss1, parts1 = both.forward_loss(tokens, targets, units)
    torch.testing.assert_close(loss0, err[masked].mean())
    torch.testing.assert_close(loss1, err[masked].mean() + 0.5 * err[~masked].mean())
    torch.testing.assert_close(parts1["hog"], parts0["hog"])


def test_trivial_losses_are_the_mean_and_visible_mean_predictors():
    torch.manual_seed(1)
    # clip 0: every token the same vector (the visible mean is exact); clip 1: noise
    target = torch.cat([torch.rand(1, 1, 6).expand(1, 10, 6), torch.rand(1, 10, 6)])
    masked = torch.zeros(2, 10, dtype=torch.bool)
    masked[:, :4] = True
    out = MaskFeat.trivial_losses(target, masked)
    mean = target.mean((0, 1))
    by_hand = ((target - mean) ** 2).mean(-1)[masked].mean()
    torch.testing.assert_close(out["mean"], by_hand)
    seen1 = target[1, 4:].mean(0)
    torch.testing.assert_close(out["visible"], ((target[1, :4] - seen1) ** 2).mean(-1).sum() / 8)
    assert out["visible"] < out["mean"]


def test_forward_reports_the_trivial_losses_of_its_batch():
    t = task()
    _, report = t({"video": torch.randn(2, 3, *SIZE)})
    assert {"loss_hog", "trivial_mean_hog", "trivial_visible_hog", "mask_fraction"} <= set(report)
    assert report["trivial_mean_hog"] > 0


def test_forward_uses_the_batch_mask_and_checks_its_grid():
    t = task()
    video = torch.randn(2, 3, *SIZE)
    units = t.make_masks(2, "cpu")
    loss, report = t({"video": video, "mask": units})
    tokens = t.forward_encoder(video, units)
    expected, _ = t.forward_loss(tokens, t.targets(video), units)
    torch.testing.assert_close(loss, expected)
    assert report["mask_fraction"] == units.float().mean()
    with pytest.raises(ValueError, match=r"\[2, 4, 4\] per clip but the task masks a \[2, 2, 2\] unit grid"):
        t({"video": video, "mask": torch.zeros(2, 2, 4, 4, dtype=torch.bool)})


def test_mask_picture_shows_the_batch_mask():
    t = task()
    video = torch.rand(2, 3, *SIZE) + 1  # no pixel near 0, so shading shows where the mask is
    units = t.make_masks(2, "cpu")
    for index in (0, 1):
        picture = t.images({"video": video, "mask": units}, index=index)["mask/input"]  # (3, t·H, W)
        from pretrain.masking import upsample_mask
        mask = upsample_mask(units[index:index + 1], (2, *SIZE[1:]))[0]  # (t, H, W)
        frames = video[index, :, ::2].transpose(0, 1)
        lo, hi = frames.amin(dim=(1, 2, 3), keepdim=True), frames.amax(dim=(1, 2, 3), keepdim=True)
        expected = (frames - lo) / (hi - lo + 1e-6) * (1 - 0.6 * mask[:, None].float())
        torch.testing.assert_close(picture, torch.cat(list(expected.clamp(0, 1)), dim=1))


def test_mask_unit_that_does_not_tile_names_both_grids():
    with pytest.raises(ValueError, match=r"mask.unit \[1, 3, 3\] does not tile the patch grid \[2, 16, 16\] "
                                         r"and the output token grid \[2, 4, 4\]"):
        task(mask_unit=(1, 3, 3))
