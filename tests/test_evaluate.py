"""Contracts for the finetune evaluation library (finetune/evaluate.py)."""

import csv
import math
import random

import pytest
import torch
import torch.nn as nn

from finetune.evaluate import (PREDICTION_COLUMNS, ViewAggregate, aggregate_views, confusion_image,
                               confusion_matrix, extract_features, knn_classify, linear_probe,
                               per_class_accuracy, topk_accuracy, write_per_class_csv, write_predictions_csv)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- aggregation

# Two videos where the softmax average is the only rule that gets both right:
# "logit_trap": one confident view outvotes two mild ones in a logit average, but not in
#               probability space -> class 1 (logit average says 0).
# "vote_trap":  two mildly-for-0 views win a majority vote, one confident view wins the
#               probability average -> class 1 (majority says 0).
_VIEWS = {
    "logit_trap": [[10.0, 0.0], [0.0, 3.0], [0.0, 3.0]],
    "vote_trap": [[0.0, 5.0], [0.5, 0.0], [0.5, 0.0]],
    "single": [[0.0, 2.0]],
}


def _rows(order_seed=0, duplicate=True):
    """Per-view rows (logits, id, label, view) in shuffled order, with DDP-like duplicates."""
    rows = [(logit, vid, 1, view) for vid, views in _VIEWS.items() for view, logit in enumerate(views)]
    if duplicate:  # padding repeats the first view of two videos
        rows += [rows[0], rows[3]]
    random.Random(order_seed).shuffle(rows)
    logits = torch.tensor([r[0] for r in rows])
    return logits, [r[1] for r in rows], torch.tensor([r[2] for r in rows]), torch.tensor([r[3] for r in rows])


def test_aggregate_views_softmax_average_beats_votes_and_logit_mean():
    logits, ids, labels, views = _rows()
    agg = aggregate_views(logits, ids, labels, views=views)
    assert agg.ids == sorted(_VIEWS)
    assert agg.num_views.tolist() == [len(_VIEWS[v]) for v in agg.ids]
    for i, vid in enumerate(agg.ids):
        expected = torch.tensor(_VIEWS[vid]).softmax(1).mean(0)
        torch.testing.assert_close(agg.probs[i], expected)
    assert agg.preds.tolist() == [1, 1, 1]
    assert agg.labels.tolist() == [1, 1, 1]
    # The traps are real: the naive rules get them wrong.
    assert torch.tensor(_VIEWS["logit_trap"]).mean(0).argmax() == 0
    assert torch.tensor(_VIEWS["vote_trap"]).argmax(1).mode().values == 0


def test_aggregate_views_duplicates_counted_once_only_with_views():
    logits, ids, labels, views = _rows(duplicate=True)
    clean = aggregate_views(*_rows(order_seed=5, duplicate=False)[:3])
    deduped = aggregate_views(logits, ids, labels, views=views)
    torch.testing.assert_close(deduped.probs, clean.probs)
    assert deduped.num_views.tolist() == clean.num_views.tolist()
    naive = aggregate_views(logits, ids, labels)  # without views each row counts
    assert naive.num_views.sum() == len(ids) > clean.num_views.sum()
    assert not torch.allclose(naive.probs, clean.probs)


def test_aggregate_views_matches_loop_reference_on_random_data():
    g = _gen(1)
    n, c = 200, 7
    logits = torch.randn(n, c, generator=g) * 3
    vids = [f"v{int(i)}" for i in torch.randint(0, 40, (n,), generator=g)]
    label_of = {v: int(torch.randint(0, c, (1,), generator=g)) for v in set(vids)}
    labels = torch.tensor([label_of[v] for v in vids])
    agg = aggregate_views(logits, vids, labels)
    for i, vid in enumerate(agg.ids):
        rows = [j for j, v in enumerate(vids) if v == vid]
        torch.testing.assert_close(agg.probs[i], logits[rows].softmax(1).mean(0))
        assert agg.labels[i] == label_of[vid] and agg.num_views[i] == len(rows)
    torch.testing.assert_close(agg.probs.sum(1), torch.ones(len(agg.ids)))


