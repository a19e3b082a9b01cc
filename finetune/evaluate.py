"""Evaluation for the finetune stage: multi-view aggregation, metrics, CSV / image outputs,
frozen-feature extraction (per view and per video, saved / loaded as safetensors) and the
frozen-feature health checks (weighted kNN, linear probe) of a pretraining export.

Library code: pure torch / numpy, no accelerate and no argparse. The caller runs the model,
gathers per-view outputs over ranks (duplicates that DDP padding adds are fine as long as
the view indices come along) and hands them to these functions on one process.

Conventions. A "view" is one clip x crop of a video (index = clip * num_crops + crop, as
the eval loader tags it). A label < 0 means "unlabeled": such rows are kept in the
predictions but left out of every metric and never used as training targets.
Accuracies are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------- multi-view


@dataclass
class ViewAggregate:
    """Per-video results after averaging the views of each video.

    ids: V sorted unique video ids; probs: (V, C) mean softmax over views;
    labels: (V,) long (-1 = unlabeled); num_views: (V,) long (distinct views used).
    """

    ids: list[str]
    probs: torch.Tensor
    labels: torch.Tensor
    num_views: torch.Tensor

    @property
    def preds(self) -> torch.Tensor:
        """(V,) long top-1 class per video."""
        return self.probs.argmax(1)


def mean_by_video(values: torch.Tensor, video_ids: Sequence[str], labels: torch.Tensor,
                  views: torch.Tensor | None = None) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average rows that belong to the same video.

    values: (N, D); video_ids: N strings; labels: (N,) long; views: optional (N,) view index.
    -> (ids: V sorted unique ids, means: (V, D) float32, labels: (V,) long, counts: (V,) long).

    With `views`, repeated (video_id, view) pairs count once (the first is kept): DDP's
    even-split padding repeats samples, and a repeated view would otherwise weigh double.
    Raises ValueError when the views of one video disagree on the label.
    """
    n = values.shape[0]
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    if values.dim() != 2 or len(video_ids) != n or labels.numel() != n:
        raise ValueError(f"expected values (N, D) with N ids and N labels; got values {tuple(values.shape)}, "
                         f"{len(video_ids)} ids, {labels.numel()} labels")
    values = values.detach().float().cpu()
    video_ids = [str(v) for v in video_ids]
    if views is not None:
        views = torch.as_tensor(views).long().cpu().reshape(-1)
        if views.numel() != n:
            raise ValueError(f"views has {views.numel()} entries for {n} rows")
        seen, keep = set(), []
        for i, key in enumerate(zip(video_ids, views.tolist())):
            if key not in seen:
                seen.add(key)
                keep.append(i)
        if len(keep) < n:
            idx = torch.tensor(keep, dtype=torch.long)
            values, labels, video_ids = values[idx], labels[idx], [video_ids[i] for i in keep]

    ids = sorted(set(video_ids))
    slot = {v: i for i, v in enumerate(ids)}
    inverse = torch.tensor([slot[v] for v in video_ids], dtype=torch.long)  # (N,) row -> video
    V = len(ids)
    sums = torch.zeros(V, values.shape[1]).index_add_(0, inverse, values)
    counts = torch.bincount(inverse, minlength=V)
    # Label of each video = label of its first row; every other row must agree.
    first = torch.full((V,), n, dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(len(video_ids)), reduce="amin")
    video_labels = labels[first] if V else labels[:0]
    bad = (labels != video_labels[inverse]).nonzero().flatten()
    if bad.numel():
        v = ids[int(inverse[bad[0]])]
        found = sorted(set(labels[inverse == slot[v]].tolist()))
        raise ValueError(f"views of video {v!r} carry different labels {found}; "
                         f"{len(set(inverse[bad].tolist()))} video(s) affected")
    return ids, sums / counts.clamp(min=1)[:, None], video_labels, counts


def aggregate_views(logits: torch.Tensor, video_ids: Sequence[str], labels: torch.Tensor,
                    views: torch.Tensor | None = None) -> ViewAggregate:
    """Multi-view test: per-view logits (N, C) -> per-video mean of softmax (V, C).

    Averaging probabilities, not logits or votes, is what the reference does at test time
    (slowfast/utils/meters.py TestMeter sums the softmax'ed head outputs of each video's
    views). See `mean_by_video` for ids, labels, dedup on (id, view) and errors.
    """
    probs = logits.detach().float().softmax(dim=1)  # (N, C), float32 even for bf16 logits
    ids, mean, video_labels, counts = mean_by_video(probs, video_ids, labels, views)
    return ViewAggregate(ids=ids, probs=mean, labels=video_labels, num_views=counts)


