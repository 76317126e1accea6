"""Histology models and training: the patch CNN, the six Table 2-3 models, presets, validation split, early stopping,
per-visit augmentation, bag metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from abmil.data.bags import pack
from abmil.data.histology import PatchBag
from abmil.data.histology_training import BagAugmenter, FloatBags
from abmil.nn.patch_cnn import PatchCNN, flat_dim
from abmil.nn.zoo import benchmark_model, histology_model
from abmil.report.metrics import bag_metrics
from abmil.train import fit as fit_module
from abmil.train.config import TrainConfig
from abmil.train.fit import fit, validation_split
from abmil.train.loop import EarlyStopping, TensorBags, train_loop, visit_generator
from abmil.train.presets import histology_config, histology_stopping
from abmil.train.schedule import paper_steps

SIX = ("instance-max", "instance-mean", "embedding-max", "embedding-mean", "attention", "gated")


# --------------------------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("size, flat", [(27, 1200), (32, 1728)])
def test_patch_cnn_shapes(size, flat):
    assert flat_dim(size) == flat
    net = PatchCNN(size)
    assert net.fc[0].in_features == flat and net.fc[3].out_features == 512 == PatchCNN.out_dim
    assert net(torch.rand(5, 3, size, size)).shape == (5, 512)
    with pytest.raises(ValueError, match=f"expects \\(n_instances, 3, {size}, {size}\\)"):
        net(torch.rand(5, 3, size + 1, size + 1))


def test_patch_cnn_is_the_published_layer_stack():
    """Pool-then-ReLU and channels-last compute exactly conv-ReLU-pool on [-1, 1] input, as published."""
    torch.manual_seed(0)
    net = PatchCNN(27, dropout=0.0).eval()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 36, (4, 4)), (36, 48, (3, 3))]
    reference = nn.Sequential(convs[0], nn.ReLU(), nn.MaxPool2d(2), convs[1], nn.ReLU(), nn.MaxPool2d(2))
    x = torch.rand(7, 3, 27, 27)
    want = net.fc(reference(x * 2 - 1).flatten(1))
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [27, 32])
@pytest.mark.parametrize("name", SIX)
def test_six_models_forward_and_gradients(name, size):
    torch.manual_seed(1)
    model = histology_model(name, size)
    x, bag_index = pack([torch.rand(4, 3, size, size), torch.rand(6, 3, size, size)])
    out = model(x, bag_index, 2)
    assert out.prob.shape == (2,) and ((out.prob > 0) & (out.prob < 1)).all()
    if name in ("attention", "gated"):
        assert out.weights.shape == (10,)
        torch.testing.assert_close(out.weights[:4].sum(), torch.tensor(1.0))
        assert model.pool.att_dim == 128 and model.pool.gated == (name == "gated")
    if name.startswith("instance"):
        assert out.instance_prob.shape == (10,)
    out.prob.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.features.0.weight"].abs().sum() > 0  # the signal reaches the first conv


def test_histology_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown histology model 'mi-net-ds'"):
        histology_model("mi-net-ds", 27)


# --------------------------------------------------------------------------------------------- presets

def test_histology_presets():
    cfg = histology_config()
    assert (cfg.optimizer, cfg.lr, cfg.betas, cfg.weight_decay, cfg.epochs, cfg.batch_size) == (
        "adam", 1e-4, (0.9, 0.999), 5e-4, 200, 1)
    assert histology_stopping() == EarlyStopping(patience=25, val_fraction=0.2)
    for bad in ({"patience": 0}, {"val_fraction": 0.0}, {"val_fraction": 1.0}, {"patience": 2.5}):
        with pytest.raises(ValueError):
            EarlyStopping(**bad)


# --------------------------------------------------------------------------------------------- validation split

def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.array([1] * 23 + [0] * 29)  # a breast training fold
    tr, val = validation_split(labels, 0.2, seed=3)
    assert np.intersect1d(tr, val).size == 0 and np.union1d(tr, val).tolist() == list(range(52))
    assert (labels[val] == 1).sum() == 5 and (labels[val] == 0).sum() == 6  # round(0.2 * 23), round(0.2 * 29)
    np.testing.assert_array_equal(validation_split(labels, 0.2, seed=3)[1], val)
    assert not np.array_equal(validation_split(labels, 0.2, seed=4)[1], val)
    # tiny folds still keep one bag on each side
    for lab in ([0, 1], [1, 1, 0]):
        tr, val = validation_split(np.array(lab), 0.2, seed=0)
        assert tr.size >= 1 and val.size == 1
    with pytest.raises(ValueError, match=">= 2 training bags"):
        validation_split(np.array([1]), 0.2, seed=0)


# --------------------------------------------------------------------------------------------- training loop

def _toy(n: int = 12, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
    bags = [torch.randn(3 + i % 4, 6, generator=g) + 1.5 * labels[i] for i in range(n)]
    return bags, labels


def test_validation_and_stopping_without_val_bags_is_plain_fit():
    """No validation bags, no augmentation: exactly the reference loop's weights."""
    bags, labels = _toy()
    cfg = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=5e-4, epochs=3)
    torch.manual_seed(0)
    a = benchmark_model("attention", 6)
    torch.manual_seed(0)
    b = benchmark_model("attention", 6)
    fit(a, bags, labels, cfg, seed=5)
    hist = fit(b, bags, labels, cfg, seed=5)
    assert hist.epochs_run == 3 and hist.best_epoch == -1 and not hist.stopped_early
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)


