"""abmil compare: paired differences on the same cases (replayed bootstrap draws), DeLong's test, per-site rows,
refusal of runs on different cases; end to end on two real studies."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from abmil.report.compare import compare_runs
from abmil.report.delong import delong_test
from cli_helpers import abmil_process


def write_preds(path, slide_ids, case_ids, labels, p_pos, classes=("neg", "pos")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label", f"prob_{classes[0]}", f"prob_{classes[1]}", "predicted", "case_id"])
        for s, c, y, p in zip(slide_ids, case_ids, labels, p_pos):
            w.writerow([s, classes[y], f"{1 - p:.6f}", f"{p:.6f}", classes[int(p >= 0.5)], c])
    return path


def cohort(rng, n_cases=30):
    slides, cases, labels = [], [], []
    for c in range(n_cases):
        for k in range(int(rng.integers(1, 3))):
            slides.append(f"c{c}_s{k}")
            cases.append(f"c{c}")
            labels.append(c % 2)
    return slides, cases, np.array(labels)


def test_paired_bootstrap_replays_the_same_case_draws_for_both_runs(tmp_path):
    rng = np.random.default_rng(0)
    slides, cases, y = cohort(rng)
    pa = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, y.size), 0.01, 0.99).round(6)
    pb = np.clip(0.5 + 0.10 * (2 * y - 1) + rng.normal(0, 0.2, y.size), 0.01, 0.99).round(6)
    a = write_preds(tmp_path / "a.csv", slides, cases, y, pa)
    b = write_preds(tmp_path / "b.csv", slides[::-1], cases[::-1], y[::-1], pb[::-1])  # another row order
    n_boot, seed = 200, 3
    result = compare_runs([a, b], out_dir=tmp_path / "out", n_bootstrap=n_boot, seed=seed)
    row = next(r for r in result["rows"] if (r["level"], r["metric"]) == ("slide", "auc"))
    assert row["value_a"] == pytest.approx(roc_auc_score(y, pa))
    assert row["difference"] == pytest.approx(roc_auc_score(y, pb) - roc_auc_score(y, pa))
    # replay: cases drawn with default_rng(seed).integers, in first-appearance order, all slides of a drawn case
    order = list(dict.fromkeys(cases))
    rows_of = {c: [i for i, x in enumerate(cases) if x == c] for c in order}
    draws = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[order[k]] for k in draws.integers(0, len(order), len(order))])
        if np.unique(y[idx]).size == 2:
            diffs.append(roc_auc_score(y[idx], pb[idx]) - roc_auc_score(y[idx], pa[idx]))
    assert row["n_bootstrap"] == len(diffs)
    assert row["ci_low"] == pytest.approx(np.percentile(diffs, 2.5))
    assert row["ci_high"] == pytest.approx(np.percentile(diffs, 97.5))
    ref = delong_test(y, pb, pa)
    assert row["delong_p"] == pytest.approx(ref.p_value) and row["delong_z"] == pytest.approx(ref.z)
    assert {"compare.json", "compare.csv", "compare.md", "roc.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    case_row = next(r for r in result["rows"] if (r["level"], r["metric"]) == ("case", "auc"))
    assert case_row["n_bootstrap"] > 0 and not math.isnan(case_row["difference"])


def test_per_site_rows(tmp_path):
    rng = np.random.default_rng(1)
    slides, cases, y = cohort(rng, 40)
    p = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, y.size), 0.01, 0.99).round(6)
    a = write_preds(tmp_path / "a.csv", slides, cases, y, p)
    b = write_preds(tmp_path / "b.csv", slides, cases, y, np.clip(p + rng.normal(0, 0.1, y.size), 0, 1).round(6))
    site = {s: f"h{int(c[1:]) // 2 % 2}" for s, c in zip(slides, cases)}  # both classes at each site
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("slide_id,label,case_id,site\n" + "".join(
        f"{s},{('neg', 'pos')[l]},{c},{site[s]}\n" for s, c, l in zip(slides, cases, y)))
    result = compare_runs([a, b], out_dir=tmp_path / "out", manifest=manifest, by="site", n_bootstrap=100)
    groups = {r["group"] for r in result["rows"]}
    assert groups == {"all", "h0", "h1"}
    h0 = [i for i, s in enumerate(slides) if site[s] == "h0"]
    r0 = next(r for r in result["rows"] if (r["group"], r["level"], r["metric"]) == ("h0", "slide", "auc"))
    assert r0["value_a"] == pytest.approx(roc_auc_score(y[h0], p[h0]))


def test_refuses_runs_on_different_cases(tmp_path):
    rng = np.random.default_rng(2)
    slides, cases, y = cohort(rng)
    p = np.full(y.size, 0.5)
    a = write_preds(tmp_path / "a.csv", slides, cases, y, p)
    b = write_preds(tmp_path / "b.csv", slides[:-2], cases[:-2], y[:-2], p[:-2])
    refused = (((str(a), str(b)), "different slides"), ((str(a), str(a), "--bootstrap", "5"), "--bootstrap 5"))
    for args, culprit in refused:
        proc = abmil_process("compare", *args, "--out", str(tmp_path / "out"))
        err = proc.stderr
        assert proc.returncode == 2 and err.startswith("abmil: error: ") and err.count("\n") == 1, err
        assert culprit in err and not (tmp_path / "out").exists(), err
        if culprit == "different slides":
            assert slides[-1] in err  # names the slides only one run holds


def test_two_real_studies_end_to_end(tmp_path):
    from abmil.data.synthetic import write_patient_cohort

    cases_csv, _ = write_patient_cohort(tmp_path / "cohort", n_patients=12, seed=0)
    feats = str(tmp_path / "cohort" / "features")
    for pooling in ("attention", "gated"):
        proc = abmil_process("train", "--manifest", str(cases_csv), "--features", feats, "--out",
                             str(tmp_path / pooling), "--folds", "2", "--epochs", "1", "--hidden", "8",
                             "--att-dim", "8", "--pooling", pooling)
        assert proc.returncode == 0, proc.stderr
    proc = abmil_process("compare", str(tmp_path / "attention"), str(tmp_path / "gated"), "--bootstrap", "100",
                         "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["meta"]["n_cases"] == 12
    auc = next(r for r in result["rows"] if (r["level"], r["metric"]) == ("case", "auc"))
    assert auc["ci_low"] <= auc["difference"] <= auc["ci_high"]
