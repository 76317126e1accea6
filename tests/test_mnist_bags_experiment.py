"""``abmil reproduce mnist-bags`` and ``abmil explain mnist-bags`` on the real MNIST files: one small grid point
(mean bag size 10, 50 training bags, 100 test bags, 1 repetition), resume, the pictures, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abmil.experiments.mnist_bags import Point, instance_auc, point_bags
from abmil.report.results import CORE_KEYS

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
POINT = ["--bag-means", "10", "--train-bags", "50", "--models", "attention", "--repeats", "1", "--test-bags", "100"]


def _abmil(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "abmil", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the real MNIST files (../shared/data/mnist) are not here")
    return SHARED_MNIST


@pytest.fixture(scope="module")
def small_run(mnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist") / "run"
    proc = _abmil("reproduce", "mnist-bags", *POINT, "--mnist-dir", str(mnist_dir), "--out", str(out),
                  "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_small_point_learns(small_run: Path):
    rows = json.loads((small_run / "results.json").read_text())
    auc = next(r for r in rows if r["metric"] == "auc")
    assert set(CORE_KEYS) <= set(auc) and auc["bag_mean"] == 10 and auc["train_bags"] == 50
    assert auc["n_runs"] == 1 and auc["model"] == "attention"
    assert auc["paper_mean"] == pytest.approx(0.768)
    # An untrained or broken model scores about 0.5; the paper reports 0.768 for this point.
    assert auc["mean"] > 0.75, auc
    inst = next(r for r in rows if r["metric"] == "instance_auc")
    assert inst["mean"] > 0.7, inst  # attention singles out the 9s
    assert (small_run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 50 | ours" in (small_run / "results.md").read_text()
    assert (small_run / "models" / "attention__mean10__train50.safetensors").is_file()


def test_rerun_resumes(small_run: Path, mnist_dir: Path):
    point = small_run / "points" / "attention__mean10__train50__rep0.json"
    before = point.stat().st_mtime_ns
    proc = _abmil("reproduce", "mnist-bags", *POINT, "--mnist-dir", str(mnist_dir), "--out", str(small_run),
                  "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert point.stat().st_mtime_ns == before


def test_explain_draws_a_positive_bag(small_run: Path, mnist_dir: Path, tmp_path: Path):
    png = tmp_path / "bag.png"
    proc = _abmil("explain", "mnist-bags", "--run", str(small_run), "--mnist-dir", str(mnist_dir), "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "instance AUC" in proc.stdout and "positive test bags" in proc.stdout


def test_missing_mnist_file_is_named_and_nothing_written(tmp_path: Path):
    out = tmp_path / "out"
    proc = _abmil("reproduce", "mnist-bags", *POINT, "--mnist-dir", str(tmp_path / "empty"), "--out", str(out),
                  "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.startswith("abmil: error:") and "train-images-idx3-ubyte" in proc.stderr
    assert not out.exists()


def test_bad_grid_arguments_exit_2(tmp_path: Path):
    for bad in (["--train-bags", "1"], ["--models", "svm"], ["--bag-means", "ten"]):
        proc = _abmil("reproduce", "mnist-bags", *bad, "--mnist-dir", str(tmp_path), "--out", str(tmp_path / "o"))
        assert proc.returncode == 2, bad
    assert not (tmp_path / "o").exists()


def test_training_sets_are_nested_and_test_bags_fixed(mnist_dir: Path):
    from abmil.data.mnist import read_mnist

    images = {s: read_mnist(mnist_dir, s) for s in ("train", "test")}
    small = Point("attention", 10, 2.0, 50, 0, 0, 20, 1, 100)
    large = Point("attention", 10, 2.0, 100, 0, 0, 20, 1, 100)
    (a, ta), (b, tb) = point_bags(small, images), point_bags(large, images)
    assert len(a) == 50 and len(b) == 100
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices[:50]))
    assert all(np.array_equal(x, y) for x, y in zip(ta.indices, tb.indices))
    other = Point("attention", 10, 2.0, 50, 1, 0, 20, 1, 100)
    assert not np.array_equal(point_bags(other, images)[0].indices[0], a.indices[0])


def test_instance_auc_scales_attention_by_bag_size():
    import torch

    # Two bags; the 9 gets the top weight in each, but the small bag's weights are larger overall.
    scores = [torch.tensor([0.6, 0.4]), torch.tensor([0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])]
    labels = [np.array([1, 0]), np.array([1, 0, 0, 0, 0, 0, 0, 0])]
    assert instance_auc(scores, labels, attention=True) == pytest.approx(1.0)
    assert instance_auc(scores, labels, attention=False) < 1.0
    assert instance_auc([None], labels[:1], attention=True) is None