def test_aggregate_views_label_conflict_raises():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="'b'.*different labels"):
        aggregate_views(logits, ["a", "b", "b"], torch.tensor([0, 1, 2]))


def test_aggregate_views_shape_mismatch_raises():
    with pytest.raises(ValueError):
        aggregate_views(torch.zeros(3, 4), ["a", "b"], torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------- metrics


def test_topk_accuracy_hand_checked():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4],  # label 3: rank 1
                          [0.4, 0.3, 0.2, 0.1],  # label 1: rank 2
                          [0.25, 0.35, 0.3, 0.1],  # label 3: rank 4
                          [0.9, 0.05, 0.03, 0.02]])  # unlabeled: left out
    labels = torch.tensor([3, 1, 3, -1])
    acc = topk_accuracy(probs, labels, ks=(1, 2, 3, 5))
    assert acc == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top3": 2 / 3, "top5": 1.0})
    assert math.isnan(topk_accuracy(probs, torch.full((4,), -1))["top1"])


def test_confusion_matrix_and_per_class_accuracy():
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 3])
    labels = torch.tensor([0, 0, 1, 2, 2, 1, -1])  # class 3 never a true label; last row unlabeled
    cm = confusion_matrix(preds, labels, 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[1, 2] = 1
    expected[2, 2] = 2
    assert cm.dtype == torch.long and torch.equal(cm, expected)
    assert cm.sum() == 6 and cm.sum(1).tolist() == [2, 2, 2, 0]
    acc = per_class_accuracy(preds, labels, 4)
    assert acc[:3].tolist() == [0.5, 0.5, 1.0] and math.isnan(acc[3])
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([4]), torch.tensor([0]), 4)


# ---------------------------------------------------------------------------- outputs

_NAMES = ["pushing, pulling", 'say "hi"', "café", "juggling|balls", "x"]  # quoting, unicode, the separator


def test_predictions_csv_round_trip(tmp_path):
    g = _gen(2)
    probs = torch.rand(6, 5, generator=g).softmax(1)
    agg = ViewAggregate(ids=[f"vid{i}" for i in range(6)], probs=probs,
                        labels=torch.tensor([0, 1, 2, 3, 4, -1]), num_views=torch.tensor([1, 2, 3, 4, 5, 6]))
    path = tmp_path / "out" / "predictions.csv"
    write_predictions_csv(path, agg, _NAMES)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == PREDICTION_COLUMNS and len(rows) == 6
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no temp file left
    for i, row in enumerate(rows):
        pred = int(probs[i].argmax())
        assert row["video_id"] == f"vid{i}" and int(row["num_views"]) == i + 1
        assert int(row["pred"]) == pred and row["pred_name"] == _NAMES[pred]
        assert float(row["prob"]) == pytest.approx(float(probs[i, pred]), abs=1e-6)
        assert row["label_name"] == (_NAMES[int(row["label"])] if int(row["label"]) >= 0 else "")
        top5 = [_NAMES[int(j)] for j in probs[i].argsort(descending=True)]
        # "|" inside a name makes the column ambiguous to split, so compare joined strings.
        assert row["top5"] == "|".join(top5)
    with pytest.raises(ValueError, match="class names"):
        write_predictions_csv(path, agg, _NAMES[:4])


def test_per_class_csv_round_trip(tmp_path):
    preds, labels = torch.tensor([0, 1, 1, 4]), torch.tensor([0, 0, 1, 4])
    acc, counts = per_class_accuracy(preds, labels, 5), confusion_matrix(preds, labels, 5).sum(1)
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, acc, counts, _NAMES)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["class_name"] for r in rows] == _NAMES
    assert [int(r["count"]) for r in rows] == [2, 1, 0, 0, 1]
    assert [r["accuracy"] for r in rows] == ["0.500000", "1.000000", "", "", "1.000000"]


