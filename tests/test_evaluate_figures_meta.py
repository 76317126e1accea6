"""What a reviewer checks in an evaluation: no interval printed for a log-rank p-value (a p-value has none),
Kaplan-Meier's time axis in the unit given (``--time-unit``), and the ROC band drawn with the evaluation's seed and
recorded (resamples, seed, level) in metrics.json."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from abmil.cli import main
from abmil.report import survival_evaluate
from abmil.report.evaluation_plots import ROC_BAND_RESAMPLES, plot_roc
from wsi_helpers import fail

pytest.importorskip("sksurv")


def _survival_csv(path, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk)) * 12
    event = (rng.random(n) < 0.7).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "time", "event", "risk"])
        w.writerows([f"s{i:02d}", f"{t:.4f}", e, f"{r:.6f}"] for i, (t, e, r) in enumerate(zip(time, event, risk)))
    return path


def test_logrank_p_has_no_interval_and_km_names_the_time_unit(tmp_path, capsys, monkeypatch):
    preds = _survival_csv(tmp_path / "surv.csv")
    drawn = {}
    plot_km = survival_evaluate.plot_km

    def spy(*args, **kwargs):
        drawn.update(kwargs)
        return plot_km(*args, **kwargs)

    monkeypatch.setattr(survival_evaluate, "plot_km", spy)
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", str(preds), "--bootstrap", "30", "--time-unit", "months",
                 "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    (logrank,) = [r for r in result["metrics"] if r["metric"] == "logrank_p"]
    assert logrank["value"] is not None and logrank["ci_low"] is None and logrank["ci_high"] is None
    harrell = next(r for r in result["metrics"] if r["metric"] == "c_index_harrell")
    assert harrell["ci_low"] is not None  # the other metrics keep theirs
    md = (out / "metrics.md").read_text()
    assert next(line for line in md.splitlines() if "| logrank_p |" in line).split("|")[5].strip() == "n/a"
    with open(out / "metrics.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["metric"] == "logrank_p")
    assert row["ci_low"] == row["ci_high"] == ""
    assert drawn["time_unit"] == "months" and result["meta"]["time_unit"] == "months"
    assert "times: " in md and " months" in md
    capsys.readouterr()
    classes = tmp_path / "cls.csv"
    classes.write_text("slide_id,label,prob_a,prob_b,predicted\ns0,a,0.9,0.1,a\ns1,b,0.2,0.8,b\n")
    fail(capsys, ["evaluate", "--predictions", str(classes), "--time-unit", "days", "--out", str(tmp_path / "x")],
         "--time-unit", "classification")
    assert not (tmp_path / "x").exists()


def test_the_roc_band_is_drawn_with_the_evaluations_seed_and_recorded(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1)
    preds = tmp_path / "p.csv"
    with open(preds, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label", "prob_neg", "prob_pos", "predicted"])
        w.writerows([f"s{i}", ("neg", "pos")[t], f"{1 - q:.6f}", f"{q:.6f}", ("neg", "pos")[int(q >= 0.5)]]
                    for i, (t, q) in enumerate(zip(y, p)))
    pngs = {}
    for seed in (7, 8):
        out = tmp_path / f"e{seed}"
        assert main(["evaluate", "--predictions", str(preds), "--bootstrap", "0", "--seed", str(seed),
                     "--out", str(out)]) == 0
        band = json.loads((out / "metrics.json").read_text())["meta"]["roc_band"]
        assert band["seed"] == seed and band["n_bootstrap"] == ROC_BAND_RESAMPLES and band["level"] == "slide"
        pngs[seed] = (out / "roc.png").read_bytes()
    probs = np.stack([1 - np.round(p, 6), np.round(p, 6)], 1)
    assert pngs[7] != pngs[8]
    assert pngs[7] == plot_roc(y, probs, ["neg", "pos"], title="slide level, n = 60", threshold=0.5, seed=7)
