"""Contracts every registered variant keeps, checked at tiny sizes on CPU."""
import pytest
import torch

import mvit
from mvit.model import rel_pos_index


def tiny(name, **kw):
    """The variant's structure (image/video, class token, widening mode, head) at toy width."""
    cfg = mvit.get_config(name)
    size = (4, 64, 64) if cfg.video else (64, 64)  # last stage still 2×2, so every rel-pos table matters
    depths = (2,) if len(cfg.depths) == 1 else (1, 2, 1, 1)  # ViTs: one stage
    over = dict(depths=depths, embed_dim=8 * cfg.num_heads, input_size=size, num_classes=5)
    over.update(kw)
    return mvit.create_model(name, **over)


def inputs(model, size=None, batch=2):
    size = size or model.cfg.input_size
    return torch.randn(batch, 3, *size)


NAMES = mvit.list_models()


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = tiny(name, drop_path_rate=0.1)
    feats = model.forward_features(inputs(model))
    out = model.forward_head(feats)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    # with a class-token head only the class token of the last block reaches the logits, and
    # its attention row has no rel-pos bias: put the patch tokens in the loss too
    (out.square().sum() + feats.square().mean()).backward()
    for k, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), k
        assert p.grad.abs().sum() > 0, f"{k} got a zero gradient"
        # DDP copies grads into bucket views laid out like the parameters; other strides
        # (even in a size-1 dim) make it warn "grad strides do not match bucket view"
        assert p.grad.stride() == p.stride(), f"{k}: grad strides {p.grad.stride()} vs {p.stride()}"


@pytest.mark.parametrize("name", ["mvitv2_s_16x4", "mvitv2_s_16x4_maskfeat", "mvitv2_tiny", "mvitv2_small_cls",
                                  "mvitv1_b_16x4", "mvitv1_b_32x3", "mvitv1_b_16"])
def test_gradient_checkpointing_leaves_outputs_and_grads_unchanged(name):
    torch.manual_seed(0)
    model = tiny(name).eval()
    x = inputs(model)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[k], msg=k)


@pytest.mark.parametrize("name", ["mvitv2_s_16x4", "mvitv1_b_16x4", "mvitv1_b_32x3"])
@pytest.mark.parametrize("size", [(4, 64, 64), (2, 64, 48), (8, 32, 64), (6, 48, 48)])
def test_video_sizes_the_strides_divide(name, size):
    model = tiny(name).eval()
    x = inputs(model, size)
    feats = model.forward_features(x)
    t, h, w = model.feature_grid(size)
    assert feats.shape == (2, 1 + t * h * w, model.num_features)
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["mvitv2_tiny", "mvitv1_b_16"])
@pytest.mark.parametrize("size", [(32, 32), (64, 48), (96, 96)])
def test_image_sizes(name, size):
    model = tiny(name).eval()
    feats = model.forward_features(inputs(model, size))
    h, w = model.feature_grid(size)
    assert feats.shape == (2, model.num_prefix_tokens + h * w, model.num_features)


def test_rel_pos_tables_resized_when_loading_weights_made_for_another_size():
    """A model made for 32² loaded into one made for 64² (tables interpolated at load) must equal
    the 32² model run on 64² input (tables interpolated at run time)."""
    torch.manual_seed(0)
    small = tiny("mvitv2_s_16x4", input_size=(4, 32, 32)).eval()
    big = tiny("mvitv2_s_16x4", input_size=(8, 64, 64)).eval()
    report = mvit.load_pretrained(big, small.state_dict())
    assert report.interpolated and all("rel_pos" in k for k in report.interpolated)
    assert any(k.endswith("rel_pos_t") for k in report.interpolated)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), atol=1e-5, rtol=0)


def test_rel_pos_index_follows_reference_formula():
    # q 4, k 2: i·max(k/q,1) − j·max(q/k,1) + (k−1)·max(q/k,1) = i − 2j + 2
    assert rel_pos_index(4, 2).tolist() == [[2, 0], [3, 1], [4, 2], [5, 3]]
    assert rel_pos_index(3, 3).tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]