def test_early_stopping_keeps_the_best_epoch(monkeypatch):
    """Scripted validation scores: lower error wins, a tie goes to the lower loss, `patience` bad epochs stop."""
    script = [(0.5, 0.9), (0.3, 0.8), (0.3, 0.7), (0.3, 0.75), (0.4, 0.1), (0.3, 0.7), (0.2, 0.1)]
    calls = iter(script)
    monkeypatch.setattr(fit_module, "score_bags",
                        lambda model, bags, labels: dict(zip(("val_error", "val_loss"), next(calls))))
    bags, labels = _toy()
    snapshots = []
    torch.manual_seed(0)
    model = benchmark_model("attention", 6)
    hist = fit(
        model, bags[:8], labels[:8], TrainConfig(optimizer="adam", lr=1e-2, epochs=20), seed=0,
        val_bags=bags[8:], val_labels=labels[8:], stopping=EarlyStopping(patience=3),
        on_epoch_end=lambda e, h: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}))
    # epoch 2 (0.3, 0.7) is best; 3, 4, 5 do not beat it ((0.3, 0.7) again is not better) -> stop after epoch 5
    assert hist.best_epoch == 2 and hist.epochs_run == 6 and hist.stopped_early
    assert hist.val_error == [s[0] for s in script[:6]] and hist.val_loss == [s[1] for s in script[:6]]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[2][k], msg=k)
    assert not torch.equal(snapshots[2]["classifier.weight"], snapshots[5]["classifier.weight"])


def test_early_stopping_needs_labels_and_rule():
    bags, labels = _toy()
    with pytest.raises(ValueError, match="val_labels and an EarlyStopping"):
        fit(benchmark_model("attention", 6), bags, labels, TrainConfig(epochs=1), seed=0,
                           val_bags=bags[:2])
    with pytest.raises(ValueError, match="needs validation"):
        train_loop(benchmark_model("attention", 6), TensorBags(bags, labels), TrainConfig(epochs=1),
                   lambda epoch, step: paper_steps(len(bags), 0, epoch, step), seed=0, stopping=EarlyStopping())


def test_real_validation_run_stops_and_reports():
    bags, labels = _toy(16)
    torch.manual_seed(0)
    model = benchmark_model("attention", 6)
    hist = fit(model, bags[:12], labels[:12], TrainConfig(optimizer="adam", lr=1e-3, epochs=8),
                              seed=0, val_bags=bags[12:], val_labels=labels[12:], stopping=EarlyStopping(patience=2))
    assert len(hist.val_error) == len(hist.val_loss) == hist.epochs_run
    # it ran to the cap, or stopped exactly `patience` epochs after its best
    assert hist.epochs_run == (hist.best_epoch + 1 + 2 if hist.stopped_early else 8)
    assert hist.best_epoch == int(np.lexsort((hist.val_loss, hist.val_error))[0])  # the first best (error, loss)
    assert not model.training


class _Killed(Exception):
    pass


