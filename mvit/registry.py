"""Named MViTv2 / MViTv1 architectures and `create_model` / `list_models`.

Image variants mirror timm's `mvitv2_*` (facebookresearch/mvit ImageNet models); video
variants mirror the SlowFast Kinetics configs (`configs/Kinetics/MVITv2_*.yaml`) and the
MaskFeat configs (`configs/masked_ssl/k400_MVITv2_*_16x4_{FT,MaskFeat_PT}.yaml`). MViTv1:
SlowFast `configs/Kinetics/MVIT_B_{16x4,32x3}_CONV.yaml` (16x4 = torchvision `mvit_v1_b`) and
`configs/ImageNet/MVIT_B_16_CONV.yaml`. ViT (MAE): SlowFast `configs/masked_ssl/k400_VIT_*_16x4_*.yaml`;
VideoMAE's own ViT as `videomae_*`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace

from .model import MViT, MViTConfig

_IMAGE = dict(video=False, input_size=(224, 224), patch_kernel=(7, 7), patch_stride=(4, 4),
              patch_padding=(3, 3), pool_kernel=(3, 3), stage_q_strides=((2, 2),) * 3, kv_stride=(4, 4),
              num_classes=1000, residual_pooling_cls=True)
_IMAGE_AVG = dict(_IMAGE, cls_token=False, global_pool="avg")
_VIDEO = dict(head_dropout=0.5)  # supervised Kinetics: class-token head, dropout 0.5
# MaskFeat finetune form: widen in the MLP, mean-pool head (mean -> norm), tiny head init
_MASKFEAT = dict(dim_mul_in_att=False, global_pool="avg", fc_norm=True, head_init_scale=0.001)
_L = dict(depths=(2, 6, 36, 4), embed_dim=144, num_heads=2)
# MViTv1: absolute position embeddings (separate space / time / class tables for videos, one table
# for images), no rel-pos, no residual pooling, widening in the MLP, q pooled only at stage starts
_V1 = dict(abs_pos=True, rel_pos=False, residual_pooling=False, residual_pooling_cls=False,
           dim_mul_in_att=False, pool_q_every_block=False)

# ViT video (SlowFast `configs/masked_ssl/k400_VIT_*_16x4_{MAE_PT,FT}.yaml`): its MViT with one stage and no
# pooling; patch kernel = stride = (2, 16, 16), no padding; separate spatial / temporal / class position
# embeddings (SEP_POS_EMBED), class token, qkv bias, LayerNorm eps 1e-6. Finetune form: mean pooling ->
# norm -> dropout -> head (USE_MEAN_POOLING, HEAD_INIT_SCALE 0.001).
_VIT = dict(stage_q_strides=(), kv_stride=(1, 1, 1), pool_kernel=(1, 1, 1), patch_kernel=(2, 16, 16),
            patch_stride=(2, 16, 16), patch_padding=(0, 0, 0), abs_pos=True, rel_pos=False, residual_pooling=False,
            dim_mul_in_att=False, global_pool="avg", fc_norm=True, head_init_scale=0.001)
# VideoMAE (MCG-NJU/VideoMAE modeling_finetune.py): no class token, a fixed 1-D sinusoid table, mean pooling ->
# fc_norm -> head; inputs normalized with the ImageNet mean / std (videodata.IMAGENET_MEAN / _STD)
_VIDEOMAE = dict(_VIT, abs_pos=False, sincos_pos=True, cls_token=False)

_CONFIGS: dict[str, MViTConfig] = {
    # image (timm structure and parameter counts)
    "mvitv2_tiny": MViTConfig(depths=(1, 2, 5, 2), **_IMAGE_AVG),
    "mvitv2_small": MViTConfig(depths=(1, 2, 11, 2), **_IMAGE_AVG),
    "mvitv2_base": MViTConfig(depths=(2, 3, 16, 3), **_IMAGE_AVG),
    "mvitv2_large": MViTConfig(**_L, dim_mul_in_att=False, **_IMAGE_AVG),
    "mvitv2_huge": MViTConfig(depths=(4, 8, 60, 8), embed_dim=192, num_heads=3, **_IMAGE_AVG),
    "mvitv2_small_cls": MViTConfig(depths=(1, 2, 11, 2), **_IMAGE),
    "mvitv2_base_cls": MViTConfig(depths=(2, 3, 16, 3), **_IMAGE),
    "mvitv2_large_cls": MViTConfig(**_L, **_IMAGE),
    "mvitv2_huge_cls": MViTConfig(depths=(4, 8, 60, 8), embed_dim=192, num_heads=3, **_IMAGE),
    # video, supervised Kinetics-400
    "mvitv2_s_16x4": MViTConfig(depths=(1, 2, 11, 2), drop_path_rate=0.2, **_VIDEO),
    "mvitv2_b_32x3": MViTConfig(depths=(2, 3, 16, 3), input_size=(32, 224, 224), drop_path_rate=0.3, **_VIDEO),
    "mvitv2_l_40x3": MViTConfig(**_L, input_size=(40, 312, 312), drop_path_rate=0.75, **_VIDEO),
    # video, MaskFeat (finetune form; pretraining=True gives the pretraining form)
    "mvitv2_s_16x4_maskfeat": MViTConfig(depths=(1, 2, 11, 2), drop_path_rate=0.1, **_MASKFEAT),
    "mvitv2_l_16x4_maskfeat": MViTConfig(**_L, drop_path_rate=0.2, **_MASKFEAT),
    # MViTv1-B: Kinetics-400 (16x4: pooling kernel 3x3x3; 32x3: no POOL_KVQ_KERNEL, so stride + 1) and ImageNet
    "mvitv1_b_16x4": MViTConfig(depths=(1, 2, 11, 2), drop_path_rate=0.2, **_V1, **_VIDEO),
    "mvitv1_b_32x3": MViTConfig(depths=(2, 3, 16, 3), input_size=(32, 224, 224), pool_kernel=None,
                                drop_path_rate=0.3, **_V1, **_VIDEO),
    "mvitv1_b_16": MViTConfig(depths=(1, 2, 11, 2), drop_path_rate=0.1, **{**_IMAGE, **_V1}),
    # ViT video, MAE (finetune form; pretraining="mae" gives the MAE encoder)
    "vit_b_16x4": MViTConfig(depths=(12,), embed_dim=768, num_heads=12, drop_path_rate=0.1, head_dropout=0.3, **_VIT),
    "vit_l_16x4": MViTConfig(depths=(24,), embed_dim=1024, num_heads=16, drop_path_rate=0.2, head_dropout=0.3,
                             **_VIT),
    "vit_h_16x4": MViTConfig(depths=(32,), embed_dim=1280, num_heads=16, drop_path_rate=0.2, head_dropout=0.5,
                             **_VIT),
    "videomae_vit_b_16x4": MViTConfig(depths=(12,), embed_dim=768, num_heads=12, drop_path_rate=0.1, **_VIDEOMAE),
    "videomae_vit_l_16x4": MViTConfig(depths=(24,), embed_dim=1024, num_heads=16, drop_path_rate=0.2, **_VIDEOMAE),
    # a 1.4M-parameter ViT for the CPU demo (8×96² clips: 4×6×6 = 144 tokens of 2×16×16 px); its position
    # tables start as sin-cos tables: from the reference's 0.02 noise a short MAE run finds no place (docs/mae.md)
    "vit_demo_8x2": MViTConfig(depths=(6,), embed_dim=128, num_heads=4, input_size=(8, 96, 96), num_classes=12,
                               pos_init="sincos", **_VIT),
    # a 1.7M-parameter MaskFeat MViTv2 for the CPU demo (8×64² clips)
    "mvitv2_demo_8x2_maskfeat": MViTConfig(depths=(1, 2, 3, 1), embed_dim=32, input_size=(8, 64, 64),
                                           num_classes=12, **_MASKFEAT),
}


def list_models() -> list[str]:
    return sorted(_CONFIGS)


PRETRAINING_FORMS = ("maskfeat", "mae")


def pretraining_form(cfg: MViTConfig, form: str = "maskfeat") -> MViTConfig:
    """The encoder of a masked-modeling task; no head, no drop path.

    "maskfeat" (SlowFast `*_MaskFeat_PT.yaml`): every token goes through the encoder, masked ones
    replaced by a mask token; q stride 1 at the last stage (224² -> 14×14 output grid); no final norm.
    "mae" (SlowFast `*_MAE_PT.yaml`): the encoder sees only the visible tokens (a plain ViT); its final
    norm is kept, the mask token belongs to the decoder; global_pool / fc_norm give the encoder
    `norm` its place after the blocks.
    """
    if form not in PRETRAINING_FORMS:
        raise ValueError(f"pretraining form must be one of {PRETRAINING_FORMS}, not {form!r}")
    common = dict(num_classes=0, drop_path_rate=0.0, head_dropout=0.0)
    if form == "mae":
        if not cfg.plain:
            raise ValueError("MAE pretraining drops tokens, which needs a plain ViT (no pooling, no rel-pos): "
                             "use a vit_* model")
        return replace(cfg, mask_token=False, final_norm=True, fc_norm=False, **common)
    ones = (1,) * len(cfg.input_size)
    strides = cfg.stage_q_strides[:-1] + (ones,) if cfg.stage_q_strides else ()
    return replace(cfg, stage_q_strides=strides, mask_token=True, final_norm=False, **common)


def get_config(name: str, *, pretraining: bool | str = False, **overrides) -> MViTConfig:
    """The architecture config of a registered model, with field overrides. pretraining: False, True
    (= "maskfeat") or a form of `pretraining_form`."""
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    cfg = _CONFIGS[name]
    if pretraining:
        cfg = pretraining_form(cfg, "maskfeat" if pretraining is True else pretraining)
    known = {f.name for f in fields(MViTConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise TypeError(f"unknown MViTConfig field(s) {bad} for model {name!r}")
    return replace(cfg, **{k: _as_tuples(v) for k, v in overrides.items()})


def _as_tuples(v):
    """YAML / JSON lists -> the tuples MViTConfig holds (nested one level for strides)."""
    if isinstance(v, (list, tuple)):
        return tuple(_as_tuples(x) for x in v)
    return v


def config_to_json(cfg: MViTConfig) -> str:
    return json.dumps(asdict(cfg))


def config_from_json(text: str) -> MViTConfig:
    """Inverse of config_to_json; unknown fields are an error naming them."""
    d = json.loads(text)
    known = {f.name for f in fields(MViTConfig)}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"unknown MViTConfig field(s) {bad}")
    return MViTConfig(**{k: _as_tuples(v) for k, v in d.items()})


def create_model(name: str, *, pretraining: bool | str = False, pretrained: str | None = None, **overrides) -> MViT:
    """Build a registered model. `pretrained`: a checkpoint path loaded with `load_pretrained`."""
    model = MViT(get_config(name, pretraining=pretraining, **overrides))
    if pretrained is not None:
        from .checkpoint import load_pretrained
        load_pretrained(model, pretrained)
    return model