def test_rel_pos_bias_reaches_only_patch_tokens():
    """Changing a rel-pos table changes patch outputs; the class token's attention row has no
    bias, so with one block the class token output is unchanged."""
    torch.manual_seed(0)
    model = tiny("mvitv2_s_16x4", depths=(1, 1, 1, 1)).eval()
    blk = model.blocks[0]
    x = torch.randn(1, 1 + 2 * 16 * 16, model.cfg.embed_dim)
    with torch.no_grad():
        a, _ = blk(x, (2, 16, 16))
        blk.attn.rel_pos_h.add_(torch.randn_like(blk.attn.rel_pos_h))  # a constant shift would cancel in the softmax
        b, _ = blk(x, (2, 16, 16))
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-3


def test_mask_token_replaces_masked_patches():
    torch.manual_seed(0)
    model = tiny("mvitv2_s_16x4_maskfeat").eval()
    pt = mvit.create_model("mvitv2_s_16x4_maskfeat", pretraining=True, depths=(1, 2, 1, 1), embed_dim=8,
                           input_size=(4, 64, 64)).eval()
    assert model.mask_token is None and pt.mask_token is not None
    x = torch.randn(1, 3, 4, 64, 64)
    grid = pt.patch_grid((4, 64, 64))
    assert grid == (2, 16, 16)
    mask = torch.zeros(1, *grid, dtype=torch.bool)
    mask[:, :, :4] = True  # patch rows 0..3
    # masked patches are the mask token whatever their pixels: change the pixels only those
    # patches see (rows < 9: patch row 3 starts at 3·4 − 3 = 9 with kernel 7, stride 4, pad 3)
    x2 = x.clone()
    x2[..., :9, :] = torch.randn_like(x2[..., :9, :])
    with torch.no_grad():
        f1, f2 = pt.forward_features(x, mask), pt.forward_features(x2, mask)
        f3 = pt.forward_features(x, torch.zeros_like(mask))
    torch.testing.assert_close(f1, f2)
    assert (f1 - f3).abs().max() > 1e-4
    # pretraining form: last q stride 1 -> finer output grid than the finetune form
    assert pt.feature_grid((4, 64, 64)) == (2, 4, 4) and model.feature_grid((4, 64, 64)) == (2, 2, 2)
    with pytest.raises(ValueError, match="mask_token"):
        model.forward_features(x, mask)


def test_layer_ids_and_timm_layer_decay_groups_agree():
    from timm.optim import param_groups_layer_decay
    model = tiny("mvitv2_s_16x4")
    depth = model.cfg.depth
    assert model.layer_id("cls_token") == 0 and model.layer_id("patch_embed.proj.weight") == 0
    assert model.layer_id("blocks.2.attn.qkv.weight") == 3
    assert model.layer_id("head.weight") == depth + 1 and model.layer_id("norm.weight") == depth + 1
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                      no_weight_decay_list=model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            assert g["lr_scale"] == pytest.approx(0.5 ** (depth + 1 - model.layer_id(n))), n
            no_decay = p.ndim <= 1 or n.endswith(".bias") or n in model.no_weight_decay()
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n