# ---------------------------------------------------------------------------- metrics


def _labeled(labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows with a real label (>= 0)."""
    return torch.as_tensor(labels).reshape(-1) >= 0


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """probs / logits (V, C), labels (V,) -> {"top1": ..., "top5": ...} fractions in [0, 1].

    k is capped at C (top-5 of 3 classes is top-3, i.e. 1.0). Unlabeled rows are left out;
    NaN when nothing is labeled.
    """
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    probs = probs.detach().float().cpu()
    keep = _labeled(labels)
    probs, labels = probs[keep], labels[keep]
    ks = list(ks)
    if labels.numel() == 0:
        return {f"top{k}": math.nan for k in ks}
    kmax = min(max(ks), probs.shape[1])
    top = probs.topk(kmax, dim=1).indices  # (V, kmax)
    hit = top == labels[:, None]  # (V, kmax), at most one True per row
    return {f"top{k}": hit[:, :min(k, kmax)].any(1).float().mean().item() for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """preds (V,), labels (V,) -> (C, C) long counts, rows = true class, cols = predicted.

    Unlabeled rows are left out; a class index >= C is an error.
    """
    preds = torch.as_tensor(preds).long().cpu().reshape(-1)
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
    keep = _labeled(labels)
    preds, labels = preds[keep], labels[keep]
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes
                          or int(labels.max()) >= num_classes):
        raise ValueError(f"class index outside [0, {num_classes})")
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)  # (C_true, C_pred)


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """preds (V,), labels (V,) -> (C,) float accuracy (recall) per true class, NaN where a
    class has no labeled example. Counts per class: confusion_matrix(...).sum(1)."""
    cm = confusion_matrix(preds, labels, num_classes)
    counts = cm.sum(1)
    acc = cm.diagonal().double() / counts.clamp(min=1)
    return torch.where(counts > 0, acc, torch.full_like(acc, math.nan)).float()


# ---------------------------------------------------------------------------- outputs


def _write_csv_atomic(path: str | os.PathLike, header: list[str], rows: Iterable[list]) -> None:
    """Write a CSV to a temp file in the target folder, then os.replace it into place, so a
    reader (or a crash) never sees half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_names(class_names: Sequence[str], num_classes: int) -> None:
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")


PREDICTION_COLUMNS = ["video_id", "label", "label_name", "pred", "pred_name", "prob", "num_views", "top5"]


def write_predictions_csv(path: str | os.PathLike, agg: ViewAggregate, class_names: Sequence[str]) -> None:
    """One row per video: video_id, label, label_name ("" if unlabeled), pred, pred_name,
    prob (top-1 probability), num_views, top5 (up to five predicted names, best first,
    joined by "|"). class_names: the C names in class-index order (the manifest's "classes")."""
    V, C = agg.probs.shape
    _check_names(class_names, C)
    preds = agg.preds  # (V,) the same argmax the metrics use
    top_i = agg.probs.topk(min(5, C), dim=1).indices  # (V, k), best first

    def rows():
        for v in range(V):
            label, pred = int(agg.labels[v]), int(preds[v])
            yield [agg.ids[v], label, class_names[label] if label >= 0 else "", pred, class_names[pred],
                   f"{float(agg.probs[v, pred]):.6f}", int(agg.num_views[v]),
                   "|".join(class_names[int(i)] for i in top_i[v])]

    _write_csv_atomic(path, PREDICTION_COLUMNS, rows())


def write_per_class_csv(path: str | os.PathLike, per_class: torch.Tensor, counts: torch.Tensor,
                        class_names: Sequence[str]) -> None:
    """One row per class: class, class_name, count (labeled videos), accuracy (empty when
    the class has no labeled video). per_class, counts: (C,)."""
    C = per_class.numel()
    _check_names(class_names, C)
    if counts.numel() != C:
        raise ValueError(f"{counts.numel()} counts for {C} classes")
    rows = ([c, class_names[c], int(counts[c]), "" if math.isnan(a) else f"{a:.6f}"]
            for c, a in enumerate(per_class.tolist()))
    _write_csv_atomic(path, ["class", "class_name", "count", "accuracy"], rows)


# Anchor colours of a black -> purple -> red -> yellow -> white ramp (roughly matplotlib's
# "inferno"): dark is 0, bright is 1, readable on both light and dark TensorBoard themes.
_RAMP = torch.tensor([[0.0, 0.0, 0.0], [0.35, 0.05, 0.55], [0.85, 0.2, 0.2], [1.0, 0.75, 0.1], [1.0, 1.0, 1.0]])


def colormap(x: torch.Tensor) -> torch.Tensor:
    """x: (H, W) in [0, 1] -> (3, H, W) RGB, piecewise linear between the _RAMP anchors."""
    pos = x.clamp(0, 1) * (len(_RAMP) - 1)  # (H, W) position along the ramp
    lo = pos.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (pos - lo)[..., None]  # (H, W, 1)
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac  # (H, W, 3)
    return rgb.permute(2, 0, 1)


def confusion_image(cm: torch.Tensor, max_classes: int = 64, size: int = 256) -> torch.Tensor:
    """cm: (C, C) counts -> (3, H, W) float in [0, 1] for TensorBoard's add_image.

    Each row is divided by its class's count, so the diagonal shows per-class accuracy
    (bright = good). With C > max_classes only the max_classes most frequent true classes
    are drawn (rows and columns, in class order); rows stay normalized by their full count.
    Each cell becomes a block of about size / C pixels (nearest), at least one.
    """
    cm = cm.detach().double().cpu()
    rates = cm / cm.sum(1, keepdim=True).clamp(min=1)  # (C, C) row-normalized; empty rows stay 0
    C = cm.shape[0]
    if C > max_classes:
        keep = cm.sum(1).topk(max_classes).indices.sort().values  # most frequent, in class order
        rates = rates[keep][:, keep]
    cell = max(1, size // rates.shape[0])
    img = rates.float().repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # (k·cell, k·cell)
    return colormap(img)


# ---------------------------------------------------------------------------- frozen features


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07, chunk_size: int = 256) -> torch.Tensor:
    """Weighted kNN on cosine similarity (DINO, Caron et al. 2021, eval_knn.py).

    train_feats: (N, D), train_labels: (N,), test_feats: (M, D) -> (M, C) class scores that
    sum to 1 per row. Each of the k most similar train rows votes for its class with weight
    exp(sim / T). Test rows are processed chunk_size at a time, so memory is O(chunk · N).
    Unlabeled train rows are dropped.
    """
    train_labels = torch.as_tensor(train_labels).long().cpu().reshape(-1)
    keep = _labeled(train_labels)
    train = F.normalize(train_feats.detach().float().cpu()[keep], dim=1)  # (N, D) unit rows
    train_labels = train_labels[keep]
    test = F.normalize(test_feats.detach().float().cpu(), dim=1)  # (M, D)
    if train.shape[0] == 0:
        raise ValueError("knn_classify needs at least one labeled train feature")
    k = min(k, train.shape[0])
    out = torch.zeros(test.shape[0], num_classes)
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T  # (m, N) cosine similarity
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        # Subtracting the row max leaves the normalized weights unchanged and keeps exp finite.
        w = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (m, k)
        scores = torch.zeros(sim.shape[0], num_classes).scatter_add_(1, train_labels[top_idx], w)
        out[start:start + chunk_size] = scores / scores.sum(1, keepdim=True)
    return out


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int, *, epochs: int = 100, lr: float = 0.1, weight_decay: float = 1e-4,
                 seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """Train a linear classifier on frozen features, return its test logits (M, C).

    train_feats: (N, D), train_labels: (N,), test_feats: (M, D). Features are standardized
    with the train mean / std; the layer starts at zero (the problem is convex, so no random
    init is needed) and is trained with AdamW and a cosine lr over `epochs` passes, full
    batch by default (batch_size: mini-batches in a seeded order, for very large N).
    Deterministic given the seed. Unlabeled train rows are dropped.
    """
    train_labels = torch.as_tensor(train_labels).long().cpu().reshape(-1)
    keep = _labeled(train_labels)
    x, y = train_feats.detach().float().cpu()[keep], train_labels[keep]
    if x.shape[0] == 0:
        raise ValueError("linear_probe needs at least one labeled train feature")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)  # constant dims stay finite
    x = (x - mean) / std  # (N, D)
    test = (test_feats.detach().float().cpu() - mean) / std  # (M, D)

    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    # Decay the weight only: a decayed bias would pull class priors towards uniform.
    opt = torch.optim.AdamW([{"params": [layer.weight], "weight_decay": weight_decay},
                             {"params": [layer.bias], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    bs = x.shape[0] if batch_size is None else batch_size
    with torch.enable_grad():  # callers often evaluate under no_grad
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen) if bs < x.shape[0] else None
            for start in range(0, x.shape[0], bs):
                idx = order[start:start + bs] if order is not None else slice(None)
                loss = F.cross_entropy(layer(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    with torch.no_grad():
        return layer(test)


def pool_tokens(tokens: torch.Tensor, num_prefix_tokens: int, pool: str = "mean") -> torch.Tensor:
    """tokens: (B, prefix + N, D) -> (B, D): "mean" of the patch tokens (prefix skipped, as
    MaskFeat's finetune head pools) or "cls" = token 0 (needs a prefix token)."""
    if pool == "mean":
        return tokens[:, num_prefix_tokens:].mean(1)
    if pool == "cls":
        if num_prefix_tokens < 1:
            raise ValueError('pool="cls" needs a model with a class token (num_prefix_tokens >= 1)')
        return tokens[:, 0]
    raise ValueError(f'pool must be "mean" or "cls", got {pool!r}')


@dataclass
class VideoFeatures:
    """Frozen encoder features, one row per video, rows sorted by video id.

    ids: N sorted ids; labels: (N,) long (-1 = unlabeled); features: (N, D) float32, the
    mean over the video's views of the pooled tokens; view_features: (N, V, D) float32,
    view v = clip * num_crops + crop as the eval loader tags it (NaN where the loader
    yielded no such view: the eval loader yields every view of a video or none);
    tokens: None or (N, V, t, h, w, D) float32 patch tokens (prefix tokens left out).
    """

    ids: list[str]
    labels: torch.Tensor
    features: torch.Tensor
    view_features: torch.Tensor
    tokens: torch.Tensor | None = None


@torch.no_grad()
def extract_video_features(model: torch.nn.Module, loader: Iterable[dict], device: torch.device | str, *,
                           pool: str = "mean", num_views: int | None = None, keep_tokens: bool = False,
                           max_batches: int | None = None) -> VideoFeatures:
    """Frozen features of every video the loader yields: per view and averaged over views.

    The one extraction path: the frozen kNN / linear probe of finetune/run.py and
    scripts/extract_features.py both call it, so their features cannot drift apart.
    model: anything with forward_features(video) -> (B, prefix + N, D) and
    num_prefix_tokens (keep_tokens also needs feature_grid(size) -> (t, h, w)).
    loader batches: "video" (B, 3, T, H, W), "label" (B,), optional "video_id" (list[str];
    default: one id per row) and "view" (B,) (default 0). num_views: V (default: the
    largest view index + 1). The model runs in eval mode and is put back in its previous
    mode afterwards. Per process: under DDP, gather the results yourself.

    Rows are sorted by (video id, view) before anything is summed and a repeated (id, view)
    pair (DDP padding) counts once, so the result does not depend on the order in which
    loader workers or ranks delivered the clips. Raises ValueError when the views of a
    video disagree on the label or a view index is >= num_views.
    """
    was_training = model.training
    model.eval()
    pooled, grids, labels, ids, views = [], [], [], [], []
    try:
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            video = batch["video"].to(device, non_blocking=True)  # (B, 3, T, H, W)
            tokens = model.forward_features(video)  # (B, prefix + N, D)
            pooled.append(pool_tokens(tokens, model.num_prefix_tokens, pool).float().cpu())  # (B, D)
            if keep_tokens:
                t, h, w = model.feature_grid(tuple(video.shape[2:]))
                patches = tokens[:, model.num_prefix_tokens:]  # (B, t·h·w, D), t-major as the model flattens
                grids.append(patches.reshape(video.shape[0], t, h, w, -1).float().cpu())  # (B, t, h, w, D)
            labels.append(torch.as_tensor(batch["label"]).long().cpu().reshape(-1))
            n = video.shape[0]
            ids.extend([str(v) for v in batch["video_id"]] if "video_id" in batch else
                       [f"row{len(ids) + i:08d}" for i in range(n)])
            views.append(torch.as_tensor(batch["view"]).long().cpu().reshape(-1) if "view" in batch
                         else torch.zeros(n, dtype=torch.long))
    finally:
        model.train(was_training)
    if not pooled:
        return VideoFeatures([], torch.zeros(0, dtype=torch.long), torch.zeros(0, 0), torch.zeros(0, 0, 0),
                             torch.zeros(0, 0, 0, 0, 0, 0) if keep_tokens else None)

    view = torch.cat(views)  # (R,) one entry per clip row
    keys = list(zip(ids, view.tolist()))  # (video id, view) per row
    order, seen = [], set()
    for i in sorted(range(len(keys)), key=keys.__getitem__):  # stable: the first arrival of a pair first
        if keys[i] not in seen:
            seen.add(keys[i])
            order.append(i)
    keep = torch.tensor(order, dtype=torch.long)
    rows, view, row_labels = torch.cat(pooled)[keep], view[keep], torch.cat(labels)[keep]  # (R', D), (R',), (R',)
    row_ids = [ids[i] for i in order]
    video_ids, features, video_labels, _ = mean_by_video(rows, row_ids, row_labels)
    V = num_views if num_views is not None else int(view.max()) + 1
    if int(view.max()) >= V:
        raise ValueError(f"view index {int(view.max())} does not fit num_views={V}")
    slot = {v: i for i, v in enumerate(video_ids)}
    row_video = torch.tensor([slot[v] for v in row_ids], dtype=torch.long)  # (R',) row -> video
    view_features = rows.new_full((len(video_ids), V, rows.shape[1]), math.nan)  # (N, V, D)
    view_features[row_video, view] = rows
    tokens = None
    if keep_tokens:
        row_tokens = torch.cat(grids)[keep]  # (R', t, h, w, D)
        tokens = row_tokens.new_full((len(video_ids), V, *row_tokens.shape[1:]), math.nan)  # (N, V, t, h, w, D)
        tokens[row_video, view] = row_tokens
    return VideoFeatures(video_ids, video_labels, features, view_features, tokens)


def extract_features(model: torch.nn.Module, loader: Iterable[dict], device: torch.device | str, *,
                     pool: str = "mean", max_batches: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`extract_video_features` as the (feats (V, D), labels (V,), sorted ids) that
    knn_classify / linear_probe take."""
    out = extract_video_features(model, loader, device, pool=pool, max_batches=max_batches)
    return out.features, out.labels, out.ids


def save_features(path: str | os.PathLike, feats: VideoFeatures, metadata: dict[str, str]) -> None:
    """Write VideoFeatures as safetensors: tensors "features" (N, D), "view_features"
    (N, V, D), "labels" (N,) int64 and, when kept, "tokens" (N, V, t, h, w, D); metadata
    "video_ids" (JSON list in row order) plus `metadata` (str -> str). Written to a temp
    file in the target folder and renamed, so a reader never sees half a file; equal
    contents give byte-identical files (see `_sort_metadata`)."""
    from safetensors.torch import save_file
    tensors = {"features": feats.features, "view_features": feats.view_features, "labels": feats.labels}
    if feats.tokens is not None:
        tensors["tokens"] = feats.tokens
    meta = {"video_ids": json.dumps(feats.ids), **metadata}
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + ".",
                               suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        _sort_metadata(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _sort_metadata(path: str) -> None:
    """safetensors writes the metadata map in hash order, which changes from process to
    process; rewrite the header (8-byte length, then JSON) with the metadata keys sorted.
    The tensor entries and the header length stay as they are, so the data offsets hold;
    should the re-encoded JSON not fit that length, the file is left as written."""
    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text.ljust(size))  # safetensors pads the header with spaces too


def load_features(path: str | os.PathLike) -> dict:
    """Read a file of `save_features`: every tensor by name, every metadata entry as a
    string, except "video_ids" (list[str], row order) and "grid" ([t, h, w]) parsed from JSON."""
    from safetensors import safe_open
    with safe_open(os.fspath(path), framework="pt") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata() or {})
    for key in ("video_ids", "grid"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return {**meta, **out}