@pytest.mark.parametrize("network", ["mlp", "patch-cnn"])
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, network):
    """A run stopped after any epoch and resumed from its checkpoint equals the run that never stopped, bit for bit:
    weights, best epoch, validation history (dropout, augmentation, bag order and Adam's state all carry over; the
    patch CNN's channels_last conv weights need their Adam moments back in the same layout)."""
    bags, labels = _toy(16)
    build = lambda: benchmark_model("gated", 6)  # noqa: E731
    if network == "patch-cnn":
        g = torch.Generator().manual_seed(1)
        bags = [torch.rand(b.shape[0], 3, 27, 27, generator=g) * (0.5 + 0.5 * labels[i]) for i, b in enumerate(bags)]
        build = lambda: histology_model("gated", 27)  # noqa: E731
    cfg = TrainConfig(optimizer="adam", lr=1e-2 if network == "mlp" else 1e-3, weight_decay=5e-4, epochs=9)

    def noisy(i, bag, g):  # an augmentation drawing from the visit's generator
        return bag + 0.3 * torch.randn(bag.shape, generator=g)

    def run(ckpt=None, key="k", kill_at=None, init=0):
        torch.manual_seed(init)
        model = build()

        def stop(epoch, history):
            if epoch == kill_at:
                raise _Killed

        history = fit(model, bags[:12], labels[:12], cfg, seed=3, val_bags=bags[12:],
                                     val_labels=labels[12:], stopping=EarlyStopping(patience=4), augment=noisy,
                                     on_epoch_end=stop, checkpoint_dir=ckpt, checkpoint_key=key)
        return model, history

    whole, h_whole = run()
    assert h_whole.best_epoch >= 0 and h_whole.epochs_run >= 5
    for kill_at in (0, h_whole.best_epoch, h_whole.epochs_run - 2):
        ckpt = tmp_path / f"k{kill_at}"
        with pytest.raises(_Killed):
            run(ckpt, kill_at=kill_at)
        files = sorted(p.name for p in ckpt.iterdir())
        e = kill_at + 1
        assert files == [f"best-e{e:04d}.safetensors", "checkpoint.json", f"optimizer-e{e:04d}.safetensors",
                         f"weights-e{e:04d}.safetensors"]
        resumed, h = run(ckpt, init=99)  # other initial weights: the checkpoint's must win
        assert h.resumed_at == [kill_at + 1]
        assert (h.val_error, h.val_loss, h.best_epoch, h.epochs_run, h.stopped_early) == (
            h_whole.val_error, h_whole.val_loss, h_whole.best_epoch, h_whole.epochs_run, h_whole.stopped_early)
        for (n, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(p, q), n
    # a checkpoint of another run (another key) is not resumed: the run starts from its own initial weights
    with pytest.raises(_Killed):
        run(tmp_path / "other", kill_at=2)
    fresh, h = run(tmp_path / "other", key="another", init=99)
    alone, h_alone = run(init=99)
    assert h.resumed_at == [] and h.val_loss == h_alone.val_loss
    assert all(torch.equal(p, q) for p, q in zip(fresh.state_dict().values(), alone.state_dict().values()))


# --------------------------------------------------------------------------------------------- augmentation

def _patch_bag(n: int, s: int, seed: int, centres: bool = False) -> PatchBag:
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8)
    c = rng.integers(0, 40, (n, 2)) if centres else None
    return PatchBag(patches, np.zeros((n, 2), np.int64), 1, f"b{seed}", "x", centres=c)


def test_float_bags_and_augmenter_are_seeded_per_visit():
    bags = [_patch_bag(4, 32, 0), _patch_bag(3, 32, 1)]
    fb = FloatBags(bags)
    assert len(fb) == 2 and fb[1].shape == (3, 3, 32, 32) and fb[1].dtype == torch.float32
    assert [t.shape[0] for t in fb[0:2]] == [4, 3] and float(fb[0].max()) <= 1.0
    aug = BagAugmenter(bags)
    a = aug(0, fb[0], visit_generator(7, 2, 0))
    torch.testing.assert_close(a, aug(0, fb[0], visit_generator(7, 2, 0)))
    assert not torch.allclose(a, aug(0, fb[0], visit_generator(7, 3, 0)))  # next epoch: a new draw
    assert a.shape == fb[0].shape and 0 <= float(a.min()) and float(a.max()) <= 1


def test_augmenter_recuts_nucleus_windows_from_the_image():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    bag = _patch_bag(5, 27, 2, centres=True)
    aug = BagAugmenter([bag], images=[image])
    out = aug(0, None, visit_generator(0, 0, 0))
    assert out.shape == (5, 3, 27, 27)
    with pytest.raises(ValueError, match="nucleus centres"):
        BagAugmenter([_patch_bag(2, 27, 3)], images=[image])


# --------------------------------------------------------------------------------------------- metrics

def test_bag_metrics():
    m = bag_metrics(np.array([1, 1, 0, 0, 1]), np.array([0.9, 0.4, 0.6, 0.1, 0.7]))
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(5 / 6)
    one = bag_metrics(np.array([0, 0]), np.array([0.2, 0.3]))
    assert math.isnan(one["auc"]) and one["precision"] == 0.0 and one["accuracy"] == 1.0


def test_resumed_after_its_stopping_epoch_trains_nothing_more(tmp_path):
    """Killed after the epoch that stopped it (its checkpoint already written): the rerun trains no further epoch."""
    bags, labels = _toy(16)
    cfg = TrainConfig(optimizer="adam", lr=1e-2, epochs=30)

    def run(ckpt=None, on_epoch_end=None):
        torch.manual_seed(0)
        model = benchmark_model("gated", 6)
        history = fit(model, bags[:12], labels[:12], cfg, seed=3, val_bags=bags[12:], val_labels=labels[12:],
                      stopping=EarlyStopping(patience=1), on_epoch_end=on_epoch_end, checkpoint_dir=ckpt)
        return model, history

    whole, h_whole = run()
    assert h_whole.stopped_early and h_whole.epochs_run < 30

    def kill_at_the_end(epoch, history):
        if history.stopped_early:
            raise _Killed

    with pytest.raises(_Killed):
        run(tmp_path / "ckpt", kill_at_the_end)
    resumed, h = run(tmp_path / "ckpt")
    assert (h.epochs_run, h.best_epoch, h.val_loss) == (h_whole.epochs_run, h_whole.best_epoch, h_whole.val_loss)
    assert all(torch.equal(p, q) for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()))
