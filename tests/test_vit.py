"""ViT video backbones (SlowFast's MViT with no pooling): shapes, parameter counts and outputs against
timm's ViT, token dropping, the fresh final norm, and the VideoMAE variant's fixed position table."""
import pytest
import torch

import mvit


def test_vit_b_16x4_shapes():
    cfg = mvit.get_config("vit_b_16x4")
    assert cfg.patch_grid((16, 224, 224)) == (8, 14, 14)  # 1568 tokens
    with torch.device("meta"):  # shapes only: no 86M-parameter init
        model = mvit.create_model("vit_b_16x4")
    assert tuple(model.patch_embed.proj.weight.shape) == (768, 3, 2, 16, 16)
    assert tuple(model.pos_embed_spatial.shape) == (1, 196, 768)
    assert tuple(model.pos_embed_temporal.shape) == (1, 8, 768)
    assert tuple(model.pos_embed_class.shape) == (1, 1, 768)
    assert len(model.blocks) == 12 and model.blocks[0].attn.heads == 12
    assert model.blocks[0].attn.qkv.bias is not None and model.norm.eps == 1e-6
    assert model.pos_table((8, 14, 14)).shape == (1 + 1568, 768)
    assert model.cfg.plain and model.feature_grid((16, 224, 224)) == (8, 14, 14)
    for name, (depth, dim) in {"vit_l_16x4": (24, 1024), "vit_h_16x4": (32, 1280)}.items():
        cfg = mvit.get_config(name)
        assert (cfg.depth, cfg.embed_dim, cfg.num_heads) == (depth, dim, 16) and cfg.plain


def test_vit_b_parameter_count_is_timms_plus_the_video_parts():
    """timm vit_base_patch16_224 with the same head: ours adds the second frame of the patch kernel and
    the temporal position table; everything else has the same shapes."""
    import timm
    with torch.device("meta"):
        ref = sum(p.numel() for p in timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=400,
                                                       global_pool="avg").parameters())
        ours = sum(p.numel() for p in mvit.create_model("vit_b_16x4").parameters())
    assert ours == ref + 768 * 3 * 16 * 16 + 8 * 768


def test_static_clip_matches_timm_vit():
    """A ViT whose patch kernel is timm's split over two frames, with a zero temporal table, gives timm's
    logits on a clip of two copies of the image (mean pooling -> norm -> head, as fc_norm in timm)."""
    import timm
    torch.manual_seed(0)
    ref = timm.models.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=4,
                                        num_classes=5, global_pool="avg").eval()
    ours = mvit.create_model("vit_b_16x4", depths=(2,), embed_dim=32, num_heads=4, input_size=(2, 32, 32),
                             num_classes=5).eval()
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith(("blocks.", "head."))}
    sd["norm.weight"], sd["norm.bias"] = ref.fc_norm.weight, ref.fc_norm.bias
    sd["cls_token"] = ref.cls_token
    sd["patch_embed.proj.weight"] = ref.patch_embed.proj.weight[:, :, None].expand(-1, -1, 2, -1, -1) / 2
    sd["patch_embed.proj.bias"] = ref.patch_embed.proj.bias
    sd["pos_embed_class"], sd["pos_embed_spatial"] = ref.pos_embed[:, :1], ref.pos_embed[:, 1:]
    sd["pos_embed_temporal"] = torch.zeros(1, 1, 32)
    ours.load_state_dict(sd)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(image[:, :, None].expand(-1, -1, 2, -1, -1)), ref(image),
                                   rtol=1e-5, atol=1e-5)


def tiny_mae_encoder(**kw):
    return mvit.create_model("vit_b_16x4", pretraining="mae", depths=(2,), embed_dim=32, num_heads=4,
                             input_size=(4, 32, 48), **kw)


