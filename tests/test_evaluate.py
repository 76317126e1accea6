"""``abmil evaluate``: metrics equal scikit-learn's, case-level bootstrap intervals (seeded, cases drawn whole),
thresholds (given, stored in a run, Youden's), multi-class end to end through ``python -m abmil``, and every bad
input giving one ``abmil: error:`` line naming the file / slide / column, exit 2, nothing written."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

import abmil
from abmil.cli import main
from abmil.report.evaluate import OUTPUT_FILES, evaluate_predictions, read_predictions, youden_threshold
from abmil.slides.predict import SlidePrediction, write_predictions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _abmil(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, ``python -m abmil``, in a fresh interpreter running this tree's package."""
    src = str(Path(abmil.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "abmil", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def synthetic(n: int, classes: list[str], seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) with every class present and softmax probabilities (n, k) that favour the true class."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, np.round(probs, 6)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_preds(path: Path, labels, probs, classes, *, ids=None, cases=None, label_column: bool = True) -> Path:
    """A CSV as ``abmil predict`` writes it (slide_id, label, prob_<class>..., predicted) [+ case_id]."""
    ids = ids if ids is not None else [f"S{i:03d}" for i in range(len(probs))]
    header = ["slide_id", *(["label"] if label_column else []), *[f"prob_{c}" for c in classes], "predicted"]
    header += ["case_id"] if cases is not None else []
    rows = []
    for i, p in enumerate(probs):
        row = [ids[i], *([classes[labels[i]]] if label_column else []), *[f"{v:.6f}" for v in p],
               classes[int(np.argmax(p))]]
        rows.append(row + ([cases[i]] if cases is not None else []))
    return write_csv(path, header, rows)


def rows_of(result: dict, level: str = "slide") -> dict[tuple[str, str], dict]:
    """``{(metric, class): row without its level}`` of one level."""
    return {(r["metric"], r["class"]): {k: v for k, v in r.items() if k != "level"} for r in result["metrics"]
            if r["level"] == level}


def reference_ece(correct: np.ndarray, confidence: np.ndarray, n_bins: int = 10) -> float:
    """ECE from calibration_curve's per-bin means, weighted by bin sizes counted with explicit bin edges."""
    frac, mean = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    # calibration_curve's bins: (lo, hi], the first one [0, hi]
    sizes = [int((((confidence > lo) | (lo == 0)) & (confidence <= hi)).sum()) for lo, hi in zip(edges, edges[1:])]
    sizes = [s for s in sizes if s]  # calibration_curve drops empty bins
    return float(sum(s * abs(f - m) for s, f, m in zip(sizes, frac, mean)) / len(confidence))


# ----------------------------------------------------------------------------- metrics = sklearn's
def test_binary_metrics_equal_sklearn(tmp_path):
    classes = ["normal", "tumor"]
    y, p = synthetic(80, classes, seed=1, signal=1.2)
    csv_path = write_preds(tmp_path / "preds.csv", y, p, classes)
    result = evaluate_predictions(csv_path, out_dir=tmp_path / "out", threshold=0.4, n_bootstrap=0)
    got = {k[0]: r["value"] for k, r in rows_of(result).items()}
    pos = p[:, 1]
    pred = (pos >= 0.4).astype(int)
    expected = {
        "auc": roc_auc_score(y, pos), "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred), "f1": f1_score(y, pred),
        "kappa": cohen_kappa_score(y, pred), "sensitivity": recall_score(y, pred),
        "specificity": recall_score(y, pred, pos_label=0), "brier": brier_score_loss(y, pos),
        "ece": reference_ece(y.astype(float), pos),
    }
    assert got == pytest.approx(expected, abs=1e-12)
    assert result["meta"]["positive_class"] == "tumor" and result["meta"]["threshold"] == 0.4
    assert not result["meta"]["has_cases"] and result["meta"]["n_cases"] == 80
    assert sorted(os.listdir(tmp_path / "out")) == sorted(OUTPUT_FILES)


def test_multiclass_metrics_equal_sklearn(tmp_path):
    classes = ["a", "b", "c"]
    y, p = synthetic(90, classes, seed=2)
    result = evaluate_predictions(write_preds(tmp_path / "preds.csv", y, p, classes), out_dir=tmp_path / "out",
                                  n_bootstrap=0)
    got = {k: r["value"] for k, r in rows_of(result).items()}
    p = p / p.sum(1, keepdims=True)  # evaluate undoes the CSV's 6-decimal rounding
    pred = p.argmax(1)
    expected = {("auc", ""): roc_auc_score(y, p, multi_class="ovr", average="macro"),
                ("accuracy", ""): accuracy_score(y, pred),
                ("balanced_accuracy", ""): balanced_accuracy_score(y, pred),
                ("f1", ""): f1_score(y, pred, average="macro"), ("kappa", ""): cohen_kappa_score(y, pred),
                ("brier", ""): brier_score_loss(y, p),
                ("ece", ""): reference_ece((pred == y).astype(float), p.max(1))}
    for k, c in enumerate(classes):
        expected["auc", c] = roc_auc_score(y == k, p[:, k])
        expected["sensitivity", c] = recall_score(y == k, pred == k)
        expected["specificity", c] = recall_score(y != k, pred != k)
    assert got == pytest.approx(expected, abs=1e-12)
    assert result["meta"]["threshold"] is None and "argmax" in result["meta"]["decision"]


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_holds_the_estimate(tmp_path):
    classes = ["normal", "tumor"]
    y, p = synthetic(60, classes, seed=3, signal=1.0)
    csv_path = write_preds(tmp_path / "preds.csv", y, p, classes)
    run = [evaluate_predictions(csv_path, out_dir=tmp_path / f"o{i}", n_bootstrap=120, seed=s)
           for i, s in enumerate([7, 7, 8])]
    assert run[0]["metrics"] == run[1]["metrics"]  # same seed: identical, interval for interval
    assert (tmp_path / "o0" / "metrics.csv").read_bytes() == (tmp_path / "o1" / "metrics.csv").read_bytes()
    a, c = rows_of(run[0]), rows_of(run[2])
    assert any((a[k]["ci_low"], a[k]["ci_high"]) != (c[k]["ci_low"], c[k]["ci_high"]) for k in a)
    for r in a.values():
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        assert r["n_bootstrap"] + r["n_skipped"] == 120
    assert [r["value"] for r in run[0]["metrics"]] == [r["value"] for r in run[2]["metrics"]]


def test_bootstrap_draws_cases_whole(tmp_path):
    """A case with 3 slides counts once: giving case C000 three identical slides leaves every case-level number
    (estimates and intervals) as it was with one slide, while the slide level changes."""
    classes = ["normal", "tumor"]
    y, p = synthetic(40, classes, seed=4, signal=1.0)
    cases = [f"C{i:03d}" for i in range(40)]
    one = write_preds(tmp_path / "one.csv", y, p, classes, cases=cases)
    y3, p3 = np.concatenate([y, y[:1], y[:1]]), np.concatenate([p, p[:1], p[:1]])
    three = write_preds(tmp_path / "three.csv", y3, p3, classes, cases=[*cases, cases[0], cases[0]],
                        ids=[f"S{i:03d}" for i in range(42)])
    r1 = evaluate_predictions(one, out_dir=tmp_path / "o1", n_bootstrap=60, seed=0)
    r3 = evaluate_predictions(three, out_dir=tmp_path / "o3", n_bootstrap=60, seed=0)
    assert r3["meta"]["n_slides"] == 42 and r3["meta"]["n_cases"] == 40
    assert rows_of(r1, "case") == rows_of(r3, "case")
    assert rows_of(r1, "slide") != rows_of(r3, "slide")
    assert rows_of(r1, "slide") == rows_of(r1, "case")  # one slide per case: the two levels agree


def test_case_level_is_the_mean_of_a_cases_slides(tmp_path):
    classes = ["normal", "tumor"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1, 0, 0])
    cases = ["A", "B", "B", "B", "C", "C"]  # B: mean P(tumor) 0.6, C: mean 0.475
    pred = read_predictions(write_preds(tmp_path / "p.csv", labels, probs, classes, cases=cases))
    assert pred.has_cases and pred.case_ids == cases
    result = evaluate_predictions(tmp_path / "p.csv", out_dir=tmp_path / "o", n_bootstrap=0)
    case = {k[0]: r["value"] for k, r in rows_of(result, "case").items()}
    assert case["brier"] == pytest.approx(brier_score_loss([0, 1, 0], [0.1, 0.6, 0.475]))
    assert case["accuracy"] == 1.0 and case["auc"] == 1.0
    assert "mean of each case's slide probability" in (tmp_path / "o" / "metrics.md").read_text()


def test_undefined_resamples_are_skipped_and_counted(tmp_path):
    """4 cases, 1 positive: many resamples hold no positive case; AUC skips them, accuracy does not."""
    classes = ["normal", "tumor"]
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    result = evaluate_predictions(write_preds(tmp_path / "p.csv", [0, 0, 1, 0], probs, classes),
                                  out_dir=tmp_path / "o", n_bootstrap=300, seed=1)
    rows = rows_of(result)
    assert 0 < rows["auc", ""]["n_skipped"] < 300  # P(no positive among 4 draws) = (3/4)^4 ~ 0.32
    assert rows["auc", ""]["n_bootstrap"] + rows["auc", ""]["n_skipped"] == 300
    assert rows["accuracy", ""]["n_skipped"] == 0


# ----------------------------------------------------------------------------- thresholds
def test_youden_threshold_maximises_j():
    y, p = synthetic(70, ["n", "t"], seed=5, signal=1.0)
    pos = p[:, 1]
    t = youden_threshold(y, pos)

    def j(thr: float) -> float:
        pred = pos >= thr
        return pred[y == 1].mean() - pred[y == 0].mean()

    assert t in set(pos.tolist())
    assert j(t) == pytest.approx(max(j(c) for c in np.unique(pos)))
    assert np.isnan(youden_threshold([1, 1, 1], [0.2, 0.5, 0.9]))  # J undefined with one class


@pytest.mark.parametrize("name", ["threshold.json", "run.json"])
def test_threshold_read_from_a_run(tmp_path, name):
    classes = ["normal", "tumor"]
    y, p = synthetic(50, classes, seed=6, signal=1.0)
    csv_path = write_preds(tmp_path / "p.csv", y, p, classes)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(json.dumps({"threshold": 0.3, "other": 1}))
    (run / "checkpoint.json").write_text(json.dumps({"classes": classes}))
    result = evaluate_predictions(csv_path, out_dir=tmp_path / "o", run=run, n_bootstrap=0)
    assert result["meta"]["threshold"] == 0.3 and result["meta"]["threshold_source"].endswith(name)
    given = evaluate_predictions(csv_path, out_dir=tmp_path / "o2", threshold=0.3, n_bootstrap=0)
    assert [r["value"] for r in result["metrics"]] == [r["value"] for r in given["metrics"]]


# ----------------------------------------------------------------------------- the command, end to end
def test_cli_multiclass_end_to_end(tmp_path):
    """3 classes in predict's own format (its writer; no labels in it), labels and cases from a manifest."""
    classes = ["lusc", "luad", "normal"]
    y, p = synthetic(45, classes, seed=7)
    ids = [f"TCGA-{i:03d}" for i in range(45)]
    preds = [SlidePrediction(s, q.astype(np.float32), np.zeros(3, np.float32), None) for s, q in zip(ids, p)]
    write_predictions(preds, classes, tmp_path / "preds.csv")
    seen = [int((y[:i] == k).sum()) for i, k in enumerate(y)]  # a patient's 3 slides share its label
    write_csv(tmp_path / "manifest.csv", ["slide_id", "label", "case_id"],
              [[s, classes[k], f"{classes[k]}-{n // 3}"] for s, k, n in zip(ids, y, seen)])
    out = tmp_path / "eval"
    proc = _abmil("evaluate", "--predictions", str(tmp_path / "preds.csv"), "--manifest",
                  str(tmp_path / "manifest.csv"), "--bootstrap", "50", "--seed", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "45 slides, 15 cases" in proc.stdout and "wrote" in proc.stdout
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
    for png in ("roc.png", "pr.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    result = json.loads((out / "metrics.json").read_text())
    assert result["meta"]["labels_from"] == "manifest" and result["meta"]["plot_level"] == "case"
    for level in ("slide", "case"):
        rows = rows_of(result, level)
        assert {("auc", c) for c in ["", *classes]} <= set(rows)
        assert {("sensitivity", c) for c in classes} | {("specificity", c) for c in classes} <= set(rows)
        assert rows["auc", ""]["ci_low"] <= rows["auc", ""]["value"] <= rows["auc", ""]["ci_high"]
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(result["metrics"]) and table[0]["level"] == "slide"
    assert "| slide | auc |  |" in (out / "metrics.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_writes_into_an_existing_folder(tmp_path, capsys):
    classes = ["normal", "tumor"]
    y, p = synthetic(30, classes, seed=8)
    csv_path = write_preds(tmp_path / "p.csv", y, p, classes)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text("old")
    assert main(["evaluate", "--predictions", str(csv_path), "--bootstrap", "20", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == sorted([*OUTPUT_FILES, "notes.txt"])
    assert json.loads((out / "metrics.json").read_text())["meta"]["n_slides"] == 30


# ----------------------------------------------------------------------------- bad input
BIN = ["normal", "tumor"]


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (extra argv, fragments the error line must hold); every file written under ``tmp``."""
    y, p = synthetic(12, BIN, seed=9)
    ok = write_preds(tmp / "ok.csv", y, p, BIN)
    cases: dict[str, tuple[list[str], tuple[str, ...]]] = {}
    nolabel = write_preds(tmp / "nolabel.csv", y, p, BIN, label_column=False)
    cases["no labels"] = (["--predictions", str(nolabel)], (str(nolabel), "no 'label' column", "--manifest"))
    man = write_csv(tmp / "man.csv", ["slide_id", "label"], [[f"S{i:03d}", BIN[y[i]]] for i in range(11)])
    cases["slide missing from manifest"] = (["--predictions", str(nolabel), "--manifest", str(man)],
                                            (str(man), "bag S011", "not in the manifest"))
    flipped = write_csv(tmp / "flipped.csv", ["slide_id", "label"],
                        [[f"S{i:03d}", BIN[1 - y[i]] if i == 5 else BIN[y[i]]] for i in range(12)])
    cases["labels disagree"] = (["--predictions", str(ok), "--manifest", str(flipped)],
                                ("flipped.csv", "bag S005", "'label'", "--labels-from"))
    big = p.copy()
    big[4] = [-0.2, 1.2]
    cases["prob outside [0, 1]"] = (["--predictions", str(write_preds(tmp / "big.csv", y, big, BIN))],
                                    ("big.csv", "bag S004", "prob_normal", "not in [0, 1]"))
    y3, p3 = synthetic(12, ["a", "b", "c"], seed=9)
    p3[7] = [0.5, 0.4, 0.3]
    cases["probs not summing to 1"] = (["--predictions", str(write_preds(tmp / "sum.csv", y3, p3, ["a", "b", "c"]))],
                                       ("sum.csv", "bag S007", "sum to 1.2"))
    one = write_preds(tmp / "one.csv", np.ones(12, int), p, BIN)
    cases["one class"] = (["--predictions", str(one)], ("one.csv", "'label'", "'tumor'", "AUC", "undefined"))
    garbage = tmp / "garbage.csv"
    garbage.write_bytes(b"\xff\xfe\x00\x81binary\x00\x9c")
    cases["unreadable csv"] = (["--predictions", str(garbage)], ("garbage.csv", "not a readable CSV"))
    cases["missing file"] = (["--predictions", str(tmp / "nope.csv")], ("nope.csv", "not found"))
    text = write_csv(tmp / "text.csv", ["slide_id", "label", "prob_normal", "prob_tumor"],
                     [["S1", "normal", "high", "0.2"], ["S2", "tumor", "0.1", "0.9"]])
    cases["non-numeric prob"] = (["--predictions", str(text)], ("text.csv", "bag S1", "prob_normal", "'high'"))
    unknown = write_csv(tmp / "unknown.csv", ["slide_id", "label", "prob_normal", "prob_tumor"],
                        [["S1", "normal", "0.8", "0.2"], ["S2", "Tumour", "0.1", "0.9"]])
    cases["unknown label"] = (["--predictions", str(unknown)], ("unknown.csv", "bag S2", "'Tumour'", "classes"))
    mixed = write_preds(tmp / "mixed.csv", y, p, BIN, cases=["K1", "K1"] + [f"K{i}" for i in range(2, 12)])
    mixed_ok = y[0] != y[1]
    if mixed_ok:
        cases["case with two labels"] = (["--predictions", str(mixed)], ("mixed.csv", "case 'K1'", "different labels"))
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    (run / "run.json").write_text(json.dumps({"epochs": 3}))
    cases["run without threshold"] = (["--predictions", str(ok), "--run", str(run)], (str(run), "threshold"))
    cases["multi-class threshold"] = (["--predictions", str(write_preds(tmp / "m.csv", *synthetic(12, list("abc"), 1),
                                                                           list("abc"))), "--threshold", "0.3"],
                                      ("two classes only",))
    return cases


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys):
    cases = _bad_cases(tmp_path)
    assert "case with two labels" in cases  # the seed gives the first two slides different labels
    for name, (argv, fragments) in cases.items():
        out = tmp_path / f"out-{len(name)}"
        capsys.readouterr()
        assert main(["evaluate", *argv, "--bootstrap", "10", "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("abmil: error: ") and err.count("\n") == 1, (name, err)
        for fragment in fragments:
            assert fragment in err, (name, fragment, err)
        assert not out.exists(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_through_the_real_process(tmp_path):
    cases = _bad_cases(tmp_path)
    for name in ("no labels", "probs not summing to 1"):
        argv, fragments = cases[name]
        proc = _abmil("evaluate", *argv, "--out", str(tmp_path / "out"))
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stderr.startswith("abmil: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert all(f in proc.stderr for f in fragments), (name, proc.stderr)
        assert not (tmp_path / "out").exists()


def test_a_failure_leaves_an_existing_output_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("previous")
    cases = _bad_cases(tmp_path)
    assert main(["evaluate", *cases["one class"][0], "--out", str(out)]) == 2
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "previous"
    capsys.readouterr()
    assert main(["evaluate", *cases["multi-class threshold"][0][:2], "--out", str(out / "metrics.json")]) == 2
    assert "not a folder" in capsys.readouterr().err and (out / "metrics.json").read_text() == "previous"
