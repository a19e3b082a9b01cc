"""Equivalence with the reference implementations (random weights, no downloads)."""
import pytest
import timm
import torch
import torchvision

import mvit

# counts quoted in the project's design notes (torchvision / SlowFast / timm, 400 or 1000 classes);
# MViTv1: SlowFast's MViT built from configs/Kinetics/MVIT_B_{16x4,32x3}_CONV.yaml and
# configs/ImageNet/MVIT_B_16_CONV.yaml (16x4 = torchvision mvit_v1_b)
REFERENCE_PARAMS = {
    "mvitv2_s_16x4": 34_537_744,
    "mvitv2_b_32x3": 51_230_128,
    "mvitv2_l_40x3": 213_390_112,
    "mvitv2_s_16x4_maskfeat": 36_475_120,
    "mvitv2_l_16x4_maskfeat": 217_578_064,
    "mvitv1_b_16x4": 36_610_672,
    "mvitv1_b_32x3": 53_115_280,
    "mvitv1_b_16": 36_982_600,
}
TIMM_NAMES = ["mvitv2_tiny", "mvitv2_small", "mvitv2_base", "mvitv2_large", "mvitv2_small_cls",
              "mvitv2_base_cls", "mvitv2_large_cls", "mvitv2_huge_cls"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name):
    with torch.device("meta"):
        assert n_params(mvit.create_model(name)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_image_parameter_counts_match_timm(name):
    with torch.device("meta"):
        ours, ref = mvit.create_model(name), timm.create_model(name, num_classes=1000)
    assert n_params(ours) == n_params(ref)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in mvit.checkpoint.convert_state_dict(ref.state_dict())[0].items()}


def test_mvitv2_huge_without_class_token():
    with torch.device("meta"):
        assert n_params(mvit.create_model("mvitv2_huge")) == n_params(mvit.create_model("mvitv2_huge_cls")) - 192


@pytest.mark.parametrize("ref_name, name", [("mvit_v2_s", "mvitv2_s_16x4"), ("mvit_v1_b", "mvitv1_b_16x4")])
def test_torchvision_same_logits(ref_name, name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models.video, ref_name)().eval()
    ours = mvit.create_model(name).eval()
    report = mvit.load_pretrained(ours, ref.state_dict())
    assert report.source_format == "torchvision" and not report.missing and not report.unexpected
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert a.abs().max() > 0.1  # a real signal, not a vanishing one
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mvitv2_tiny", "mvitv2_small_cls"])
def test_timm_same_logits(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=10).eval()
    # random (not zero) biases and norms so every parameter matters for the comparison
    with torch.no_grad():
        for k, p in ref.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    ours = mvit.create_model(name, num_classes=10).eval()
    report = mvit.load_pretrained(ours, ref.state_dict())
    assert report.source_format == "timm" and report.converted == len(ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert a.std() > 1e-3
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def _video_twin_of_tiny(**kw):
    """A video model with timm mvitv2_tiny's structure (no class token, mean-pool head)."""
    return mvit.create_model("mvitv2_s_16x4", depths=(1, 2, 5, 2), kv_stride=(1, 4, 4), cls_token=False,
                             global_pool="avg", num_classes=10, head_dropout=0.0, **kw).eval()


def test_inflated_image_model_reproduces_image_output_on_static_clip():
    torch.manual_seed(0)
    image = timm.create_model("mvitv2_tiny", num_classes=10).eval()
    video = _video_twin_of_tiny()
    report = mvit.load_pretrained(video, image.state_dict())
    assert "patch_embed.proj.weight" in report.inflated
    assert any(k.endswith("rel_pos_t") for k in report.inflated)
    assert not report.missing
    img = torch.randn(1, 3, 224, 224)
    clip = img[:, :, None].expand(-1, -1, 4, -1, -1)  # the image repeated T=4 times
    with torch.no_grad():
        a, b = image(img), video(clip)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_mean_inflation_is_exact_away_from_temporal_padding():
    """The paper's rule (repeat / T): exact wherever the temporal window holds real frames;
    the first temporal token also sees zero padding and gets 2/3 of the response."""
    torch.manual_seed(0)
    image = timm.create_model("mvitv2_tiny", num_classes=10).eval()
    video = _video_twin_of_tiny()
    mvit.load_pretrained(video, image.state_dict(), patch_inflation="mean")
    img = torch.randn(1, 3, 224, 224)
    clip = img[:, :, None].expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        a = image.patch_embed.proj(img) - image.patch_embed.proj.bias[:, None, None]
        b = video.patch_embed.proj(clip) - video.patch_embed.proj.bias[:, None, None, None]
    torch.testing.assert_close(b[:, :, 1], a, atol=1e-4, rtol=0)
    torch.testing.assert_close(b[:, :, 0], a * 2 / 3, atol=1e-4, rtol=0)
