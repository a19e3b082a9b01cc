"""Released MAE-style checkpoints: SlowFast MAE `.pyth`, mae_st `.pth`, VideoMAE `.pth`, for finetuning
(mvit.load_pretrained) and for continued pretraining (pretrain.init.load_pretraining_init).

Nothing is downloaded: each file is written here in its project's layout (key names and wrappers as
their model code names them: mae_st `models_mae.py` / `models_vit.py`, VideoMAE `modeling_pretrain.py`
/ `modeling_finetune.py`) from a random model of ours, then loaded back: the loaded model must give the
same outputs as the one the file was made from.
"""
import pytest
import torch

import mvit
from mvit import CheckpointError
from pretrain.init import load_pretraining_init
from pretrain.maskfeat import MaskedModeling

SIZE = (4, 32, 32)  # 2x2x2 tokens
ARCH = dict(depths=(2,), embed_dim=32, num_heads=4, input_size=SIZE)


def randomized(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return module.eval()


def mae_task(seed, **kw):
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", **ARCH)
    return randomized(MaskedModeling(encoder, SIZE, encoder_mode="drop", mask_ratio=0.5, mask_mode="random",
                                     targets=("pixel",), decoder_dim=16, decoder_depth=1, decoder_heads=2, **kw), seed)


def predictions(task):
    torch.manual_seed(123)
    video, units = torch.randn(2, 3, *SIZE), task.make_masks(2, "cpu")
    with torch.no_grad():
        return task.heads["pixel"](task.forward_encoder(video, units))


def split_qkv(prefix, sd):
    """qkv.weight / bias -> mae_st's separate attn.q / k / v."""
    out = {}
    for k, v in sd.items():
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3)):
                out[prefix + k.replace(".attn.qkv.", f".attn.{name}.")] = part
        else:
            out[prefix + k] = v
    return out


def mae_st_pretraining_state(task):
    """models_mae.py MaskedAutoencoderViT with sep_pos_embed and cls_embed (its main_pretrain defaults)."""
    enc = split_qkv("", task.encoder.state_dict())
    dec = task.decoder
    D = dec.decoder_pos_embed.shape[-1]
    table = dec.decoder_pos_embed.detach()
    t, hw = 2, 4
    # separate tables that sum to ours: spatial = ours at t = 0, temporal[t] = ours[t] - ours[0] (same for every s)
    grid = table[:, 1:].reshape(1, t, hw, D)
    if not torch.allclose(grid - grid[:, :1], (grid - grid[:, :1])[:, :, :1].expand(-1, -1, hw, -1)):
        with torch.no_grad():  # make the task's table separable so that the layout can hold it exactly
            dec.decoder_pos_embed[:, 1:] = (grid[:, :, :1] + grid[:, :1] - grid[:, :1, :1]).reshape(1, t * hw, D)
        table, grid = dec.decoder_pos_embed.detach(), dec.decoder_pos_embed.detach()[:, 1:].reshape(1, t, hw, D)
    state = {**enc, "decoder_embed.weight": dec.decoder_embed.weight, "decoder_embed.bias": dec.decoder_embed.bias,
             "mask_token": dec.mask_token,
             "decoder_cls_token": torch.zeros(1, 1, D) if dec.decoder_cls_token is None else dec.decoder_cls_token,
             "decoder_pos_embed_spatial": grid[:, 0], "decoder_pos_embed_temporal": (grid[:, :, 0] - grid[:, 0, :1]),
             "decoder_pos_embed_class": table[:, :1],
             **split_qkv("decoder_", {f"blocks.{k[len('blocks.'):]}": v for k, v in dec.state_dict().items()
                                      if k.startswith("blocks.")}),
             "decoder_norm.weight": task.heads["pixel"][0].weight, "decoder_norm.bias": task.heads["pixel"][0].bias,
             "decoder_pred.weight": task.heads["pixel"][1].weight, "decoder_pred.bias": task.heads["pixel"][1].bias}
    return {k: v.detach().clone() for k, v in state.items()}


def test_slowfast_mae_pyth_continues_pretraining_exactly(tmp_path):
    src, dst = mae_task(0), mae_task(1)
    d = len(src.decoder.blocks)
    state = {**src.encoder.state_dict(), "decoder_embed.weight": src.decoder.decoder_embed.weight,
             "decoder_embed.bias": src.decoder.decoder_embed.bias, "mask_token": src.decoder.mask_token,
             "decoder_pos_embed": src.decoder.decoder_pos_embed,
             **{f"pred_head.transforms.0.{k[len('blocks.'):]}": v for k, v in src.decoder.state_dict().items()
                if k.startswith("blocks.")},
             **{f"pred_head.transforms.0.{d}.{n}": p for n, p in src.heads["pixel"][0].named_parameters()},
             **{f"pred_head.projections.0.{n}": p for n, p in src.heads["pixel"][1].named_parameters()}}
    torch.save({"model_state": state, "epoch": 200}, tmp_path / "k400_VIT_B_16x4_MAE_PT.pyth")
    report = load_pretraining_init(dst, str(tmp_path / "k400_VIT_B_16x4_MAE_PT.pyth"))
    assert not report.missing and not report.dropped and not report.unexpected, report.summary()
    torch.testing.assert_close(predictions(dst), predictions(src), rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["model", "model_state"])
