"""MNIST-bags: the paper's balanced sampler, the reference code's i.i.d. sampler, bag lengths, and real MNIST."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from abmil.data.bags import pack
from abmil.data.mnist import read_mnist
from abmil.data.mnist_bags import (
    MNIST_MEAN,
    MNIST_STD,
    PAPER_TEST_BAGS,
    load_mnist_bags,
    make_mnist_bags,
    normalize_images,
    sample_bag_indices,
)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@functools.cache
def _synthetic(n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Random images and MNIST-like digits (about 10 % nines)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@functools.cache
def _real(split: str) -> tuple[np.ndarray, np.ndarray]:
    if not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("shared MNIST files not available")
    return read_mnist(SHARED_MNIST, split)


def _length_pmf(mean: float, std: float, rounding: str, k_max: int = 400) -> np.ndarray:
    """P(L = k), k = 0..k_max, for L = max(round_or_trunc(Normal(mean, std)), 1)."""
    k = np.arange(k_max + 1, dtype=float)
    lo, hi = (k, k + 1) if rounding == "trunc" else (k - 0.5, k + 0.5)  # the x that give k (k >= 1)
    pmf = norm.cdf(hi, mean, std) - norm.cdf(lo, mean, std)
    pmf[0] = 0.0
    pmf[1] = norm.cdf(hi[1], mean, std)  # everything below 2 (trunc) or 1.5 (nearest) is clipped to 1
    return pmf


def _check(bags) -> None:
    """Labels, instance labels and digits agree with each other and with the images."""
    images, digits = _synthetic() if not bags.split else _real(bags.split)
    for i, idx in enumerate(bags.indices):
        assert bags.digits[i].tolist() == digits[idx].tolist()
        assert bags.instance_labels[i].tolist() == (bags.digits[i] == bags.target).astype(int).tolist()
        assert bags.labels[i] == int((bags.digits[i] == bags.target).any())
        assert bags.bags[i].shape == (len(idx), 1, 28, 28) and bags.bags[i].dtype == np.float32
    np.testing.assert_array_equal(bags.bags[0], normalize_images(images[bags.indices[0]]))


@pytest.mark.parametrize("sampling", ["paper", "reference"])
def test_deterministic_and_prefix_stable(sampling):
    images, digits = _synthetic()
    a = make_mnist_bags(images, digits, 60, sampling=sampling, seed=5)
    b = make_mnist_bags(images, digits, 60, sampling=sampling, seed=5)
    c = make_mnist_bags(images, digits, 60, sampling=sampling, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices))
    assert all(np.array_equal(x, y) for x, y in zip(a.bags, b.bags))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.indices, c.indices))
    # The first k bags of a larger set are the k-bag set: nested training sets, as in the reference code.
    small = sample_bag_indices(digits, 20, sampling=sampling, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(small, a.indices[:20]))


def test_paper_sampling_is_balanced_and_alternating():
    images, digits = _synthetic()
    bags = make_mnist_bags(images, digits, 101, seed=2)
    _check(bags)
    assert bags.labels.tolist() == [1, 0] * 50 + [1]
    for label, inst in zip(bags.labels, bags.instance_labels):
        assert (inst.sum() >= 1) if label else (inst.sum() == 0)


def test_reference_sampling_is_iid():
    images, digits = _synthetic()
    bags = make_mnist_bags(images, digits, 2000, sampling="reference", seed=3)
    _check(bags)
    lengths = bags.bag_lengths
    # P(positive) = E[1 - (1 - p9)^L] over the length distribution; about 0.62 at mean 10, spread 2.
    p9 = float(np.mean(digits == 9))
    pmf = _length_pmf(10, 2, "trunc")
    expected = float(np.sum(pmf * (1 - (1 - p9) ** np.arange(len(pmf)))))
    se = np.sqrt(expected * (1 - expected) / len(bags))
    assert abs(bags.labels.mean() - expected) < 4 * se
    assert lengths.min() >= 1


@pytest.mark.parametrize("sampling", ["paper", "reference"])
@pytest.mark.parametrize("mean, std, rounding", [(10, 2, "trunc"), (10, 2, "nearest"), (50, 10, "trunc"),
                                                  (3, 2, "trunc"), (3, 2, "nearest")])
def test_bag_length_distribution(sampling, mean, std, rounding):
    """Lengths are max(int(N(mean, std)), 1): std is a standard deviation, int() truncates (or rounds)."""
    _, digits = _synthetic()
    n = 4000
    lengths = np.array([len(b) for b in sample_bag_indices(digits, n, mean_bag_length=mean, std_bag_length=std,
                                                           sampling=sampling, rounding=rounding, seed=11)])
    if sampling == "paper":
        lengths = lengths[1::2]  # negative bags: unconditioned lengths (positive ones are size-biased)
    pmf = _length_pmf(mean, std, rounding)
    k = np.arange(len(pmf))
    mu = float(np.sum(pmf * k))
    sd = float(np.sqrt(np.sum(pmf * (k - mu) ** 2)))
    assert lengths.min() >= 1
    assert abs(lengths.mean() - mu) < 4 * sd / np.sqrt(len(lengths))
    assert abs(lengths.std() - sd) < 0.06 * sd
    if mean == 10 and rounding == "trunc":
        assert abs(mu - 9.5) < 0.01  # truncation: mean length about mean - 0.5
    if mean == 3:
        assert abs(np.mean(lengths == 1) - pmf[1]) < 4 * np.sqrt(pmf[1] * (1 - pmf[1]) / len(lengths))


def test_paper_positive_bags_are_size_biased():
    _, digits = _synthetic()
    lengths = np.array([len(b) for b in sample_bag_indices(digits, 4000, seed=4)])
    # P(L = k | positive) is proportional to P(L = k) (1 - (1 - p9)^k).
    pmf = _length_pmf(10, 2, "trunc")
    k = np.arange(len(pmf))
    p9 = float(np.mean(digits == 9))
    w = pmf * (1 - (1 - p9) ** k)
    mu_pos = float(np.sum(w * k) / w.sum())
    sd_pos = float(np.sqrt(np.sum(w * (k - mu_pos) ** 2) / w.sum()))
    assert mu_pos > 9.7
    assert abs(lengths[0::2].mean() - mu_pos) < 4 * sd_pos / np.sqrt(2000)


def test_other_target_digit():
    images, digits = _synthetic()
    for sampling in ("paper", "reference"):
        bags = make_mnist_bags(images, digits, 40, target=3, sampling=sampling, seed=0)
        _check(bags)
    negatives = [d for d, y in zip(bags.digits, bags.labels) if not y]
    assert all((d != 3).all() for d in negatives)
    paper = make_mnist_bags(images, digits, 40, target=3, seed=0)
    assert paper.labels.tolist() == [1, 0] * 20
    # Unlike the reference's ``digit >= target``, a 9 in a bag does not make it positive for target 3.
    assert any((d == 9).any() for d, y in zip(paper.digits, paper.labels) if not y)


def test_bad_arguments():
    images, digits = _synthetic()
    with pytest.raises(ValueError, match="sampling"):
        sample_bag_indices(digits, 3, sampling="balanced")
    with pytest.raises(ValueError, match="rounding"):
        sample_bag_indices(digits, 3, rounding="floor")
    with pytest.raises(ValueError, match="without digit 9"):
        sample_bag_indices(np.zeros(10, dtype=np.uint8), 3)
    with pytest.raises(ValueError, match="images but"):
        make_mnist_bags(images[:5], digits, 3)
    assert sample_bag_indices(digits, 0) == []


def test_collates_into_a_packed_batch():
    images, digits = _synthetic()
    bags = make_mnist_bags(images, digits, 4, seed=1)
    items = [bags[i] for i in range(4)]
    instances, bag_index = pack([it[0] for it in items])
    n = int(bags.bag_lengths.sum())
    assert instances.shape == (n, 1, 28, 28) and instances.dtype == torch.float32
    assert bag_index.tolist() == np.repeat(np.arange(4), bags.bag_lengths).tolist()
    assert [it[1] for it in items] == bags.labels.tolist() and [it[2] for it in items] == [0, 1, 2, 3]
    assert np.concatenate([it[3] for it in items]).tolist() == np.concatenate(bags.instance_labels).tolist()


def test_normalisation_matches_torchvision_formula():
    x = (np.arange(28 * 28) % 256).reshape(1, 28, 28)  # every uint8 value
    y = normalize_images(x.astype(np.uint8))
    assert y.shape == (1, 1, 28, 28) and y.dtype == np.float32
    # ToTensor() then Normalize(): float32 division by 255, then sub_(mean).div_(std) with float32 constants
    t = torch.from_numpy(x).float().div(255)
    expected = t.sub_(torch.tensor(MNIST_MEAN)).div_(torch.tensor(MNIST_STD))
    np.testing.assert_array_equal(y[:, 0], expected.numpy())


# ---------------------------------------------------------------------------------------------------------------------
# Real MNIST: train bags from the training split, test bags from the test split.


def test_real_train_and_test_bags():
    _real("train"), _real("test")
    train = load_mnist_bags(SHARED_MNIST, "train", 50, seed=1)
    test = load_mnist_bags(SHARED_MNIST, "test", PAPER_TEST_BAGS, seed=1)
    assert PAPER_TEST_BAGS == 1000 and len(test) == 1000 and len(train) == 50
    assert train.split == "train" and test.split == "test"
    _check(train)
    _check(test)
    assert test.labels.sum() == 500
    all_test = np.concatenate(test.indices)
    assert all_test.max() < 10000 and np.concatenate(train.indices).max() >= 10000  # 50 bags reach past 10000
    images, _ = _real("test")
    for i in (0, 1, 999):
        np.testing.assert_array_equal(test.bags[i], normalize_images(images[test.indices[i]]))
    lo, hi = (0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD
    flat = np.concatenate([b.ravel() for b in test.bags[:20]])
    assert np.isclose(flat.min(), lo, atol=1e-5) and np.isclose(flat.max(), hi, atol=1e-5)
