"""Named MViTv2 / MViTv1 architectures and `create_model` / `list_models`.

Image variants mirror timm's `mvitv2_*` (facebookresearch/mvit ImageNet models); video
variants mirror the SlowFast Kinetics configs (`configs/Kinetics/MVITv2_*.yaml`) and the
MaskFeat configs (`configs/masked_ssl/k400_MVITv2_*_16x4_{FT,MaskFeat_PT}.yaml`). MViTv1:
SlowFast `configs/Kinetics/MVIT_B_{16x4,32x3}_CONV.yaml` (16x4 = torchvision `mvit_v1_b`) and
`configs/ImageNet/MVIT_B_16_CONV.yaml`.
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
    # a 1.7M-parameter MaskFeat MViTv2 for the CPU demo (8×64² clips)
    "mvitv2_demo_8x2_maskfeat": MViTConfig(depths=(1, 2, 3, 1), embed_dim=32, input_size=(8, 64, 64),
                                           num_classes=12, **_MASKFEAT),
}


def list_models() -> list[str]:
    return sorted(_CONFIGS)


def pretraining_form(cfg: MViTConfig) -> MViTConfig:
    """MaskFeat pretraining form: q stride 1 at the last stage (224² -> 14×14 output grid),
    mask token, no final norm, no head, no drop path (SlowFast `*_MaskFeat_PT.yaml`)."""
    ones = (1,) * len(cfg.input_size)
    return replace(cfg, stage_q_strides=cfg.stage_q_strides[:-1] + (ones,), mask_token=True,
                   final_norm=False, num_classes=0, drop_path_rate=0.0, head_dropout=0.0)


def get_config(name: str, *, pretraining: bool = False, **overrides) -> MViTConfig:
    """The architecture config of a registered model, with field overrides."""
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    cfg = _CONFIGS[name]
    if pretraining:
        cfg = pretraining_form(cfg)
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


def create_model(name: str, *, pretraining: bool = False, pretrained: str | None = None, **overrides) -> MViT:
    """Build a registered model. `pretrained`: a checkpoint path loaded with `load_pretrained`."""
    model = MViT(get_config(name, pretraining=pretraining, **overrides))
    if pretrained is not None:
        from .checkpoint import load_pretrained
        load_pretrained(model, pretrained)
    return model
