"""Exactness against the reference MAE: SlowFast's MaskMViT in MAE mode (slowfast/models/masked.py,
`_mae_forward`) vs our masked-modeling task in its drop + pixel corner, on a tiny ViT on CPU, with the
same weights (the reference's state dict loaded through pretrain.init), the same clip and the same mask.

The reference code is not a dependency. Get it with
    git clone https://github.com/facebookresearch/SlowFast /somewhere/SlowFast
and point SLOWFAST_PATH at that folder; without it the test skips. Only torch and numpy are needed: the
few modules of fvcore / detectron2 / pytorchvideo / SlowFast's utils that the model files import are
replaced by stubs here (none of them takes part in the MAE forward).
"""
import copy
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mvit
from pretrain.init import load_pretraining_init
from pretrain.maskfeat import MaskedModeling

SLOWFAST = os.environ.get("SLOWFAST_PATH", "")
pytestmark = pytest.mark.skipif(
    not (SLOWFAST and (Path(SLOWFAST) / "slowfast" / "models" / "masked.py").is_file()),
    reason="reference code absent: git clone https://github.com/facebookresearch/SlowFast and set SLOWFAST_PATH")


class _CfgNode(dict):
    """fvcore's CfgNode, as far as slowfast/config/defaults.py and the models use it."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v

    def clone(self):
        return copy.deepcopy(self)


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _package(name, path):
    """A package whose __init__ does not run (SlowFast's pull in its whole model zoo)."""
    mod = _stub(name)
    mod.__path__ = [str(path)]
    return mod


@pytest.fixture(scope="module")
def reference():
    saved = dict(sys.modules)

    class Registry:
        def __init__(self, *a):
            pass

        def register(self):
            return lambda cls: cls

    root = Path(SLOWFAST) / "slowfast"
    for name in ("fvcore", "fvcore.common", "fvcore.nn", "detectron2", "pytorchvideo", "pytorchvideo.layers"):
        _stub(name)
    _stub("fvcore.common.config", CfgNode=_CfgNode)
    _stub("fvcore.common.registry", Registry=Registry)
    _stub("fvcore.nn.weight_init", c2_msra_fill=None, c2_xavier_fill=None)
    _stub("detectron2.layers", ROIAlign=None)
    _stub("pytorchvideo.layers.swish", Swish=nn.Module)
    _stub("pytorchvideo.layers.batch_norm", NaiveSyncBatchNorm1d=nn.Module, NaiveSyncBatchNorm3d=nn.Module)
    _package("slowfast", root)
    _package("slowfast.models", root / "models")
    _package("slowfast.utils", root / "utils")
    import logging
    _stub("slowfast.utils.logging", get_logger=logging.getLogger)
    _stub("slowfast.utils.misc")
    _stub("slowfast.utils.weight_init_helper")
    _stub("slowfast.models.build", MODEL_REGISTRY=Registry())
    try:
        from slowfast.config.defaults import get_cfg
        from slowfast.models.masked import MaskMViT
        yield get_cfg, MaskMViT
    finally:
        for k in [k for k in sys.modules if k not in saved]:
            del sys.modules[k]


def tiny_cfg(get_cfg, tube=False):
    """SlowFast configs/masked_ssl/k400_VIT_B_16x4_MAE_PT.yaml at toy size: 4x64x64 clips, 2x4x4 tokens (the
    reference wants square frames)."""
    cfg = get_cfg()
    cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = 4, 64, 64
    m = cfg.MVIT
    m.ZERO_DECAY_POS_CLS, m.SEP_POS_EMBED = False, True
    m.PATCH_KERNEL = m.PATCH_STRIDE = (2, 16, 16)
    m.PATCH_PADDING = (0, 0, 0)
    m.EMBED_DIM, m.NUM_HEADS, m.MLP_RATIO, m.QKV_BIAS, m.DEPTH = 32, 4, 4.0, True, 2
    m.NORM, m.DROPPATH_RATE, m.MODE, m.CLS_EMBED_ON = "layernorm", 0.0, "conv", True
    k = cfg.MASK
    k.ENABLE, k.MAE_ON, k.MAE_RND_MASK = True, True, False  # the mask comes in, as from our loader
    k.PRETRAIN_DEPTH, k.HEAD_TYPE, k.DECODER_DEPTH, k.DECODER_EMBED_DIM = [1], "separate_xformer", 2, 128
    cfg.AUG.MASK_RATIO, cfg.AUG.MASK_TUBE = 0.75, tube
    cfg.MODEL.ARCH, cfg.MODEL.MODEL_NAME, cfg.MODEL.DROPOUT_RATE = "maskmvit", "MaskMViT", 0.0
    return cfg


def ours(ratio):
    encoder = mvit.create_model("vit_b_16x4", pretraining="mae", depths=(2,), embed_dim=32, num_heads=4,
                                input_size=(4, 64, 64))
    return MaskedModeling(encoder, (4, 64, 64), encoder_mode="drop", mask_ratio=ratio, mask_mode="random",
                          targets=("pixel",), decoder_dim=128, decoder_depth=2, decoder_heads=2)


def test_mae_forward_matches_slowfast(reference, tmp_path):
    get_cfg, MaskMViT = reference
    torch.manual_seed(0)
    ref = MaskMViT(tiny_cfg(get_cfg)).eval()
    with torch.no_grad():  # random (not 0 / 1) norms and biases, so that every tensor counts
        for k, p in ref.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save({"model_state": ref.state_dict(), "epoch": 1}, tmp_path / "mae.pyth")
    task = ours(0.75).eval()
    report = load_pretraining_init(task, str(tmp_path / "mae.pyth"))
    assert not report.missing and not report.unexpected, report.summary()

    video = torch.randn(3, 3, 4, 64, 64)
    units = task.make_masks(3, "cpu")  # (3, 2, 4, 4): 8 of 32 tokens visible per clip
    with torch.no_grad():
        # the reference takes a given mask as its noise: argsort puts the visible (0) tokens first. It keeps
        # int(L * (1 - masked fraction)) in float32, which is exact here (0.75); at 14 of 18 masked it
        # keeps int(3.99...) = 3 of the 4 visible tokens
        preds, labels = ref([video, None, units.float()])
        pred_ref, (label_ref, _) = preds[0], labels[0]
        loss_ref = ((pred_ref - label_ref) ** 2).mean()  # its multi_mse loss: MSE over the masked tokens
        tokens = task.forward_encoder(video, units)
        masked = units.flatten(1)
        pred = task.heads["pixel"](tokens[masked])  # (M, 768), masked tokens in (clip, t, h, w) order
        label = task.targets(video)["pixel"][masked]
        loss, parts = task.forward_loss(tokens, task.targets(video), units)
    diffs = {"pred": (pred - pred_ref).abs().max().item(), "label": (label - label_ref).abs().max().item(),
             "loss": (loss - loss_ref).abs().item()}
    print("max |ours - SlowFast|:", diffs)
    assert pred_ref.shape == pred.shape == (3 * 24, 768) and pred_ref.std() > 0.1
    assert max(diffs.values()) < 1e-5, diffs


def test_mae_gradients_match_slowfast(reference, tmp_path):
    """One backward of the same loss: the gradients of the encoder, the decoder and the head agree."""
    get_cfg, MaskMViT = reference
    torch.manual_seed(1)
    ref = MaskMViT(tiny_cfg(get_cfg)).train()
    torch.save({"model_state": ref.state_dict()}, tmp_path / "mae.pyth")
    task = ours(0.75).train()
    load_pretraining_init(task, str(tmp_path / "mae.pyth"))
    video = torch.randn(2, 3, 4, 64, 64)
    units = task.make_masks(2, "cpu")
    preds, labels = ref([video, None, units.float()])
    ((preds[0] - labels[0][0]) ** 2).mean().backward()
    task(dict(video=video, mask=units))[0].backward()
    pairs = {"patch_embed.proj.weight": "encoder.patch_embed.proj.weight", "cls_token": "encoder.cls_token",
             "pos_embed_spatial": "encoder.pos_embed_spatial", "pos_embed_class": "encoder.pos_embed_class",
             "blocks.1.attn.qkv.weight": "encoder.blocks.1.attn.qkv.weight", "norm.weight": "encoder.norm.weight",
             "decoder_embed.weight": "decoder.decoder_embed.weight", "mask_token": "decoder.mask_token",
             "decoder_pos_embed": "decoder.decoder_pos_embed",
             "pred_head.transforms.0.1.mlp.fc2.weight": "decoder.blocks.1.mlp.fc2.weight",
             "pred_head.transforms.0.2.weight": "heads.pixel.0.weight",
             "pred_head.projections.0.weight": "heads.pixel.1.weight"}
    mine, theirs = dict(task.named_parameters()), dict(ref.named_parameters())
    worst = max((mine[b].grad - theirs[a].grad).abs().max().item() / theirs[a].grad.abs().max().item()
                for a, b in pairs.items())
    print("max relative gradient difference:", worst)
    assert worst < 1e-4