def test_mae_st_pth_continues_pretraining_exactly(tmp_path, wrapper):
    src, dst = mae_task(0), mae_task(1)
    state = mae_st_pretraining_state(src)
    torch.save({wrapper: state, "epoch": 1}, tmp_path / "mae_pretrain_vit_b_k400.pth")
    report = load_pretraining_init(dst, str(tmp_path / "mae_pretrain_vit_b_k400.pth"))
    assert report.dropped == ["decoder.decoder_cls_token"] and not report.missing and not report.unexpected, \
        report.summary()
    torch.testing.assert_close(predictions(dst), predictions(src), rtol=1e-6, atol=1e-6)


def test_mae_st_pth_initializes_a_finetune_model(tmp_path):
    """The encoder of a mae_st pretraining file into the finetune form: q / k / v joined, the decoder dropped,
    the head fresh; the mean-pooled features before norm equal the MAE encoder's on the full clip."""
    src = mae_task(0)
    torch.save({"model_state": mae_st_pretraining_state(src)}, tmp_path / "mae_st.pth")
    model = mvit.create_model("vit_b_16x4", num_classes=7, **ARCH).eval()
    report = mvit.load_pretrained(model, str(tmp_path / "mae_st.pth"), allow_new_head=True,
                                  allow_pretraining_keys=True)
    assert report.missing == ["head.weight", "head.bias"], report.summary()
    assert {"decoder_embed.weight", "mask_token", "decoder_pred.weight"} <= set(report.dropped)
    x = torch.randn(2, 3, *SIZE)
    norm, src.encoder.norm = src.encoder.norm, torch.nn.Identity()
    with torch.no_grad():
        want = norm(src.encoder(x, tokens=True)[:, 1:].mean(1))  # mean pooling -> the encoder's norm -> head
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), want)


def videomae_model(seed, **kw):
    return randomized(mvit.create_model("videomae_vit_b_16x4", num_classes=5, **ARCH, **kw), seed)


