import math

import pytest
import torch
from torch import nn

from sharpshift.errors import UserError
from sharpshift.evaluation.features import extract_features
from sharpshift.evaluation.knn import knn_classify, knn_top1
from sharpshift.evaluation.linear import LinearProbe, linear_probe


def blobs(n_per_class: int, classes: int = 5, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Well separated Gaussian blobs: a random unit-norm-ish centre per class plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def knn_slow(train_x, train_y, test_x, k, temperature, num_classes):
    """The formula, one test sample at a time; ties: lower train index, then lower class."""
    tr = train_x / train_x.norm(dim=1, keepdim=True)
    preds = []
    for q in test_x:
        q = q / q.norm()
        sims = [float(tr[j] @ q) for j in range(len(tr))]
        # Sort by similarity descending, then by train index ascending.
        order = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[: min(k, len(sims))]
        scores = [0.0] * num_classes
        for j in order:
            scores[int(train_y[j])] += math.exp(sims[j] / temperature)
        best = max(scores)
        preds.append(scores.index(best))  # first (lowest) class among equal maxima
    return torch.tensor(preds)


# ---------------------------------------------------------------- kNN


def test_knn_separable_blobs_and_shuffled_labels():
    x, y = blobs(100, classes=5)
    trx, try_, tex, tey = split(x, y, 400)
    assert knn_top1(trx, try_, tex, tey, k=20) >= 0.95
    shuffled = try_[torch.randperm(len(try_), generator=torch.Generator().manual_seed(1))]
    assert knn_top1(trx, shuffled, tex, tey, k=20) < 0.4  # chance is 0.2


def test_knn_matches_slow_formula_on_random_case():
    g = torch.Generator().manual_seed(3)
    trx = torch.randn(60, 8, generator=g)
    try_ = torch.randint(0, 4, (60,), generator=g)
    tex = torch.randn(25, 8, generator=g)
    for k, t in [(1, 0.1), (7, 0.1), (20, 0.5), (60, 0.07)]:
        fast = knn_classify(trx, try_, tex, k=k, temperature=t, num_classes=4, chunk=4)
        assert torch.equal(fast, knn_slow(trx, try_, tex, k, t, 4)), (k, t)


def test_knn_matches_slow_formula_with_duplicates_and_ties():
    # Duplicated train features give exact similarity ties at the k-th place,
    # and duplicates with different labels give exactly equal class scores.
    g = torch.Generator().manual_seed(4)
    base = torch.randn(10, 6, generator=g)
    trx = torch.cat([base, base, base[:5]])
    try_ = torch.randint(0, 3, (25,), generator=g)
    tex = torch.cat([base[:6], torch.randn(6, 6, generator=g)])
    for k in (1, 2, 3, 5, 11, 25):
        fast = knn_classify(trx, try_, tex, k=k, temperature=0.1, num_classes=3, chunk=5)
        assert torch.equal(fast, knn_slow(trx, try_, tex, k, 0.1, 3)), k


def test_knn_tie_rules_exact():
    e = torch.eye(3)
    # train: e0 (class 2), e0 (class 1), e1 (class 0), e2 (class 0)
    trx = torch.stack([e[0], e[0], e[1], e[2]])
    try_ = torch.tensor([2, 1, 0, 0])
    q = e[0:1]
    # k=2: both e0 neighbours, class 1 and class 2 tie exactly -> lower class (1).
    assert knn_classify(trx, try_, q, k=2, temperature=0.1).tolist() == [1]
    # k=1: tie between train 0 and 1 at sim 1 -> lower train index (0, class 2).
    assert knn_classify(trx, try_, q, k=1, temperature=0.1).tolist() == [2]
    # Query e1 at k=1: the e1 point itself.
    assert knn_classify(trx, try_, e[1:2], k=1).tolist() == [0]
    # Query orthogonal to e0..e2 with a 4th dim: all sims 0, k=1 -> train 0 -> class 2.
    trx4 = torch.cat([trx, torch.zeros(4, 1)], 1)
    assert knn_classify(trx4, try_, torch.tensor([[0.0, 0, 0, 1]]), k=1).tolist() == [2]


def test_knn_k_larger_than_train_set():
    trx = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    try_ = torch.tensor([0, 0, 1])
    tex = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    preds = knn_classify(trx, try_, tex, k=200, temperature=0.1)
    assert preds.tolist() == knn_slow(trx, try_, tex, 200, 0.1, 2).tolist() == [0, 1]
    assert knn_top1(trx, try_, tex, torch.tensor([0, 1]), k=200) == 1.0


def test_knn_chunk_size_does_not_change_result():
    x, y = blobs(40, classes=4, spread=2.0)
    trx, try_, tex, _ = split(x, y, 120)
    ref = knn_classify(trx, try_, tex, k=15, chunk=1024)
    for chunk in (1, 7, 40):
        assert torch.equal(knn_classify(trx, try_, tex, k=15, chunk=chunk), ref)


def test_knn_bad_arguments():
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(UserError):
        knn_classify(x, y, x, k=0)
    with pytest.raises(UserError):
        knn_classify(x, y, x, temperature=0.0)
    with pytest.raises(UserError):
        knn_classify(x, torch.tensor([0, 1, -1, 1, 0]), x)


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_blobs():
    x, y = blobs(200, classes=5, dim=32)
    trx, try_, tex, tey = split(x, y, 800)
    probe = linear_probe(trx, try_, tex, tey)
    assert isinstance(probe, LinearProbe)
    assert probe.top1 >= 0.95 and probe.train_top1 >= 0.95
    assert probe.weight.shape == (5, 32) and probe.bias.shape == (5,)
    assert probe.mean.shape == (32,) and probe.std.shape == (32,)
    # predict() reproduces the reported accuracy, so later code can reuse the probe.
    assert (probe.predict(tex) == tey).float().mean().item() == pytest.approx(probe.top1)
    assert probe.metrics() == {"top1": probe.top1, "train_top1": probe.train_top1}


def test_linear_probe_shuffled_labels_near_chance():
    x, y = blobs(200, classes=5, dim=16)
    trx, try_, tex, tey = split(x, y, 800)
    shuffled = try_[torch.randperm(len(try_), generator=torch.Generator().manual_seed(1))]
    probe = linear_probe(trx, shuffled, tex, tey)
    assert probe.top1 < 0.4  # chance is 0.2


def test_linear_probe_deterministic_and_standardises():
    x, y = blobs(50, classes=3, dim=8, spread=1.5)
    x = x * 100 + 7  # standardisation must make scale and offset irrelevant
    trx, try_, tex, tey = split(x, y, 120)
    a = linear_probe(trx, try_, tex, tey, iterations=50, seed=0)
    b = linear_probe(trx, try_, tex, tey, iterations=50, seed=0)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.top1 == b.top1
    assert torch.allclose(a.mean, trx.mean(0))
    assert a.train_top1 > 0.8


def test_linear_probe_without_test_set_and_bad_labels():
    x, y = blobs(20, classes=2, dim=4)
    probe = linear_probe(x, y, iterations=20)
    assert math.isnan(probe.top1) and probe.train_top1 > 0.9
    with pytest.raises(UserError):
        linear_probe(x, y - 1)
    with pytest.raises(UserError):
        linear_probe(x, y, num_classes=1)


# ---------------------------------------------------------------- feature extraction


class Tiny(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)).mean((2, 3)))


def test_extract_features_matches_manual_forward_and_restores_mode():
    torch.manual_seed(0)
    m = Tiny()
    m.bn.running_mean.uniform_(-1, 1)
    m.train()
    imgs = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    feats = extract_features(m, imgs, batch_size=3, mean=mean, std=std)
    assert m.training  # restored
    assert feats.dtype == torch.float32 and feats.shape == (10, 4)
    m.eval()
    with torch.no_grad():
        x = imgs.float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        ref = m(x)
    assert torch.allclose(feats, ref, atol=1e-5)
    # Eval mode stays eval; default normalisation is 0.5 / 0.5.
    out = extract_features(m, imgs)
    assert not m.training
    with torch.no_grad():
        assert torch.allclose(out, m(imgs.float() / 255 * 2 - 1), atol=1e-5)


def test_extract_features_bf16_and_grey():
    m = Tiny(c=1)
    imgs = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    full = extract_features(m, imgs)
    half = extract_features(m, imgs, bf16=True)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert torch.allclose(half, full, atol=0.1, rtol=0.05)
    with pytest.raises(UserError):
        extract_features(m, imgs, mean=(0.5, 0.5, 0.5))
