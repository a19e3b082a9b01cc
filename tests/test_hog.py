"""Contracts for MaskFeat HOG / pixel targets (pretrain/hog.py).

The default HOG convention is checked against an independent per-pixel oracle written
from the reference MaskFeat convention (SlowFast HOGLayerC) and against analytic ramps; the skimage mode against
scikit-image itself; the token layout against an explicit index formula.
"""

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.feature import hog as skimage_hog

from pretrain.hog import HOGLayer, hog_targets, pixel_targets


# ---------------------------------------------------------------------------------------
# Reference convention, written per pixel (no shared code with pretrain/hog.py)


def _oracle_maskfeat_hog(img: np.ndarray, nbins: int = 9, cell: int = 8) -> np.ndarray:
    """img (C, H, W) -> (C, nbins, H/cell, W/cell), the reference MaskFeat convention."""
    C, H, W = img.shape

    def px(c, y, x):  # reflect padding: index -1 reads 1, index H reads H-2
        y = -y if y < 0 else (2 * (H - 1) - y if y > H - 1 else y)
        x = -x if x < 0 else (2 * (W - 1) - x if x > W - 1 else x)
        return float(img[c, y, x])

    out = np.zeros((C, nbins, H // cell, W // cell))
    for c in range(C):
        for y in range(H):
            for x in range(W):
                # kx = [[1,0,-1],[2,0,-2],[1,0,-1]] (left - right), ky = kx^T (top - bottom)
                smooth = ((-1, 1), (0, 2), (1, 1))  # offset, weight
                gx = sum(w * (px(c, y + d, x - 1) - px(c, y + d, x + 1)) for d, w in smooth)
                gy = sum(w * (px(c, y - 1, x + d) - px(c, y + 1, x + d)) for d, w in smooth)
                b = math.floor(math.atan2(gx, gy) / math.pi * nbins) % nbins
                out[c, b, y // cell, x // cell] += math.sqrt(gx * gx + gy * gy)
    norm = np.sqrt((out**2).sum(axis=1, keepdims=True))
    return out / np.maximum(norm, 1e-12)


def _int_images(n, c, h, w, seed=0, high=16):
    # Small integers keep every gradient exact and every angle far from a bin edge, so
    # float32 and float64 agree on each pixel's bin.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (n, c, h, w), generator=g).float()


def test_maskfeat_matches_per_pixel_oracle():
    x = _int_images(2, 3, 24, 32)
    out = HOGLayer()(x)
    assert out.shape == (2, 3, 9, 3, 4) and out.dtype == torch.float32
    for n in range(2):
        ref = _oracle_maskfeat_hog(x[n].double().numpy())
        np.testing.assert_allclose(out[n].numpy(), ref, atol=1e-6)


def test_maskfeat_other_nbins_and_cell_size():
    x = _int_images(1, 3, 18, 12, seed=1)
    out = HOGLayer(nbins=6, cell_size=6)(x.double())
    assert out.dtype == torch.float64
    ref = _oracle_maskfeat_hog(x[0].double().numpy(), nbins=6, cell=6)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-12)


RAMPS = {
    # name: (image as function of row r and column c, bin, whole image or interior cells)
    "column": (lambda r, c: c, 4, False),
    "row": (lambda r, c: r, 0, False),
    "row_plus_col": (lambda r, c: r + c, 2, True),
    "row_minus_col": (lambda r, c: r - c, 6, True),
}


@pytest.mark.parametrize("name", list(RAMPS))
def test_analytic_ramps(name):
    fn, expected_bin, interior = RAMPS[name]
    r, c = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    img = torch.stack([fn(r, c), 3 * fn(r, c) + 7, 0.5 * fn(r, c)])[None]  # (1, 3, 40, 48)
    out = HOGLayer()(img)[0]  # (3, 9, 5, 6)
    if interior:  # reflect padding makes the border rows/columns point elsewhere
        out = out[:, :, 1:-1, 1:-1]
    expected = torch.zeros_like(out)
    expected[:, expected_bin] = 1.0
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_invariant_to_per_channel_positive_affine_intensity():
    x = _int_images(2, 3, 32, 40, seed=2)
    a = torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1)
    b = torch.tensor([-4.0, 1.0, 100.0]).view(1, 3, 1, 1)
    layer = HOGLayer()
    torch.testing.assert_close(layer(a * x + b), layer(x), atol=1e-6, rtol=0)
    # Negating the image flips every gradient by pi: same unsigned bins.
    torch.testing.assert_close(layer(-x), layer(x), atol=1e-6, rtol=0)


def test_channels_are_independent():
    x = _int_images(1, 3, 16, 16, seed=3)
    y = x.clone()
    y[:, 1] = _int_images(1, 1, 16, 16, seed=4)[:, 0]
    a, b = HOGLayer()(x), HOGLayer()(y)
    torch.testing.assert_close(a[:, [0, 2]], b[:, [0, 2]])
    assert not torch.allclose(a[:, 1], b[:, 1])


def test_no_gradients_and_float32_under_bf16_autocast():
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    layer = HOGLayer()
    out = layer(x)
    assert not out.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast = layer(x)
    assert out_autocast.dtype == torch.float32
    torch.testing.assert_close(out_autocast, out)
    # A module cast to bf16 (model.bfloat16()) keeps the same targets: Sobel weights
    # are exact in bf16 and the computation runs in float32.
    torch.testing.assert_close(HOGLayer().bfloat16()(x), out)


def test_non_finite_input_gives_nan_targets_not_an_index_error():
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 5, 5] = float("nan")
    x[0, 2, 9, 9] = float("inf")
    out = HOGLayer()(x)
    assert out[0, 0].isfinite().all()  # channels are independent
    assert out[0, 1, :, 0, 0].isnan().all() and out[0, 2, :, 1, 1].isnan().any()


