"""Pretraining `init=`: our export and checkpoint folders, a reference SlowFast MaskFeat `.pyth`, an image
checkpoint (inflated), and the errors a user meets."""
import json

import pytest
import torch
from safetensors.torch import save_file
from test_pretrain_run import TINY, run, shards  # noqa: F401 - the shards fixture

import mvit
from mvit import CheckpointError
from pretrain.init import load_pretraining_init
from pretrain.maskfeat import MaskFeat

SIZE = (4, 64, 64)
ARCH = dict(depths=(1, 2, 1, 1), embed_dim=16, input_size=SIZE)


def task(seed, name="mvitv2_s_16x4_maskfeat"):
    """A tiny MaskFeat task with every weight random, LayerNorm and biases included."""
    torch.manual_seed(seed)
    t = MaskFeat(mvit.create_model(name, pretraining=True, **ARCH), SIZE)
    with torch.no_grad():
        for p in t.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return t.eval()


def predictions(t):
    """HOG predictions of every output token for a fixed clip and mask: (B, t·h·w, 108)."""
    torch.manual_seed(123)
    video, units = torch.randn(2, 3, *SIZE), t.make_masks(2, "cpu")
    with torch.no_grad():
        return t.heads["hog"](t.forward_encoder(video, units))


def reference_maskfeat_pyth(t, path):
    """The layout of a released SlowFast MaskFeat checkpoint (MaskMViT): encoder keys at the top (no final
    norm, no head), `mask_token`, `pred_head.transforms.0.0` (LayerNorm) and `pred_head.projections.0`
    (Linear), the HOG layer's Sobel buffers `hogs.0.weight_x / weight_y`, in `model_state`."""
    head = t.heads["hog"]
    state = {**t.encoder.state_dict(),
             "pred_head.transforms.0.0.weight": head[0].weight, "pred_head.transforms.0.0.bias": head[0].bias,
             "pred_head.projections.0.weight": head[1].weight, "pred_head.projections.0.bias": head[1].bias,
             "hogs.0.weight_x": t.hog.weight_x, "hogs.0.weight_y": t.hog.weight_y}
    torch.save({"model_state": state, "epoch": 300, "cfg": "MASK:\n  ENABLE: True\n"}, path)
    return path


def test_reference_maskfeat_checkpoint_gives_identical_predictions(tmp_path):
    src, dst = task(0), task(1)
    path = reference_maskfeat_pyth(src, tmp_path / "k400_MVITv2_S_16x4_MaskFeat_PT.pyth")
    assert (predictions(dst) - predictions(src)).abs().max() > 1e-2  # different before loading
    report = load_pretraining_init(dst, str(path))
    assert report.source_format == "flat" and not report.missing and not report.unexpected
    assert sorted(report.dropped) == ["hogs.0.weight_x", "hogs.0.weight_y"]
    assert report.converted == len(dst.encoder.state_dict()) + len(dst.heads.state_dict())
    torch.testing.assert_close(dst.encoder.mask_token, src.encoder.mask_token, atol=0, rtol=0)
    torch.testing.assert_close(predictions(dst), predictions(src), atol=0, rtol=0)


def test_our_checkpoint_folder_and_export(tmp_path):
    src = task(0)
    folder = tmp_path / "checkpoints" / "step_00000004"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(folder / "model.safetensors"))
    dst = task(1)
    report = load_pretraining_init(dst, str(folder))
    assert not report.missing and sorted(report.dropped) == ["hog.weight_x", "hog.weight_y"]
    torch.testing.assert_close(predictions(dst), predictions(src), atol=0, rtol=0)
    # the encoder export: the encoder and its mask token; the prediction head starts fresh
    mvit.save_safetensors(src.encoder, tmp_path / "encoder.safetensors")
    dst = task(1)
    report = load_pretraining_init(dst, str(tmp_path / "encoder.safetensors"))
    assert report.missing == ["heads.hog.0.weight", "heads.hog.0.bias", "heads.hog.1.weight", "heads.hog.1.bias"]
    torch.testing.assert_close(dst.encoder.state_dict(), src.encoder.state_dict(), atol=0, rtol=0)


def test_image_checkpoint_is_inflated_into_the_encoder(tmp_path):
    """An image MViTv2 with a class token (SlowFast / facebookresearch layout): kernels inflated, head and
    final norm dropped, mask token and prediction head fresh, the temporal rel-pos tables zero."""
    torch.manual_seed(0)
    image = mvit.create_model("mvitv2_small_cls", depths=(1, 2, 1, 1), embed_dim=16, input_size=(64, 64),
                              num_classes=10, dim_mul_in_att=False)
    sd = {k.replace("head.", "head.projection."): v for k, v in image.state_dict().items()}
    torch.save({"model_state": sd}, tmp_path / "in1k.pyth")
    dst = task(1)
    report = load_pretraining_init(dst, str(tmp_path / "in1k.pyth"))
    assert "patch_embed.proj.weight" in report.inflated and "blocks.0.attn.rel_pos_t" in report.inflated
    assert {"head.weight", "norm.weight"} <= set(report.dropped)
    assert set(report.missing) == {"mask_token", "heads.hog.0.weight", "heads.hog.0.bias", "heads.hog.1.weight",
                                   "heads.hog.1.bias"}
    torch.testing.assert_close(dst.encoder.blocks[2].mlp.fc1.weight, image.blocks[2].mlp.fc1.weight)


def test_misfits_are_one_line(tmp_path):
    v1 = reference_maskfeat_pyth(task(0, "mvitv1_b_16x4"), tmp_path / "v1.pyth")
    with pytest.raises(CheckpointError) as e:
        load_pretraining_init(task(1), str(v1))
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{v1} (flat) is an MViTv1")
    state = torch.load(reference_maskfeat_pyth(task(0), tmp_path / "ref.pyth"), weights_only=True)
    state["model_state"]["pred_head.projections.0.weight"] = torch.zeros(54, 128)
    torch.save(state, tmp_path / "other_head.pyth")
    with pytest.raises(CheckpointError, match=r"^.*other_head.pyth: prediction head .*heads\.hog\.1\.weight "
                                              r"\(54, 128\) vs task \(108, 128\)$"):
        load_pretraining_init(task(1), str(tmp_path / "other_head.pyth"))
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        load_pretraining_init(task(1), str(tmp_path))


def test_run_starts_from_a_reference_maskfeat_checkpoint(shards, tmp_path):  # noqa: F811
    """The entry point loads init= before training, prints the report and saves it in the run folder."""
    torch.manual_seed(0)
    encoder = mvit.create_model("mvitv2_demo_8x2_maskfeat", pretraining=True, depths=(1, 1, 1, 1), embed_dim=16,
                                input_size=SIZE)  # the run's model.name, TINY's arch and clip size
    path = reference_maskfeat_pyth(MaskFeat(encoder, SIZE), tmp_path / "ref.pyth")
    out = tmp_path / "run"
    r = run([f"data.train={shards}", f"train.output_dir={out}", "train.steps=2", "train.warmup_steps=1", *TINY,
             f"init={path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"init: {path}: format=flat" in r.stdout
    report = json.loads((out / "init_report.json").read_text())
    assert report["init"] == str(path) and not report["missing"] and report["dropped"] == ["hogs.0.weight_x",
                                                                                            "hogs.0.weight_y"]