def test_dropping_tokens_equals_gathering_the_full_forward_when_all_are_kept():
    """keep= with every token in a shuffled order: the same tokens as the full forward, reordered (no
    rel-pos, so attention does not see the order); the class token is unchanged."""
    torch.manual_seed(0)
    model = tiny_mae_encoder().eval()
    x = torch.randn(2, 3, 4, 32, 48)
    N = 2 * 2 * 3
    keep = torch.stack([torch.randperm(N) for _ in range(2)])
    with torch.no_grad():
        full = model(x, tokens=True)  # (B, 1 + N, D)
        part = model(x, keep=keep, tokens=True)
    torch.testing.assert_close(part[:, 0], full[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part[:, 1:], full[:, 1:].gather(1, keep[..., None].expand(-1, -1, 32)),
                               rtol=1e-5, atol=1e-5)


def test_dropping_tokens_needs_a_plain_vit():
    model = mvit.create_model("mvitv2_demo_8x2_maskfeat")
    with pytest.raises(ValueError, match="plain ViT"):
        model(torch.randn(1, 3, 8, 96, 96), keep=torch.zeros(1, 3, dtype=torch.long), tokens=True)
    with pytest.raises(ValueError, match="plain ViT"):
        mvit.get_config("mvitv2_demo_8x2_maskfeat", pretraining="mae")


@pytest.mark.parametrize("name", ["vit_demo_8x2", "mvitv2_demo_8x2_maskfeat"])
def test_fresh_final_norm_starts_like_the_reference(name):
    """SlowFast `_init_weights`: LayerNorm weight 1, bias 0.02 (the final norm a finetune starts fresh)."""
    model = mvit.create_model(name, num_classes=3)
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert torch.equal(model.norm.bias, torch.full_like(model.norm.bias, 0.02))


def test_videomae_variant_has_a_fixed_sinusoid_table_and_no_class_token():
    model = mvit.create_model("videomae_vit_b_16x4", depths=(1,), embed_dim=32, num_heads=4, input_size=(4, 32, 32),
                              num_classes=3)
    assert model.cls_token is None and "pos_sincos" not in model.state_dict()
    table = model.pos_table((2, 2, 2))[0]  # (8, 32)
    # VideoMAE get_sinusoid_encoding_table: sin(p / 10000^(2(j//2)/d)) at even j, cos at odd j
    p, j = 3, 5
    assert table[p, j].item() == pytest.approx(torch.cos(torch.tensor(p / 10000 ** (2 * (j // 2) / 32))).item())
    assert table[p, 4].item() == pytest.approx(torch.sin(torch.tensor(p / 10000 ** (4 / 32))).item())
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 3)


RECIPES = {"pretrain": ["k400_vit_b_16x4_mae", "k400_vit_l_16x4_mae", "k400_vit_h_16x4_mae"],
           "finetune": ["k400_vit_b_16x4", "k400_vit_l_16x4", "k400_vit_h_16x4"]}


@pytest.mark.parametrize("stage,name", [(s, n) for s, names in RECIPES.items() for n in names])
def test_vit_recipes_load_through_the_entry_points_and_build_their_models(stage, name):
    """Every MAE recipe parses with its stage's schema and builds its model (on the meta device: shapes
    only), with the reference's values where the issue names them."""
    from pathlib import Path

    from finetune.run import FinetuneConfig
    from pretrain.config import parse_config
    from pretrain.run import PretrainConfig, build_task
    recipe = Path(__file__).resolve().parents[1] / "configs" / stage / f"{name}.yaml"
    if stage == "pretrain":
        cfg = parse_config(PretrainConfig, ["--config", str(recipe), "data.train=x"])
        assert (cfg.task, cfg.mask.ratio, cfg.decoder.depth, cfg.decoder.dim, cfg.data.repeats) == ("mae", 0.9, 4, 512, 4)
        assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.weight_decay == 0.05 and cfg.optim.clip_grad == 0.02
        with torch.device("meta"):
            task = build_task(cfg)
        assert task.encoder_mode == "drop" and task.masker.keep == 156 and task.heads["pixel"][1].out_features == 768
    else:
        cfg = parse_config(FinetuneConfig, ["--config", str(recipe), "data.train=x", "data.val=y"])
        size = name.split("_")[2]
        assert cfg.optim.layer_decay == {"b": 0.65, "l": 0.75, "h": 0.8}[size]
        arch = mvit.get_config(cfg.model.name)
        assert (arch.drop_path_rate, arch.head_dropout) == {"b": (0.1, 0.3), "l": (0.2, 0.3), "h": (0.2, 0.5)}[size]
        assert arch.global_pool == "avg" and arch.fc_norm and arch.head_init_scale == 0.001
        assert (cfg.mix.mixup, cfg.mix.cutmix, cfg.data.erase_prob) == (0.8, 1.0, 0.25)
        assert cfg.data.rand_augment.startswith("rand-m7")


# ----------------------------------------------------------------------------- pos_init="sincos"


@pytest.mark.parametrize("shape, dim", [((6, 6), 128), ((14, 14), 768), ((3, 5), 64)])
def test_sincos_grid_table_is_timms_2d_table(shape, dim):
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    from mvit.model import sincos_grid_table
    torch.testing.assert_close(sincos_grid_table(shape, dim), build_sincos2d_pos_embed(list(shape), dim),
                               atol=1e-6, rtol=0)


def test_split_sincos_table_sums_to_the_3d_table_on_disjoint_channels():
    from mvit.model import sincos_grid_table, split_sincos_table
    temporal, spatial = split_sincos_table((4, 6, 6), 128)
    full = sincos_grid_table((4, 6, 6), 128).view(4, 36, 128)
    torch.testing.assert_close(temporal[:, None] + spatial[None], full, atol=0, rtol=0)
    assert not ((temporal != 0).any(0) & (spatial != 0).any(0)).any()  # each channel is one axis's
    assert len({tuple(r.tolist()) for r in full.flatten(0, 1)}) == 4 * 36  # every token its own row


def test_sincos_pos_init_starts_the_tables_from_the_grid_and_the_reference_stays_trunc_normal():
    from mvit.model import split_sincos_table
    from pretrain.maskfeat import MaskedModeling
    demo = mvit.create_model("vit_demo_8x2", pretraining="mae")  # the demo ViT: pos_init="sincos"
    temporal, spatial = split_sincos_table((4, 6, 6), 128)
    assert torch.equal(demo.pos_embed_temporal[0], temporal) and torch.equal(demo.pos_embed_spatial[0], spatial)
    assert not demo.pos_embed_class.any() and demo.pos_embed_spatial.requires_grad  # learned from there
    torch.manual_seed(0)
    reference = mvit.create_model("vit_b_16x4", depths=(1,), pretraining="mae")
    assert reference.cfg.pos_init == "trunc_normal" and 0.015 < reference.pos_embed_spatial.std() < 0.025
    task = MaskedModeling(demo, (8, 96, 96), encoder_mode="drop", mask_ratio=0.75, mask_mode="random",
                          targets=("pixel",), decoder_dim=96, decoder_depth=1, decoder_heads=4,
                          decoder_pos_init="sincos")
    from mvit.model import sincos_grid_table
    table = task.decoder.decoder_pos_embed[0]
    assert not table[0].any() and torch.equal(table[1:], sincos_grid_table((4, 6, 6), 96))
    with pytest.raises(ValueError, match="pos_init must be one of"):
        mvit.create_model("vit_demo_8x2", pos_init="sin")
    with pytest.raises(ValueError, match="needs learned absolute position tables"):
        mvit.create_model("mvitv2_demo_8x2_maskfeat", pos_init="sincos")