def test_buffers_named_like_the_reference_checkpoint():
    state = HOGLayer().state_dict()
    assert set(state) == {"weight_x", "weight_y"}
    assert state["weight_x"].shape == (3, 1, 3, 3)
    torch.testing.assert_close(state["weight_y"], state["weight_x"].transpose(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    x = _int_images(4, 3, 64, 64, seed=5)
    for mode in ("maskfeat", "skimage"):
        layer = HOGLayer(mode=mode)
        torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x), atol=1e-5, rtol=0)


def test_shape_errors():
    layer = HOGLayer()
    with pytest.raises(ValueError, match="smaller than one 8x8 cell"):
        layer(torch.zeros(1, 3, 7, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        layer(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="mode"):
        HOGLayer(mode="dalal")


# ---------------------------------------------------------------------------------------
# skimage mode == skimage.feature.hog(cells_per_block=(1, 1))


def _skimage_reference(img: np.ndarray) -> np.ndarray:
    out = skimage_hog(
        img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
        channel_axis=-1, feature_vector=False,
    )
    return out[:, :, 0, 0, :]  # (n_cells_row, n_cells_col, 9)


def _crop8(img):
    return np.ascontiguousarray(img[: img.shape[0] // 8 * 8, : img.shape[1] // 8 * 8])


def _test_images():
    rng = np.random.default_rng(0)
    r, c = np.meshgrid(np.arange(64.0), np.arange(96.0), indexing="ij")
    smooth = np.stack([np.sin(r / 7) + np.cos(c / 11), r * c / 500, np.hypot(r - 30, c - 40)], -1)
    gray = rng.integers(0, 256, (48, 56)).astype(np.uint8)
    return {
        "astronaut_224": skdata.astronaut()[100:324, 150:374],
        "chelsea": _crop8(skdata.chelsea()),
        "coffee": _crop8(skdata.coffee()),
        "noise_float32": rng.random((64, 80, 3), dtype=np.float32),
        "noise_float64": rng.random((56, 40, 3)),
        "noise_uint8": rng.integers(0, 256, (40, 64, 3)).astype(np.uint8),
        "smooth_gradients": smooth,
        "gray_as_rgb_ties": np.repeat(gray[:, :, None], 3, axis=2),  # argmax ties
        "faint": rng.random((32, 48, 3)) * 1e-4,  # the 1e-5 eps and the cell mean matter
        "constant": np.full((16, 24, 3), 0.25, np.float32),
    }


@pytest.mark.parametrize("name", list(_test_images()))
def test_skimage_mode_matches_skimage(name):
    img = _test_images()[name]
    frames = torch.from_numpy(img).permute(2, 0, 1)[None]  # (1, 3, H, W), dtype kept
    out = HOGLayer(mode="skimage")(frames)
    assert out.shape == (1, 1, 9, img.shape[0] // 8, img.shape[1] // 8)
    ours = out[0, 0].permute(1, 2, 0).double().numpy()  # (rows, cols, 9), as skimage
    np.testing.assert_allclose(ours, _skimage_reference(img), atol=1e-5, rtol=0)


@pytest.mark.parametrize("nbins", [4, 9])
def test_skimage_mode_bin_edges_on_exact_angles(nbins):
    # Small integers give many gradients at exactly 0, 45, 90 and 135 degrees, which
    # are bin edges for nbins=4: pins down skimage's [edge_i, edge_i+1) convention.
    rng = np.random.default_rng(3)
    r, c = np.meshgrid(np.arange(32.0), np.arange(40.0), indexing="ij")
    img = np.stack([rng.integers(0, 3, (32, 40)).astype(float), r + c, r - 2 * (c % 2)], -1)
    out = HOGLayer(nbins=nbins, mode="skimage")(torch.from_numpy(img).permute(2, 0, 1)[None])
    ref = skimage_hog(img, orientations=nbins, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                      channel_axis=-1, feature_vector=False)[:, :, 0, 0, :]
    np.testing.assert_allclose(out[0, 0].permute(1, 2, 0).numpy(), ref, atol=1e-5, rtol=0)


def test_skimage_mode_batch_equals_single_frames():
    rng = np.random.default_rng(1)
    imgs = [rng.random((64, 80, 3), dtype=np.float32) for _ in range(3)]
    frames = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in imgs])
    out = HOGLayer(mode="skimage")(frames)
    for n, img in enumerate(imgs):
        ours = out[n, 0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, _skimage_reference(img), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------
# Token layout


class _PositionCodeHOG(torch.nn.Module):
    """Stand-in HOG layer whose output encodes where each value comes from: frames are
    constant images whose value names the frame; out[n, c, bin, y, x] = code."""

    cell_size = 8

    def forward(self, frames):  # (N, 3, H, W) -> (N, 3, 9, H/8, W/8), float64
        N, _, H, W = frames.shape
        frame_id = frames[:, 0, 0, 0].double().view(N, 1, 1, 1, 1)
        c, b, y, x = torch.meshgrid(
            torch.arange(3.0), torch.arange(9.0), torch.arange(H // 8.0), torch.arange(W // 8.0), indexing="ij"
        )
        return frame_id * 1e6 + c * 1e5 + b * 1e4 + y * 100 + x


def test_hog_target_layout_is_explicit():
    B, T, H, W = 2, 8, 32, 48
    t, h, w = 4, 2, 3  # token grid; each token covers ch x cw = 2 x 2 cells
    frame_id = (torch.arange(B)[:, None] * 100 + torch.arange(T)[None, :]).float()  # (B, T)
    clip = frame_id.view(B, 1, T, 1, 1).expand(B, 3, T, H, W).contiguous()
    targets = hog_targets(_PositionCodeHOG(), clip, temporal_stride=2, grid=(t, h, w))
    assert targets.shape == (B, t * h * w, 3 * 9 * 2 * 2)
    for bi in range(B):
        for ti in range(t):
            for hi in range(h):
                for wi in range(w):
                    n = (ti * h + hi) * w + wi
                    for c in range(3):
                        for b in range(9):
                            for dy in range(2):
                                for dx in range(2):
                                    k = ((c * 9 + b) * 2 + dy) * 2 + dx
                                    y, x = hi * 2 + dy, wi * 2 + dx
                                    # frame 2*ti: frames 0, 2, 4, ... are the ones used
                                    code = (bi * 100 + 2 * ti) * 1e6 + c * 1e5 + b * 1e4 + y * 100 + x
                                    assert targets[bi, n, k].item() == code


def test_hog_targets_use_even_frames_of_the_real_layer():
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 3, 8, 32, 32, generator=g)
    layer = HOGLayer()
    targets = hog_targets(layer, clip, grid=(4, 2, 2))
    assert targets.shape == (2, 16, 108)
    # Token (b, ti, hi, wi) holds the 2x2 cells of frame 2*ti it covers.
    hog = layer(clip[:, :, 2].contiguous())  # frame 2 -> ti = 1, (2, 3, 9, 4, 4)
    expected = hog[:, :, :, 2:4, 0:2].reshape(2, 108)  # token (hi, wi) = (1, 0)
    torch.testing.assert_close(targets[:, (1 * 2 + 1) * 2 + 0], expected)
    # Odd frames are never read; changing frame 2 changes only tokens with ti = 1.
    other = clip.clone()
    other[:, :, 1::2] = torch.rand(2, 3, 4, 32, 32, generator=g)
    torch.testing.assert_close(hog_targets(layer, other, grid=(4, 2, 2)), targets)
    other[:, :, 2] = torch.rand(2, 3, 32, 32, generator=g)
    changed = (hog_targets(layer, other, grid=(4, 2, 2)) != targets).any(-1)  # (B, N)
    assert changed.view(2, 4, 4)[:, 1].all() and not changed.view(2, 4, 4)[:, [0, 2, 3]].any()


def test_hog_targets_at_reference_size():
    clip = torch.randn(1, 3, 16, 224, 224, requires_grad=True)
    targets = hog_targets(HOGLayer(), clip, temporal_stride=2, grid=(8, 14, 14))
    assert targets.shape == (1, 1568, 108) and not targets.requires_grad
    # Every (token, channel, cell) histogram is L2-normalized.
    norms = targets.view(1, 1568, 3, 9, 4).norm(dim=3)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_hog_targets_shape_errors():
    layer = HOGLayer()
    clip = torch.zeros(1, 3, 8, 32, 32)
    with pytest.raises(ValueError, match="temporal tokens"):
        hog_targets(layer, clip, grid=(3, 2, 2))
    with pytest.raises(ValueError, match="temporal tokens"):
        hog_targets(layer, torch.zeros(1, 3, 7, 32, 32), grid=(4, 2, 2))
    with pytest.raises(ValueError, match="token grid"):
        hog_targets(layer, clip, grid=(4, 3, 2))
    with pytest.raises(ValueError, match="token grid"):
        hog_targets(layer, torch.zeros(1, 3, 8, 32, 44), grid=(4, 2, 2))  # 5 cell columns for 2 tokens
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        hog_targets(layer, torch.zeros(3, 8, 32, 32), grid=(4, 2, 2))


# ---------------------------------------------------------------------------------------
# Pixel targets


def test_pixel_targets_layout_and_normalization():
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 3, 4, 32, 48, generator=g, requires_grad=True)
    targets = pixel_targets(clip, patch=(2, 16, 16), grid=(2, 2, 3))
    assert targets.shape == (2, 12, 2 * 16 * 16 * 3) and not targets.requires_grad
    # Token (ti, hi, wi) = (1, 0, 2) -> n = (1*2 + 0)*3 + 2 = 8; vector ordered (dt, dy, dx, c).
    patch = clip.detach()[1, :, 2:4, 0:16, 32:48]  # (C, 2, 16, 16)
    raw = patch.permute(1, 2, 3, 0).reshape(-1)
    expected = (raw - raw.mean()) / torch.sqrt(raw.var() + 1e-6)
    torch.testing.assert_close(targets[1, 8], expected)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(2, 12), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1), torch.ones(2, 12), atol=1e-3, rtol=0)


def test_pixel_targets_reference_default_and_errors():
    clip = torch.rand(1, 3, 16, 224, 224)
    assert pixel_targets(clip).shape == (1, 1568, 1536)
    # SlowFast's default: one frame per temporal token, 16x16 patches.
    assert pixel_targets(clip[:, :, ::2], patch=(1, 16, 16)).shape == (1, 1568, 768)
    with pytest.raises(ValueError, match="not divisible"):
        pixel_targets(torch.zeros(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="grid"):
        pixel_targets(torch.zeros(1, 3, 4, 32, 32), grid=(2, 1, 2))


def _conv_reference(layer: HOGLayer, x: torch.Tensor) -> torch.Tensor:
    """HOGLayerC's formulation, float64: reflect pad, grouped conv2d with weight_x /
    weight_y, stack-norm magnitude, atan2(gx, gy) phase, scatter into bins, sum-pool
    whole cells with unfold (the partial cells at the right / bottom drop out), F.normalize
    over bins."""
    N, C, H, W = x.shape
    xp = torch.nn.functional.pad(x.double(), (1, 1, 1, 1), mode="reflect")
    gx = torch.nn.functional.conv2d(xp, layer.weight_x.double(), groups=3)
    gy = torch.nn.functional.conv2d(xp, layer.weight_y.double(), groups=3)
    bins = torch.floor(torch.atan2(gx, gy) / math.pi * 9).long() % 9
    dense = torch.zeros(N, C, 9, H, W, dtype=torch.float64)
    dense.scatter_add_(2, bins[:, :, None], torch.stack([gx, gy], -1).norm(dim=-1)[:, :, None])
    pooled = dense.unfold(3, 8, 8).unfold(4, 8, 8).sum((-1, -2))
    return torch.nn.functional.normalize(pooled, p=2, dim=2)


def test_separable_sobel_equals_conv_with_the_buffers():
    layer = HOGLayer()
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _conv_reference(layer, x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("size", [(60, 84), (33, 47), (8, 9)])
def test_any_frame_size_drops_partial_cells_like_the_conv_reference(size):
    # The partial cells are dropped, but their pixels are still the gradient neighbours of
    # the last whole cells (the reference pools after the convolution): cropping first differs.
    layer = HOGLayer()
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = layer(x)
    assert out.shape == (2, 3, 9, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(out, _conv_reference(layer, x), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x.float()), out.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(out, layer(x[..., :size[0] // 8 * 8, :size[1] // 8 * 8]))


def test_skimage_mode_any_frame_size():
    img = np.random.default_rng(0).random((60, 84, 3))
    ours = HOGLayer(mode="skimage")(torch.from_numpy(img).permute(2, 0, 1)[None])[0, 0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy(), _skimage_reference(img), atol=1e-6)


def test_cpu_chunks_and_reused_scratch_give_the_same_result():
    # 224x224 frames go through in chunks of 2 on CPU, with temporaries kept between
    # calls: an odd batch (last chunk short), then another size, then the first again.
    layer = HOGLayer()
    g = torch.Generator().manual_seed(7)
    big = torch.randn(5, 3, 224, 224, generator=g, dtype=torch.float64)
    small = torch.randn(3, 3, 32, 40, generator=g, dtype=torch.float64)
    expected_big = _conv_reference(layer, big)
    for x, expected in ((big, expected_big), (small, _conv_reference(layer, small)), (big, expected_big)):
        torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)
    first = layer(big.float())
    assert first.dtype == torch.float32
    torch.testing.assert_close(layer(big.float()), first, atol=0, rtol=0)
    assert layer(big.float()).data_ptr() != first.data_ptr()  # results are never scratch views