def videomae_finetune_state(model):
    """modeling_finetune.py VisionTransformer (use_mean_pooling): qkv without bias + q_bias / v_bias, fc_norm."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(".attn.qkv.bias"):
            q, _, vb = v.chunk(3)
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
        else:
            out[k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k] = v
    return out


def test_videomae_finetuned_pth_gives_the_same_logits(tmp_path):
    src, dst = videomae_model(0), videomae_model(1)
    with torch.no_grad():  # VideoMAE has no k bias: zero in the model the file is made from
        for blk in src.blocks:
            blk.attn.qkv.bias[32:64] = 0
    torch.save({"module": videomae_finetune_state(src)}, tmp_path / "videomae_ft.pth")
    report = mvit.load_pretrained(dst, str(tmp_path / "videomae_ft.pth"))
    assert report.source_format == "videomae" and not report.missing and not report.unexpected
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_videomae_pretraining_pth_gives_the_encoder(tmp_path):
    """modeling_pretrain.py: encoder.* (its norm unused by VideoMAE's finetuning: dropped, fc_norm fresh),
    decoder.*, encoder_to_decoder (no bias), mask_token: the decoder differs from ours and is dropped."""
    src = videomae_model(0)
    enc = {f"encoder.{k}": v for k, v in videomae_finetune_state(src).items() if not k.startswith(("head.", "fc_"))}
    enc.update({"encoder.norm.weight": torch.full((32,), 2.0), "encoder.norm.bias": torch.zeros(32),
                "encoder_to_decoder.weight": torch.zeros(16, 32), "mask_token": torch.zeros(1, 1, 16),
                "decoder.head.weight": torch.zeros(1536, 16), "decoder.norm.weight": torch.ones(16)})
    torch.save({"model": enc}, tmp_path / "videomae_pt.pth")
    dst = videomae_model(1)
    report = mvit.load_pretrained(dst, str(tmp_path / "videomae_pt.pth"), allow_new_head=True,
                                  allow_pretraining_keys=True)
    assert sorted(report.missing) == ["head.bias", "head.weight", "norm.bias", "norm.weight"], report.summary()
    assert "encoder_to_decoder.weight" in report.dropped and "videomae_encoder_norm.weight" in report.dropped
    torch.testing.assert_close(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    # and as a pretraining init of a MAE task on the VideoMAE variant: the encoder, the decoder fresh
    encoder = mvit.create_model("videomae_vit_b_16x4", pretraining="mae", **ARCH)
    task = MaskedModeling(encoder, SIZE, encoder_mode="drop", mask_ratio=0.5, mask_mode="tube", targets=("pixel",),
                          decoder_dim=16, decoder_depth=1, decoder_heads=2)
    report = load_pretraining_init(task, str(tmp_path / "videomae_pt.pth"))
    assert any(k.startswith("decoder.") for k in report.missing) and not report.unexpected
    # the MAE encoder's final norm is where VideoMAE's encoder norm sits (after the blocks, every token): loaded
    assert "norm.weight" not in report.missing and "videomae_encoder_norm.weight" not in report.dropped
    torch.testing.assert_close(task.encoder.norm.weight, torch.full((32,), 2.0), rtol=0, atol=0)


def test_checkpoint_of_the_other_vit_variant_is_a_one_line_error(tmp_path):
    torch.save({"module": videomae_finetune_state(videomae_model(0))}, tmp_path / "videomae.pth")
    with pytest.raises(CheckpointError, match=r"is a VideoMAE checkpoint .*load it into a videomae_vit_\* model$"):
        mvit.load_pretrained(mvit.create_model("vit_b_16x4", num_classes=5, **ARCH), str(tmp_path / "videomae.pth"))
    torch.save({"model_state": mvit.create_model("vit_b_16x4", num_classes=5, **ARCH).state_dict()},
               tmp_path / "slowfast.pyth")
    with pytest.raises(CheckpointError, match=r"is a SlowFast / mae_st ViT checkpoint .*load it into a vit_\* model$"):
        mvit.load_pretrained(videomae_model(0), str(tmp_path / "slowfast.pyth"))


def test_mae_st_separate_decoder_tables_load_as_they_are_into_a_sep_pos_decoder(tmp_path):
    src = mae_task(0)
    state = mae_st_pretraining_state(src)
    torch.save({"model": state}, tmp_path / "mae_st.pth")
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", **ARCH)
    dst = MaskedModeling(encoder, SIZE, encoder_mode="drop", mask_ratio=0.5, mask_mode="random", targets=("pixel",),
                         decoder_dim=16, decoder_depth=1, decoder_heads=2, decoder_sep_pos=True).eval()
    report = load_pretraining_init(dst, str(tmp_path / "mae_st.pth"))
    assert report.dropped == ["decoder.decoder_cls_token"] and not report.missing, report.summary()
    torch.testing.assert_close(dst.decoder.dec_pos_embed_spatial, state["decoder_pos_embed_spatial"])
    torch.testing.assert_close(predictions(dst), predictions(src), rtol=1e-6, atol=1e-6)


def test_mae_st_decoder_class_token_loads_into_a_decoder_with_its_own(tmp_path):
    """decoder.cls_token=true: mae_st's decoder_cls_token starts the decoder (the encoder's is not used), so a
    continued pretraining predicts what the file's model predicts."""
    src, dst = mae_task(0, decoder_cls_token=True), mae_task(1, decoder_cls_token=True)
    torch.save({"model": mae_st_pretraining_state(src)}, tmp_path / "mae_st.pth")
    report = load_pretraining_init(dst, str(tmp_path / "mae_st.pth"))
    assert not report.dropped and not report.missing and not report.unexpected, report.summary()
    torch.testing.assert_close(dst.decoder.decoder_cls_token, src.decoder.decoder_cls_token, rtol=0, atol=0)
    torch.testing.assert_close(predictions(dst), predictions(src), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # and it is used (a constant shift would vanish in the blocks' LayerNorms)
        src.decoder.decoder_cls_token.add_(torch.randn_like(src.decoder.decoder_cls_token))
    assert (predictions(dst) - predictions(src)).abs().max() > 1e-3


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_files_saved_by_the_reference_training_scripts_load(tmp_path, wrapper):
    """mae_st util/misc.py and VideoMAE utils.py save_model write {'model', 'optimizer', 'epoch', 'scaler', 'args'}
    with the run's argparse.Namespace; VideoMAE's DeepSpeed finetuning writes {'module', ...} in fp16."""
    import argparse
    model = videomae_model(0)
    sd = videomae_finetune_state(model)
    if wrapper == "module":
        state = {"module": {k: v.half() for k, v in sd.items()}, "buffer_names": [], "optimizer": None,
                 "ds_config": {"fp16": {"enabled": True}}, "ds_version": "0.5.8", "epoch": 29}
    else:
        opt = torch.optim.AdamW(model.parameters())
        state = {"model": sd, "optimizer": opt.state_dict(), "epoch": 29, "scaler": {"scale": 65536.0},
                 "args": argparse.Namespace(model="vit_base_patch16_224", batch_size=8, input_size=224)}
    torch.save(state, tmp_path / "checkpoint-29.pth")
    dst = videomae_model(1)
    report = mvit.load_pretrained(dst, str(tmp_path / "checkpoint-29.pth"))
    assert report.source_format == "videomae" and not report.missing, report.summary()
    torch.testing.assert_close(dst.blocks[1].mlp.fc1.weight, sd["blocks.1.mlp.fc1.weight"].float(),
                               rtol=0, atol=0 if wrapper == "model" else 1e-3)
