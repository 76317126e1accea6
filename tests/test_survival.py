"""Survival and regression heads: the losses by hand, Harrell's C against scikit-survival, packed = one slide at a
time and two ranks = one process with double batch for every head, a planted-truth cohort through
``abmil train --folds`` and ``abmil evaluate``, heatmap contributions, and bad outcome columns refused."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from abmil.cli import main
from abmil.data.synthetic import write_outcome_cohort as make_outcome_cohort
from abmil.nn.models import MILOutput
from abmil.report.metrics import harrell_c_index
from abmil.slides.features import FeatureBagDataset
from abmil.slides.train import WSIConfig, train_feature_model
from abmil.tasks import get_task
from abmil.train.loss import Objective, bag_losses, cox_partial_nll, discrete_survival_nll
from test_ddp import free_port
from wsi_helpers import load_weights

HEADS = [("survival", "nll"), ("survival", "cox"), ("regression", "mse"), ("regression", "huber")]
SMALL = ["--hidden", "16", "--att-dim", "8", "--dropout", "0"]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- losses by hand
def test_discrete_survival_nll_by_hand():
    logits = torch.tensor([[0.3, -1.2, 0.7], [0.3, -1.2, 0.7], [2.0, 0.1, -0.5]], dtype=torch.float64)
    h = 1 / (1 + np.exp(-logits.numpy()))
    bins, events = torch.tensor([1, 1, 0]), torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    expected = [-math.log((1 - h[0, 0]) * h[0, 1]),          # event in bin 1: survived bin 0, event in bin 1
                -math.log((1 - h[1, 0]) * (1 - h[1, 1])),    # censored in bin 1: survived bins 0 and 1
                -math.log(h[2, 0])]                          # event in bin 0
    np.testing.assert_allclose(discrete_survival_nll(logits, bins, events).numpy(), expected, rtol=1e-12)
    # PORPOISE's alpha: (1 - alpha) * nll + alpha * uncensored term
    got = discrete_survival_nll(logits, bins, events, alpha=0.4).numpy()
    np.testing.assert_allclose(got, [expected[0], 0.6 * expected[1], expected[2]], rtol=1e-12)


def test_cox_partial_likelihood_by_hand_with_ties_and_censoring():
    r = torch.tensor([0.5, -0.2, 1.1, 0.3], dtype=torch.float64)
    times, events = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 1.0])
    e = np.exp(r.numpy())
    expected = [math.log(e.sum()) - 0.5,                     # everyone is at risk at t = 1
                math.log(e[1] + e[2] + e[3]) + 0.2,          # t = 2: the tied censored bag is at risk (Breslow)
                0.0,                                         # censored
                0.0]                                         # the last event: its risk set is itself
    np.testing.assert_allclose(cox_partial_nll(r, times, events).numpy(), expected, rtol=1e-12)
    assert cox_partial_nll(r, times, torch.zeros(4)).abs().sum() == 0  # no event: nothing
    assert cox_partial_nll(r[:1], times[:1], events[:1]).item() == 0  # one bag: nothing to compare


def test_cox_matches_scikit_survival_coxph_likelihood():
    """Our partial likelihood at a fitted linear model's coefficients is the one scikit-survival's CoxPH maximises
    (Breslow ties): its gradient there is ~0."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2))
    t = np.round(rng.exponential(np.exp(-x @ [1.0, -0.5])), 1) + 0.1
    e = rng.random(40) < 0.7
    beta = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(e, t)).coef_
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    loss = cox_partial_nll(torch.tensor(x) @ b, torch.tensor(t), torch.tensor(e, dtype=torch.float64)).sum()
    loss.backward()
    assert b.grad.abs().max() < 1e-4


def test_regression_losses_and_dispatch():
    out = MILOutput(torch.tensor([[1.0], [3.0], [-2.0]]))
    y = torch.tensor([0.5, 0.0, -2.0])
    np.testing.assert_allclose(bag_losses(out, y, objective=Objective("mse")).numpy(), [0.25, 9.0, 0.0])
    # Huber (delta 1): 0.5 d^2 within 1, |d| - 0.5 beyond
    np.testing.assert_allclose(bag_losses(out, y, objective=Objective("huber")).numpy(),
                               [0.125, 2.5, 0.0])
    with pytest.raises(ValueError, match="loss must be one of nll, cox"):
        WSIConfig(task="survival", loss="mse")