def test_head_init_scale_and_drop_path_schedule():
    torch.manual_seed(0)
    a = tiny("mvitv2_s_16x4_maskfeat")  # head init scale 0.001
    b = tiny("mvitv2_s_16x4_maskfeat", head_init_scale=1.0)
    assert a.head.weight.std() < b.head.weight.std() * 0.01
    m = tiny("mvitv2_s_16x4", drop_path_rate=0.3)
    rates = [getattr(blk.drop_path, "drop_prob", 0.0) for blk in m.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert all(x <= y for x, y in zip(rates, rates[1:]))


def test_mvitv1_position_embeddings_are_resized_spatial_bicubic_temporal_linear():
    """Separate space / time / class tables (SlowFast SEP_POS_EMBED, torchvision mvit_v1_b): on another
    grid the spatial table is resized bicubically, the temporal one linearly, the class one kept."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = tiny("mvitv1_b_16x4").eval()
    D = model.cfg.embed_dim
    assert model.pos_embed_spatial.shape == (1, 16 * 16, D) and model.pos_embed_temporal.shape == (1, 2, D)
    assert model.pos_embed_class.shape == (1, 1, D) and model.blocks[0].attn.rel_pos_h is None
    grid = (3, 8, 12)
    with torch.no_grad():
        pos = model._add_abs_pos(torch.zeros(1, 1 + 3 * 8 * 12, D), grid)[0]  # (1 + N, D)
        sp = F.interpolate(model.pos_embed_spatial.reshape(1, 16, 16, D).permute(0, 3, 1, 2), size=(8, 12),
                           mode="bicubic", align_corners=False)  # (1, D, 8, 12)
        tp = F.interpolate(model.pos_embed_temporal.transpose(1, 2), size=3, mode="linear")  # (1, D, 3)
    want = (tp[0, :, :, None, None] + sp[0, :, None]).flatten(1).t()  # (t·h·w, D), t-major
    torch.testing.assert_close(pos[0], model.pos_embed_class[0, 0].detach())
    torch.testing.assert_close(pos[1:], want)


@pytest.mark.parametrize("name", ["mvitv1_b_16x4", "mvitv1_b_16"])
def test_position_embeddings_resized_when_loading_weights_made_for_another_size(name):
    """Weights made for a small input loaded into a model made for a larger one (tables resized at
    load) equal the small model run on the larger input (tables resized at run time)."""
    torch.manual_seed(0)
    video = mvit.get_config(name).video
    small = tiny(name, input_size=(4, 32, 32) if video else (32, 32)).eval()
    big = tiny(name, input_size=(8, 64, 48) if video else (64, 48)).eval()
    report = mvit.load_pretrained(big, small.state_dict())
    assert sorted(report.interpolated) == (["pos_embed_spatial", "pos_embed_temporal"] if video else ["pos_embed"])
    x = torch.randn(1, 3, *big.cfg.input_size)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), atol=1e-5, rtol=0)


def test_bad_config_is_named():
    with pytest.raises(TypeError, match="no_such_field"):
        mvit.create_model("mvitv2_s_16x4", no_such_field=1)
    with pytest.raises(KeyError, match="mvitv2_nope"):
        mvit.create_model("mvitv2_nope")


@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8)])
def test_depthwise_pool_backward_matches_autograd_conv(stride):
    """Our CPU backward of the depthwise pooling conv (written as forward convs) against
    PyTorch's own conv3d backward, and gradcheck in float64."""
    import torch.nn.functional as F
    from mvit.model import depthwise_conv
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    ours = depthwise_conv(x, w, stride, (1, 1, 1))
    ref = F.conv3d(x, w, None, stride, (1, 1, 1), groups=6)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(ours, (x, w), g)
    rx, rw = torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    small = (x[:1, :2, :, :8, :8].detach().requires_grad_(), w[:2].detach().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv(a, b, stride, (1, 1, 1)), small)


def test_whole_model_gradients_equal_plain_autograd_convs(monkeypatch):
    """The demo model's MaskFeat loss: every parameter's gradient with our custom pooling-conv
    backward equals the one PyTorch's own conv backward gives (float64)."""
    import torch.nn.functional as F

    import mvit.model as model_module
    from pretrain.maskfeat import MaskFeat

    def grads():
        torch.manual_seed(0)
        enc = mvit.create_model("mvitv2_demo_8x2_maskfeat", pretraining=True).double()
        task = MaskFeat(enc, (8, 96, 96), mask_unit=(1, 4, 4), visible_weight=1.0).double()
        torch.manual_seed(1)
        loss, _ = task({"video": torch.randn(2, 3, 8, 96, 96, dtype=torch.float64)})
        loss.backward()
        return {n: p.grad for n, p in task.named_parameters()}

    ours = grads()
    plain = lambda x, w, stride, padding: F.conv3d(x, w, None, stride, padding, groups=x.shape[1])  # noqa: E731
    monkeypatch.setattr(model_module, "depthwise_conv", plain)
    ref = grads()
    assert ours.keys() == ref.keys()
    for name, g in ref.items():
        if g is None:
            assert ours[name] is None, name
            continue
        # norm_k.bias: its true gradient is 0 (a constant shift of every key cancels in the softmax)
        atol = 1e-9 if name.endswith("norm_k.bias") else 1e-10
        torch.testing.assert_close(ours[name], g, rtol=1e-7, atol=atol, msg=name)