def test_confusion_image_perfect_classifier_bright_diagonal():
    cm = torch.diag(torch.arange(1, 11))  # 10 classes, all correct
    img = confusion_image(cm)
    assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
    assert img.shape[1] == img.shape[2] and img.shape[1] % 10 == 0 and img.shape[1] >= 100
    assert img.min() >= 0 and img.max() <= 1
    cell = img.shape[1] // 10
    cells = img[:, ::cell, ::cell].mean(0)  # (10, 10) brightness per cell
    assert torch.allclose(cells.diagonal(), torch.ones(10))
    assert cells[~torch.eye(10, dtype=torch.bool)].max() == 0


def test_confusion_image_keeps_most_frequent_classes():
    C = 80
    cm = torch.zeros(C, C, dtype=torch.long)
    cm[torch.arange(16), (torch.arange(16) + 1) % C] = 1  # rare classes 0-15: always wrong
    cm[torch.arange(16, C), torch.arange(16, C)] = 5  # frequent classes 16-79: always right
    img = confusion_image(cm, max_classes=64)
    cell = img.shape[1] // 64
    assert img.shape[1] == img.shape[2] == 64 * cell
    cells = img[:, ::cell, ::cell].mean(0)  # (64, 64)
    assert torch.allclose(cells.diagonal(), torch.ones(64))  # would be dark if 0-15 were kept


# ---------------------------------------------------------------------------- frozen features


def _clusters(n_per, num_classes, dim, seed, spread=0.3):
    g = _gen(seed)
    centers = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(n_per)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_knn_separated_clusters_and_chance_on_random_labels():
    train, y_train = _clusters(100, 8, 32, seed=3)
    test, y_test = _clusters(50, 8, 32, seed=3)  # same centers (same seed), fresh noise below
    test = test + 0.3 * torch.randn(test.shape, generator=_gen(4))
    scores = knn_classify(train, y_train, test, 8, chunk_size=37)
    assert scores.shape == (400, 8)
    torch.testing.assert_close(scores.sum(1), torch.ones(400))
    assert topk_accuracy(scores, y_test)["top1"] > 0.98
    torch.testing.assert_close(knn_classify(train, y_train, test, 8, chunk_size=1000), scores)

    g = _gen(5)
    x, xt = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    y, yt = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    assert abs(topk_accuracy(knn_classify(x, y, xt, 10), yt)["top1"] - 0.1) < 0.05


def test_knn_weights_by_similarity():
    # One neighbour of class 0 very close, two of class 1 farther: a sharp temperature
    # trusts the close one, a flat one counts votes.
    train = torch.tensor([[1.0, 0.05], [1.0, 0.6], [1.0, -0.6]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, labels, test, 2, k=3, temperature=0.01).argmax() == 0
    assert knn_classify(train, labels, test, 2, k=3, temperature=10.0).argmax() == 1
    assert knn_classify(train, labels, test, 2, k=1).tolist() == [[1.0, 0.0]]


def test_linear_probe_separable_and_deterministic():
    g = _gen(6)
    w = torch.randn(32, 5, generator=g)
    x = torch.randn(2400, 32, generator=g) * 3 + 7  # off-centre, wide features
    scores = (x - 7) @ w  # (N, 5): labels are linear in x
    top2 = scores.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] > 1.0  # a margin, so held-out points are separable too
    x, y = x[keep], scores[keep].argmax(1)
    train, test = slice(0, len(y) - 300), slice(len(y) - 300, None)
    logits = linear_probe(x[train], y[train], x[test], 5)
    assert logits.shape == (300, 5)
    assert topk_accuracy(logits, y[test])["top1"] > 0.95
    torch.testing.assert_close(linear_probe(x[train], y[train], x[test], 5), logits, rtol=0, atol=0)
    # Standardized with train statistics: a per-feature affine change of the inputs is a no-op.
    a, b = torch.linspace(0.1, 10, 32), torch.linspace(-50, 50, 32)
    torch.testing.assert_close(linear_probe(x[train] * a + b, y[train], x[test] * a + b, 5), logits,
                               rtol=1e-3, atol=1e-3)
    x, y = x[train], y[train]
    mb = [linear_probe(x, y, x[:50], 5, epochs=5, batch_size=128, seed=s) for s in (0, 0, 1)]
    assert torch.equal(mb[0], mb[1]) and not torch.equal(mb[0], mb[2])


