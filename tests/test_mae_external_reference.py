"""Exactness against the model code of the projects whose checkpoints we load (docs/mae.md, "Loading released
checkpoints"): mae_st (facebookresearch/mae_st `models_vit.py`, `models_mae.py`) and VideoMAE
(MCG-NJU/VideoMAE `modeling_finetune.py`, `modeling_pretrain.py`). Each test builds their model at toy size on
CPU with random weights, saves its state dict the way their training scripts save checkpoints, loads the file
with our loaders (`mvit.load_pretrained`, `pretrain.init.load_pretraining_init`), and feeds both the same clip
(and the same mask).

The reference code is not a dependency. Get it with
    git clone https://github.com/facebookresearch/mae_st /somewhere/mae_st
    git clone https://github.com/MCG-NJU/VideoMAE /somewhere/VideoMAE
and point MAE_ST_PATH / VIDEOMAE_PATH at those folders; the tests of a project skip without its folder. Only
torch and timm are needed: mae_st's logging module (which imports simplejson and iopath) is replaced by a stub,
and VideoMAE's timm `register_model` by one that registers nothing (its `vit_*_patch16_224` would otherwise
replace timm's own in timm's registry for the rest of the session).
"""
import argparse
import importlib
import logging
import os
import sys
import types
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mvit
from pretrain.init import load_pretraining_init
from pretrain.maskfeat import MaskedModeling

MAE_ST = os.environ.get("MAE_ST_PATH", "")
VIDEOMAE = os.environ.get("VIDEOMAE_PATH", "")
needs_mae_st = pytest.mark.skipif(
    not (MAE_ST and (Path(MAE_ST) / "models_mae.py").is_file()),
    reason="reference code absent: git clone https://github.com/facebookresearch/mae_st and set MAE_ST_PATH")
needs_videomae = pytest.mark.skipif(
    not (VIDEOMAE and (Path(VIDEOMAE) / "modeling_pretrain.py").is_file()),
    reason="reference code absent: git clone https://github.com/MCG-NJU/VideoMAE and set VIDEOMAE_PATH")
LN = partial(nn.LayerNorm, eps=1e-6)  # both projects' vit_* / mae_vit_* constructors


@contextmanager
def isolated_imports():
    """Whatever the reference imports or the test stubs is gone afterwards (sys.modules and sys.path as before)."""
    modules, path = dict(sys.modules), list(sys.path)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k not in modules]:
            del sys.modules[k]
        sys.modules.update(modules)
        sys.path[:] = path


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


@pytest.fixture(scope="module")
def mae_st():
    """(models_vit, models_mae) of mae_st, which imports itself as the package `mae_st`."""
    root = Path(MAE_ST)
    with isolated_imports():
        _stub("mae_st").__path__ = [str(root)]
        _stub("mae_st.util").__path__ = [str(root / "util")]
        _stub("mae_st.util.logging", master_print=lambda *a, **k: None, get_logger=logging.getLogger)
        yield importlib.import_module("mae_st.models_vit"), importlib.import_module("mae_st.models_mae")


@pytest.fixture(scope="module")
def videomae():
    """(modeling_finetune, modeling_pretrain) of VideoMAE (top-level modules of its folder)."""
    with isolated_imports():
        _stub("timm.models.registry", register_model=lambda fn: fn)
        sys.path.insert(0, VIDEOMAE)
        yield importlib.import_module("modeling_finetune"), importlib.import_module("modeling_pretrain")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # the references' own inits draw from the global generator