def test_harrell_c_index_equals_scikit_survival():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        t = rng.integers(0, 8, n).astype(float)  # ties in time
        e = rng.random(n) < 0.6
        r = rng.integers(0, 5, n).astype(float)  # ties in risk
        if not e.any():
            continue
        assert harrell_c_index(t, e, r) == pytest.approx(concordance_index_censored(e, t, r)[0], abs=1e-12)


# ----------------------------------------------------------------------------- the one loop, every head
@pytest.mark.parametrize("task,loss", HEADS)
def test_packed_steps_equal_slides_one_at_a_time_for_every_head(tmp_path, task, loss):
    """Steps of 4 slides packed into one pass (chunk 1000) or forwarded one by one (chunk 39: no two fit), Cox's
    step-wide likelihood included: the same weights after 2 epochs."""
    manifest, features, _ = make_outcome_cohort(tmp_path, task, 10, sizes=(20, 40))
    weights = {}
    for name, chunk in (("packed", 1000), ("alone", 39)):
        ds = FeatureBagDataset(manifest, features, task=task)
        cfg = WSIConfig(epochs=2, batch_size=4, hidden=16, att_dim=8, chunk_size=chunk, lr=1e-3, task=task,
                        loss=loss, val_split=0.2)
        info = train_feature_model(ds, tmp_path / name, cfg)
        assert info["head"]["task"] == task and info["head"]["loss"] == loss
        weights[name] = load_weights(tmp_path / name)
    for k in weights["packed"]:
        torch.testing.assert_close(weights["packed"][k], weights["alone"][k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("task,loss", HEADS)
def test_two_ranks_equal_one_process_with_double_batch_for_every_head(tmp_path, task, loss):
    manifest, features, _ = make_outcome_cohort(tmp_path, task, 9, sizes=(10, 30))
    args = ["--manifest", str(manifest), "--features", str(features), "--task", task, "--loss", loss,
            "--epochs", "2", "--hidden", "16", "--att-dim", "8", "--lr", "1e-3", "--seed", "3", "--val-split", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "abmil", "train", *args, "--out", str(tmp_path / "ddp"),
         "--batch-size", "2"], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main(["train", *args, "--out", str(tmp_path / "single"), "--batch-size", "4"]) == 0
    ddp, single = load_weights(tmp_path / "ddp"), load_weights(tmp_path / "single")
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=1e-6, msg=k)


# ----------------------------------------------------------------------------- a planted truth, end to end
def _attention_auc(h5_path, keys: dict) -> float:
    from sklearn.metrics import roc_auc_score

    aucs = []
    with h5py.File(h5_path) as f:
        for sid, rows in keys.items():
            a = f[sid]["attention"][...]
            y = np.zeros(a.size, int)
            y[rows] = 1
            aucs.append(roc_auc_score(y, a))
    return float(np.mean(aucs))


@pytest.mark.parametrize("task,loss,extra", [("survival", "nll", ["--batch-size", "8", "--epochs", "12"]),
                                             ("regression", "mse", ["--batch-size", "8", "--epochs", "12"])])
def test_planted_truth_cohort_through_train_folds_and_evaluate(tmp_path, capsys, task, loss, extra):
    """120 slides whose outcome is carried by a few key instances each (survival: ~40% censored): 5-fold CV through
    the CLI, then evaluate on the out-of-fold predictions; the fold models' attention finds the key instances."""
    manifest, features, keys = make_outcome_cohort(tmp_path, task, 120, dim=8, sizes=(8, 16))
    run = tmp_path / "cv"
    assert main(["train", "--task", task, "--loss", loss, "--manifest", str(manifest), "--features", str(features),
                 "--out", str(run), "--folds", "5", "--lr", "1e-2", "--seed", "0", *SMALL, *extra]) == 0
    assert main(["evaluate", "--predictions", str(run / "oof.csv"), "--bootstrap", "50", "--out",
                 str(tmp_path / "eval")]) == 0
    metrics = {(r["level"], r["metric"], r["class"]): r for r in
               __import__("json").loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]}
    assert main(["predict", "--run", str(run), "--manifest", str(manifest), "--features", str(features),
                 "--out", str(tmp_path / "preds.csv")]) == 0
    attention_auc = _attention_auc(tmp_path / "preds.attention.h5", keys)
    out = capsys.readouterr().out
    if task == "survival":
        c = metrics["slide", "c_index_harrell", ""]["value"]
        print(f"survival: oof Harrell C {c:.3f}, attention AUC {attention_auc:.3f}", file=sys.stderr)
        assert c > 0.58 and metrics["slide", "c_index_uno", ""]["value"] > 0.55
        assert (tmp_path / "eval" / "km.png").stat().st_size > 1000
        header = read_csv(run / "oof.csv")[0]
        assert {"time", "event", "risk"} <= header.keys() and sum(k.startswith("surv_") for k in header) == 4
    else:
        r2, r = metrics["slide", "r2", ""]["value"], metrics["slide", "pearson", ""]["value"]
        print(f"regression: oof R2 {r2:.3f}, Pearson {r:.3f}, attention AUC {attention_auc:.3f}", file=sys.stderr)
        assert r2 > 0.3 and r > 0.6
        assert (tmp_path / "eval" / "scatter.png").is_file()
    assert attention_auc > 0.75, out