class _TokenModel(nn.Module):
    """Stand-in backbone: patch tokens = the clip's pixels per (t, h, w) position (D = 3),
    with `prefix` constant tokens in front that a correct "mean" pool must skip."""

    def __init__(self, prefix=1):
        super().__init__()
        self.num_prefix_tokens = prefix
        self.seen_training = []

    def forward_features(self, x):
        self.seen_training.append(self.training)
        patches = x.flatten(2).transpose(1, 2)  # (B, T·H·W, 3)
        prefix = torch.full((x.shape[0], self.num_prefix_tokens, 3), 1000.0)
        return torch.cat([prefix, patches], 1)  # (B, prefix + N, 3)


def _batch(values, ids, views, labels):
    video = torch.tensor(values, dtype=torch.float32)[:, :, None, None, None].expand(-1, -1, 2, 2, 2)
    video = video + torch.linspace(-1, 1, 8).reshape(1, 1, 2, 2, 2)  # mean over positions = value
    return {"video": video, "label": torch.tensor(labels), "video_id": ids, "view": torch.tensor(views)}


def test_extract_features_mean_pool_skips_prefix_and_averages_views():
    loader = [
        _batch([[1, 2, 3], [10, 20, 30]], ["a", "b"], [0, 0], [4, 7]),
        _batch([[3, 4, 5], [3, 4, 5]], ["a", "a"], [1, 1], [4, 4]),  # second row: DDP duplicate
        _batch([[0, 0, 0]], ["c"], [0], [2]),
    ]
    model = _TokenModel(prefix=2).train()
    feats, labels, ids = extract_features(model, loader, "cpu")
    assert ids == ["a", "b", "c"] and labels.tolist() == [4, 7, 2]
    torch.testing.assert_close(feats, torch.tensor([[2.0, 3, 4], [10, 20, 30], [0, 0, 0]]))
    assert feats.dtype == torch.float32 and model.training and model.seen_training == [False] * 3

    cls, _, _ = extract_features(model, loader, "cpu", pool="cls")
    assert torch.all(cls == 1000)
    first, _, first_ids = extract_features(model, loader, "cpu", max_batches=1)
    assert first_ids == ["a", "b"]
    torch.testing.assert_close(first[0], torch.tensor([1.0, 2, 3]))
    with pytest.raises(ValueError):
        extract_features(_TokenModel(prefix=0), loader, "cpu", pool="cls")


def test_extract_features_tiny_mvit_feeds_knn():
    from mvit import create_model

    torch.manual_seed(0)
    model = create_model("mvitv2_s_16x4_maskfeat", pretraining=True, depths=(1, 1, 1, 1), embed_dim=16,
                         input_size=(4, 64, 64))
    g = _gen(7)
    loader = [{"video": torch.randn(2, 3, 4, 64, 64, generator=g), "label": torch.tensor([i % 3, i % 3]),
               "video_id": [f"v{i}", f"v{i}"], "view": torch.tensor([0, 1])} for i in range(3)]
    feats, labels, ids = extract_features(model, loader, "cpu")
    assert feats.shape == (3, model.num_features) and torch.isfinite(feats).all()
    assert ids == ["v0", "v1", "v2"] and labels.tolist() == [0, 1, 2]
    assert knn_classify(feats, labels, feats, 3, k=1).argmax(1).tolist() == [0, 1, 2]
