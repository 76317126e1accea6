"""Site-aware studies end to end: ``abmil train --folds K --group-by site`` (each site whole in one test fold,
leave-one-site-out at K = sites, the site in oof.csv, per-site metrics in the summary), ``abmil evaluate --by site``
and ``abmil compare --by site`` on its oof.csv, and the bad inputs refused with one line and nothing written."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from abmil.cli import main
from abmil.data.synthetic import write_site_cohort
from abmil.report.bootstrap import by_values
from abmil.report.evaluate import evaluate_predictions
from cli_helpers import assert_refused, tree
from wsi_helpers import fail

SMALL = ["--epochs", "2", "--hidden", "16", "--att-dim", "8", "--lr", "1e-3"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    manifest, features = write_site_cohort(root / "cohort", n_sites=4, patients_per_site=6, sizes=(8, 16), seed=3)
    out = root / "run"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                 "--folds", "4", "--group-by", "site", *SMALL]) == 0
    return root, manifest, features, out


def test_leave_one_site_out_keeps_sites_and_cases_whole(study):
    root, manifest, _, out = study
    site = {r["slide_id"]: r["site"] for r in read_csv(manifest)}
    splits = json.loads((out / "splits.json").read_text())
    assert splits["group_by"] == "site"
    held = []
    for fold in splits["folds"]:
        test_sites = {site[s] for s in fold["test"]["slides"]}
        assert fold["test_groups"] == sorted(test_sites) and len(test_sites) == 1  # leave-one-site-out
        trained = fold["train"]["slides"] + fold["val"]["slides"]
        assert not test_sites & {site[s] for s in trained}
        assert not set(fold["test"]["cases"]) & set(fold["train"]["cases"] + fold["val"]["cases"])
        held += test_sites
    assert sorted(held) == sorted(set(site.values()))
    oof = read_csv(out / "oof.csv")
    assert len(oof) == len(site) and all(r["site"] == site[r["slide_id"]] for r in oof)


def test_summary_has_each_sites_metrics(study):
    _, manifest, _, out = study
    site = {r["slide_id"]: r["site"] for r in read_csv(manifest)}
    by = json.loads((out / "summary.json").read_text())["by_group"]
    assert by["column"] == "site" and {r["group"] for r in by["per_group"]} == set(site.values())
    aucs = []
    for row in by["per_group"]:
        preds = json.loads((out / "folds" / row["key"] / "fold.json").read_text())["predictions"]
        mine = [(label, probs[1]) for sid, label, probs in preds if site[sid] == row["group"]]
        assert row["n_test"] == len(mine) == sum(v == row["group"] for v in site.values())
        y, p = np.array(mine).T
        assert row["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        aucs.append(row["auc"])
    assert by["mean"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert "## By site" in (out / "summary.md").read_text()


def test_evaluate_by_site_equals_evaluating_each_site_alone(study, tmp_path):
    _, _, _, out = study
    result = evaluate_predictions(out / "oof.csv", out_dir=tmp_path / "by", by="site", n_bootstrap=20, seed=1)
    rows = read_csv(out / "oof.csv")
    assert (tmp_path / "by" / "metrics.csv").read_text().startswith("group,level,")
    assert {r["group"] for r in result["metrics"]} == {"all", *{r["site"] for r in rows}}
    g = rows[-1]["site"]
    alone = tmp_path / f"{g}.csv"
    with open(alone, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["site"] == g)
    ref = evaluate_predictions(alone, out_dir=tmp_path / g, n_bootstrap=20, seed=1)["metrics"]
    assert [{k: v for k, v in r.items() if k != "group"} for r in result["metrics"] if r["group"] == g] == ref
    # compare's --by reads the column where evaluate's does: the study's oof.csv (no manifest needed)
    ids = [r["slide_id"] for r in rows]
    assert by_values("site", ids, out / "oof.csv", None) == [r["site"] for r in rows]


def test_bad_site_inputs_are_refused_with_nothing_written(study, tmp_path, capsys):
    _, manifest, features, _ = study
    ws = tmp_path
    lines = manifest.read_text().splitlines()

    def variant(name: str, edit) -> None:
        (ws / name).write_text("\n".join([lines[0], *[edit(line) for line in lines[1:]]]) + "\n")

    variant("one_site.csv", lambda line: line.rsplit(",", 1)[0] + ",siteA")
    second = next(r for r in read_csv(manifest) if r["slide_id"].endswith("_s1"))  # a case of two slides
    variant("split_case.csv", lambda line: line + "x" if line.startswith(second["slide_id"] + ",") else line)
    base = ["train", "--features", str(features), "--out", "{ws}/out", *SMALL]
    # through the real entry point once, the rest in-process (each a fresh interpreter would cost seconds)
    assert_refused(ws, [*base, "--manifest", "{ws}/one_site.csv", "--folds", "2", "--group-by", "site"],
                   "--group-by site: every slide has site 'siteA'")

    def refused(argv: list[str], culprit: str) -> None:
        before = tree(ws)
        fail(capsys, [a.format(ws=ws) for a in argv], culprit)
        assert tree(ws) == before

    refused([*base, "--manifest", str(manifest), "--folds", "5", "--group-by", "site"],
            "--folds 5 is more than the 4 values of --group-by site")
    refused([*base, "--manifest", str(manifest), "--folds", "2", "--group-by", "hospital"],
            f"file {manifest}: --group-by hospital: no column 'hospital'")
    refused([*base, "--manifest", "{ws}/split_case.csv", "--folds", "2", "--group-by", "site"],
            f"case {second['case_id']!r} has slides in two sites")
    refused([*base, "--manifest", str(manifest), "--group-by", "site"], "--group-by site")


def test_evaluate_by_for_an_outcome_task_equals_each_value_alone(tmp_path):
    """Regression predictions (the outcome tasks' shared writer): --by from a manifest, rows per value."""
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(30)]
    target = rng.normal(10, 3, 30)
    pred = target + rng.normal(0, 2, 30)
    site = [("a", "b", "c")[i % 3] for i in range(30)]
    preds = tmp_path / "preds.csv"
    preds.write_text("slide_id,target,predicted\n" + "".join(f"{s},{t:.4f},{p:.4f}\n" for s, t, p in
                                                             zip(ids, target, pred)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,target,site\n" + "".join(f"{s},{t:.4f},{g}\n" for s, t, g in zip(ids, target, site)))
    result = evaluate_predictions(preds, out_dir=tmp_path / "by", manifest=manifest, by="site", n_bootstrap=20, seed=2)
    alone = tmp_path / "b.csv"
    alone.write_text("slide_id,target,predicted\n" + "".join(
        f"{s},{t:.4f},{p:.4f}\n" for s, t, p, g in zip(ids, target, pred, site) if g == "b"))
    ref = evaluate_predictions(alone, out_dir=tmp_path / "alone", n_bootstrap=20, seed=2)["metrics"]
    assert [{k: v for k, v in r.items() if k != "group"} for r in result["metrics"] if r["group"] == "b"] == ref
    assert "| site | level |" in (tmp_path / "by" / "metrics.md").read_text()