# ----------------------------------------------------------------------------- heatmaps
@pytest.mark.parametrize("task,loss", [("survival", "cox"), ("regression", "mse"), ("survival", "nll")])
def test_heatmap_contributions_sum_to_the_risk_or_prediction(tmp_path, task, loss):
    from abmil.slides.feature_files import FeatureFile
    from abmil.slides.heatmap import head_contributions, slide_heatmap
    from abmil.slides.predict import load_run, predict_file

    manifest, features, _ = make_outcome_cohort(tmp_path, task, 8)
    train_feature_model(FeatureBagDataset(manifest, features, task=task), tmp_path / "run",
                        WSIConfig(epochs=1, batch_size=4, hidden=16, att_dim=8, task=task, loss=loss))
    run = load_run(tmp_path / "run")
    file = FeatureFile(features / "c000.h5", "c000")
    pred = predict_file(run, file)
    name, shares = head_contributions(run, file, pred.attention)
    bias = run.model.classifier.bias.detach().double().numpy()
    if loss == "cox":
        assert pred.probabilities[0] == pytest.approx(shares.sum() + bias[0], abs=1e-5)
    elif task == "regression":
        mean, sd = run.head.target_scale
        assert pred.probabilities[0] == pytest.approx(shares.sum() + mean + sd * bias[0], rel=1e-5)
    assert "share" in name
    summary = slide_heatmap(tmp_path / "run", features / "c000.h5", tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000 and ("risk" in summary or "predicted" in summary)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("task,row,fragments", [
    ("survival", "c001,-1.5,1", ["bag c001", "field 'time'", "not a finite number >= 0"]),
    ("survival", "c001,nan,1", ["bag c001", "field 'time'"]),
    ("survival", "c001,2.0,2", ["bag c001", "field 'event'", "not 0 (censored) or 1"]),
    ("survival", "c001,2.0,", ["bag c001", "field 'event' is empty"]),
    ("regression", "c001,nan", ["bag c001", "field 'target'", "not a finite number"]),
    ("survival", "ALL_CENSORED", ["every slide is censored"]),
])
def test_bad_outcomes_stop_with_one_line_before_writing(tmp_path, capsys, task, row, fragments):
    manifest, features, _ = make_outcome_cohort(tmp_path, task, 6)
    lines = manifest.read_text().splitlines()
    if row == "ALL_CENSORED":
        lines = [lines[0]] + [",".join(ln.split(",")[:2] + ["0"]) for ln in lines[1:]]
    else:
        lines[2] = row
    manifest.write_text("\n".join(lines) + "\n")
    for extra in ([], ["--folds", "2"]):
        out = tmp_path / f"out{len(extra)}"
        capsys.readouterr()
        assert main(["train", "--task", task, "--manifest", str(manifest), "--features", str(features),
                     "--out", str(out), "--epochs", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("abmil: error: ") and err.count("\n") == 1, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        assert not out.exists()


def test_survival_settings_are_checked():
    with pytest.raises(ValueError, match="not for the survival task"):
        WSIConfig(task="survival", monitor="val_auc")
    with pytest.raises(ValueError, match="for classification"):
        WSIConfig(task="regression", class_weights="balanced")
    head = get_task("survival").fit("nll", [(1.0, 1), (2.0, 1), (3.0, 0), (4.0, 1)], 2)
    assert head.time_bins == (0.0, 2.0, 4.0) and head.bin_of(1.9) == 0 and head.bin_of(10.0) == 1


def test_cox_needs_several_slides_per_step(tmp_path, capsys):
    manifest, features, _ = make_outcome_cohort(tmp_path, "survival", 6)
    capsys.readouterr()
    assert main(["train", "--task", "survival", "--loss", "cox", "--manifest", str(manifest), "--features",
                 str(features), "--out", str(tmp_path / "out"), "--epochs", "1"]) == 2
    assert "--batch-size 2 or more" in capsys.readouterr().err and not (tmp_path / "out").exists()