def randomized(model, seed):
    """Random offsets on every parameter, so that norms and biases (0 / 1 at init) count too."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def training_script_file(state, path, model):
    """What mae_st util/misc.py and VideoMAE utils.py `save_model` write (with a torch.amp loss scaler)."""
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"model": state, "optimizer": opt.state_dict(), "epoch": 1, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="tiny", batch_size=2, num_frames=4)}, path)
    return str(path)


def largest(a, b):
    return (a - b).abs().max().item()


def assert_same_logits(ref, ours, video_shape, what: str) -> None:
    """Their model and ours on one random clip: logits that vary (std > 0.1) and agree within 1e-5."""
    video = torch.randn(*video_shape)
    with torch.no_grad():
        want, got = ref(video), ours(video)
    print(f"max |ours - {what}| logits: {largest(got, want):.1e} (logits up to {want.abs().max():.1f})")
    assert want.std() > 0.1 and largest(got, want) < 1e-5


# ----------------------------------------------------------------------------- VideoMAE


@needs_videomae
@pytest.mark.parametrize("saved_by", ["deepspeed", "torch.amp"])
def test_videomae_finetuned_model_gives_its_logits(videomae, tmp_path, saved_by):
    """modeling_finetune.VisionTransformer (mean pooling -> fc_norm -> head, q / v biases) -> videomae_vit_*.
    VideoMAE's finetuning runs under DeepSpeed fp16, whose file holds {'module': fp16 weights, ...}: the
    reference is rounded to fp16 first, so both hold the same values."""
    finetune, _ = videomae
    ref = randomized(finetune.VisionTransformer(
        img_size=32, patch_size=16, num_classes=5, embed_dim=64, depth=2, num_heads=4, qkv_bias=True, norm_layer=LN,
        all_frames=4, tubelet_size=2, use_mean_pooling=True), 0)
    if saved_by == "deepspeed":
        ref.half().float()
        path = tmp_path / "mp_rank_00_model_states.pt"
        torch.save({"module": {k: v.half() for k, v in ref.state_dict().items()}, "buffer_names": [],
                    "optimizer": None, "ds_config": {"fp16": {"enabled": True}}, "ds_version": "0.5.8",
                    "epoch": 29}, path)
    else:
        path = training_script_file(ref.state_dict(), tmp_path / "checkpoint-29.pth", ref)
    ours = mvit.create_model("videomae_vit_b_16x4", num_classes=5, depths=(2,), embed_dim=64, num_heads=4,
                             input_size=(4, 32, 32)).eval()
    report = mvit.load_pretrained(ours, str(path))
    assert report.source_format == "videomae" and not report.missing and not report.dropped, report.summary()
    assert_same_logits(ref, ours, (3, 3, 4, 32, 32), f"VideoMAE ({saved_by})")


def videomae_pretraining_file(pretrain, tmp_path, seed=1):
    """modeling_pretrain.PretrainVisionTransformer at toy size: its encoder's patch embed is made for 16 frames
    (PatchEmbed's default; the model passes no frame count), so 16x64x64 clips, 8x4x4 tokens."""
    ref = randomized(pretrain.PretrainVisionTransformer(
        img_size=64, patch_size=16, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4,
        decoder_num_classes=1536, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, qkv_bias=True,
        norm_layer=LN, tubelet_size=2), seed)
    return ref, training_script_file(ref.state_dict(), tmp_path / "checkpoint-799.pth", ref)


@needs_videomae
def test_videomae_pretraining_encoder_gives_its_features(videomae, tmp_path):
    """Continued pretraining from a VideoMAE pretraining file: the encoder (with its final norm) gives VideoMAE's
    features of the visible tokens under the same tube mask. Its decoder (no class token, a fixed table, 1536 =
    2·16²·3 outputs per token) is not ours and is left out: only the encoder is compared."""
    _, pretrain = videomae
    ref, path = videomae_pretraining_file(pretrain, tmp_path)
    encoder = mvit.create_model("videomae_vit_b_16x4", pretraining="mae", depths=(2,), embed_dim=64, num_heads=4,
                                input_size=(16, 64, 64))
    task = MaskedModeling(encoder, (16, 64, 64), encoder_mode="drop", mask_ratio=0.75, mask_mode="tube",
                          targets=("pixel",), decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()
    report = load_pretraining_init(task, path)
    assert not report.unexpected and not [k for k in report.missing if not k.startswith(("decoder.", "heads."))]
    assert {"encoder_to_decoder.weight", "mask_token", "decoder.head.weight"} <= set(report.dropped)
    video = torch.randn(2, 3, 16, 64, 64)
    units = task.make_masks(2, "cpu")  # (2, 8, 4, 4): 4 of 16 tokens visible in every frame
    with torch.no_grad():
        want = ref.encoder(video, units.flatten(1))  # (2, 32, 64): the visible tokens in grid order
        got, _ = task.forward_visible(video, units)
    print(f"max |ours - VideoMAE| encoder features of the visible tokens: {largest(got, want):.1e}")
    assert got.shape == want.shape == (2, 32, 64) and largest(got, want) < 1e-5


@needs_videomae
def test_videomae_pretraining_file_finetunes_as_videomae_does(videomae, tmp_path):
    """The same file into a finetune model: run_class_finetuning.py strips `encoder.` and loads non-strict, so the
    encoder's norm is not used and fc_norm and the head start fresh. Ours drops the same keys; with the fresh
    fc_norm and head copied from VideoMAE's model, the logits agree."""
    finetune, pretrain = videomae
    _, path = videomae_pretraining_file(pretrain, tmp_path)
    ref = finetune.VisionTransformer(img_size=64, patch_size=16, num_classes=5, embed_dim=64, depth=2, num_heads=4,
                                     qkv_bias=True, norm_layer=LN, all_frames=16, tubelet_size=2).eval()
    sd = torch.load(path, weights_only=False)["model"]
    ref.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, strict=False)
    ours = mvit.create_model("videomae_vit_b_16x4", num_classes=5, depths=(2,), embed_dim=64, num_heads=4,
                             input_size=(16, 64, 64)).eval()
    report = mvit.load_pretrained(ours, path, allow_new_head=True, allow_pretraining_keys=True)
    assert sorted(report.missing) == ["head.bias", "head.weight", "norm.bias", "norm.weight"], report.summary()
    with torch.no_grad():  # VideoMAE's fresh head is zero (init_scale 0 by default): make the logits count
        ref.head.weight.normal_()
        ref.head.bias.normal_()
    ours.norm.load_state_dict(ref.fc_norm.state_dict())
    ours.head.load_state_dict(ref.head.state_dict())
    assert_same_logits(ref, ours, (2, 3, 16, 64, 64), "VideoMAE after loading its pretraining file")


# ----------------------------------------------------------------------------- mae_st


def mae_st_finetune_model(models_vit, size):
    """models_vit.VisionTransformer as main_finetune.py builds it: sep_pos_embed and cls_embed on (its
    defaults), LayerNorm eps 1e-6 (vit_base_patch16)."""
    return models_vit.VisionTransformer(num_frames=4, t_patch_size=2, img_size=size, patch_size=16, num_classes=5,
                                        embed_dim=64, depth=2, num_heads=4, norm_layer=LN, dropout=0.5,
                                        sep_pos_embed=True, cls_embed=True)


def ours_vit(size, **kw):
    return mvit.create_model("vit_b_16x4", depths=(2,), embed_dim=64, num_heads=4, input_size=(4, size, size), **kw)


@needs_mae_st
def test_mae_st_finetuned_model_gives_its_logits(mae_st, tmp_path):
    """mae_st's finetune model pools the patch tokens (x[:, 1:].mean), then `norm`, dropout, head: our vit_*
    finetune form (mean pooling -> norm -> dropout -> head), q / k / v joined."""
    models_vit, _ = mae_st
    ref = randomized(mae_st_finetune_model(models_vit, 32), 2)
    path = training_script_file(ref.state_dict(), tmp_path / "checkpoint-00049.pth", ref)
    ours = ours_vit(32, num_classes=5).eval()
    report = mvit.load_pretrained(ours, path)
    assert not report.missing and not report.dropped, report.summary()
    assert_same_logits(ref, ours, (3, 3, 4, 32, 32), "mae_st")


def mae_st_pretraining_model(models_mae, seed):
    """models_mae.MaskedAutoencoderViT as main_pretrain.py + PRETRAIN.md build it (sep_pos_embed, cls_embed,
    norm_pix_loss; t_patch_size 2 and pred_t_dim = frames / 2, so one target frame per temporal token), at
    4x64x64 clips (2x4x4 tokens), 2 encoder blocks of 64, a 2 x 32 decoder."""
    return randomized(models_mae.MaskedAutoencoderViT(
        img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
        decoder_num_heads=2, norm_layer=LN, norm_pix_loss=True, num_frames=4, t_patch_size=2, sep_pos_embed=True,
        cls_embed=True, pred_t_dim=2), seed)


def ours_mae(**decoder):
    return MaskedModeling(ours_vit(64, pretraining="mae"), (4, 64, 64), encoder_mode="drop", mask_ratio=0.75,
                          mask_mode="random", targets=("pixel",), decoder_dim=32, decoder_depth=2, decoder_heads=2,
                          **decoder)


def mae_st_forward(ref, video, units, monkeypatch):
    """mae_st's forward with our mask: random_masking keeps the tokens of smallest torch.rand noise, so the noise
    is the mask plus [0, 0.5) (visible tokens first, in a random order). -> latent (B, K, D) in grid order,
    predictions (B, N, 768), loss."""
    flat = units.flatten(1).float()  # (B, N), 1 = masked
    noise = flat + 0.5 * torch.rand_like(flat)
    with monkeypatch.context() as m:
        m.setattr(torch, "rand", lambda *a, **k: noise.clone())
        latent, mask, restore = ref.forward_encoder(video, 0.75)
    assert torch.equal(mask, flat)
    pred = ref.forward_decoder(latent, restore)
    loss = ref.forward_loss(video, pred, mask)
    keep = noise.argsort(1)[:, :latent.shape[1]]  # (B, K) in the reference's order
    latent = latent.gather(1, keep.argsort(1)[..., None].expand(-1, -1, latent.shape[-1]))  # -> grid order
    return latent, pred, loss


def clip_for_both_targets(batch):
    """mae_st predicts frames linspace(0, T-1, T/2) = (0, 3) of a 4-frame clip, ours ::2 = (0, 2): with frame 3 a
    copy of frame 2 both targets are the same pixels."""
    video = torch.randn(batch, 3, 4, 64, 64)
    video[:, :, 3] = video[:, :, 2]
    return video


@needs_mae_st
def test_mae_st_pretraining_continues_exactly_with_the_decoder_class_token(mae_st, tmp_path, monkeypatch):
    """mae_st drops the encoder's class token after its norm and starts the decoder with `decoder_cls_token`:
    with decoder.cls_token=true the file loads whole (separate decoder tables as they are), and the encoder
    features, the predictions of every token and the loss agree."""
    _, models_mae = mae_st
    ref = mae_st_pretraining_model(models_mae, 3)
    path = training_script_file(ref.state_dict(), tmp_path / "checkpoint-00099.pth", ref)
    task = ours_mae(decoder_sep_pos=True, decoder_cls_token=True).eval()
    report = load_pretraining_init(task, path)
    assert not report.missing and not report.dropped and not report.unexpected, report.summary()
    video = clip_for_both_targets(3)
    units = task.make_masks(3, "cpu")  # (3, 2, 4, 4): 8 of 32 tokens visible
    with torch.no_grad():
        latent_ref, pred_ref, loss_ref = mae_st_forward(ref, video, units, monkeypatch)
        latent, restore = task.forward_visible(video, units)
        tokens = task.forward_decoder(latent, restore)
        pred = task.heads["pixel"](tokens)
        loss, _ = task.forward_loss(tokens, task.targets(video), units)
    diffs = {"encoder": largest(latent[:, 1:], latent_ref), "pred": largest(pred, pred_ref),
             "loss": largest(loss, loss_ref)}
    print("max |ours - mae_st|:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert pred_ref.std() > 0.1 and max(diffs.values()) < 1e-5, diffs

    # where the clip's last target frame is not a copy: ours predict frame 2, mae_st frame 3 (documented)
    video = torch.randn(3, 3, 4, 64, 64)
    with torch.no_grad():
        _, pred_ref, loss_ref = mae_st_forward(ref, video, units, monkeypatch)
        tokens = task.forward_encoder(video, units)
        loss, _ = task.forward_loss(tokens, task.targets(video), units)
    print(f"on a clip of 4 different frames: loss {loss.item():.4f} (ours) vs {loss_ref.item():.4f} (mae_st), "
          f"predictions {largest(task.heads['pixel'](tokens), pred_ref):.1e}")


@needs_mae_st
def test_mae_st_pretraining_without_the_decoder_class_token(mae_st, tmp_path, monkeypatch):
    """Our default decoder (one table: mae_st's separate tables summed; the encoder's class token in front, as
    SlowFast): decoder_cls_token is left out, the encoder agrees exactly, the predictions do not."""
    _, models_mae = mae_st
    ref = mae_st_pretraining_model(models_mae, 3)
    path = training_script_file(ref.state_dict(), tmp_path / "checkpoint-00099.pth", ref)
    task = ours_mae().eval()
    report = load_pretraining_init(task, path)
    assert report.dropped == ["decoder.decoder_cls_token"] and not report.missing, report.summary()
    video, units = clip_for_both_targets(3), task.make_masks(3, "cpu")
    with torch.no_grad():
        latent_ref, pred_ref, loss_ref = mae_st_forward(ref, video, units, monkeypatch)
        latent, restore = task.forward_visible(video, units)
        tokens = task.forward_decoder(latent, restore)
        loss, _ = task.forward_loss(tokens, task.targets(video), units)
        pred = task.heads["pixel"](tokens)
    print(f"encoder {largest(latent[:, 1:], latent_ref):.1e}, predictions {largest(pred, pred_ref):.1e} "
          f"(reference std {pred_ref.std():.2f}), loss {loss.item():.4f} vs {loss_ref.item():.4f}")
    assert largest(latent[:, 1:], latent_ref) < 1e-5
    assert largest(pred, pred_ref) > 1e-2


@needs_mae_st
def test_mae_st_pretraining_gradients_match(mae_st, tmp_path, monkeypatch):
    """One backward of the same loss (decoder.cls_token=true): the gradients of the encoder, the decoder and the
    head agree (relative to each tensor's largest)."""
    _, models_mae = mae_st
    ref = mae_st_pretraining_model(models_mae, 4).train()
    path = training_script_file(ref.state_dict(), tmp_path / "checkpoint-00099.pth", ref)
    task = ours_mae(decoder_sep_pos=True, decoder_cls_token=True).train()
    load_pretraining_init(task, path)
    video = clip_for_both_targets(2)
    units = task.make_masks(2, "cpu")
    mae_st_forward(ref, video, units, monkeypatch)[2].backward()
    task(dict(video=video, mask=units))[0].backward()
    pairs = {"patch_embed.proj.weight": "encoder.patch_embed.proj.weight", "cls_token": "encoder.cls_token",
             "pos_embed_spatial": "encoder.pos_embed_spatial",
             "blocks.1.mlp.fc1.weight": "encoder.blocks.1.mlp.fc1.weight",
             "norm.weight": "encoder.norm.weight", "decoder_embed.weight": "decoder.decoder_embed.weight",
             "mask_token": "decoder.mask_token", "decoder_cls_token": "decoder.decoder_cls_token",
             "decoder_pos_embed_temporal": "decoder.dec_pos_embed_temporal",
             "decoder_blocks.1.mlp.fc2.weight": "decoder.blocks.1.mlp.fc2.weight",
             "decoder_norm.weight": "heads.pixel.0.weight", "decoder_pred.weight": "heads.pixel.1.weight"}
    mine, theirs = dict(task.named_parameters()), dict(ref.named_parameters())
    worst = max(largest(mine[b].grad, theirs[a].grad) / theirs[a].grad.abs().max().item() for a, b in pairs.items())
    # the q / k / v weights are split in the reference: compare block 0's q rows
    q = largest(mine["encoder.blocks.0.attn.qkv.weight"].grad[:64], theirs["blocks.0.attn.q.weight"].grad)
    print(f"max relative gradient difference: {worst:.1e}; block 0 q weight: {q:.1e}")
    assert worst < 1e-4 and q < 1e-5


@needs_mae_st
def test_mae_st_pretraining_file_finetunes_as_mae_st_does(mae_st, tmp_path):
    """main_finetune.py loads a pretraining file non-strict into its finetune model: the encoder and its norm (then
    applied after pooling) load, the decoder is ignored, the head starts fresh. Ours loads the same tensors; with
    mae_st's fresh head copied, the logits agree."""
    models_vit, models_mae = mae_st
    pretrained = mae_st_pretraining_model(models_mae, 5)
    path = training_script_file(pretrained.state_dict(), tmp_path / "checkpoint-00099.pth", pretrained)
    ref = mae_st_finetune_model(models_vit, 64).eval()
    ref.load_state_dict(torch.load(path, weights_only=False)["model"], strict=False)
    ours = ours_vit(64, num_classes=5).eval()
    report = mvit.load_pretrained(ours, path, allow_new_head=True, allow_pretraining_keys=True)
    assert report.missing == ["head.weight", "head.bias"], report.summary()
    with torch.no_grad():  # a head of unit weights, so that the logits are not small
        ref.head.weight.normal_()
    ours.head.load_state_dict(ref.head.state_dict())
    assert_same_logits(ref, ours, (2, 3, 4, 64, 64), "mae_st after loading its pretraining file")
