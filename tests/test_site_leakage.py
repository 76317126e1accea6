"""Why a multi-site study must hold sites out: on a planted cohort whose sites carry a feature offset (a staining
signature) and differ in prevalence, case-level folds that mix sites let the model score by recognising the site,
and report a higher pooled AUC than site-preserved folds (``group_by="site"``), which test every site unseen."""
from __future__ import annotations

import json

from sklearn.metrics import roc_auc_score

from abmil.data.synthetic import write_site_cohort
from abmil.report.class_evaluate import read_predictions
from abmil.slides.features import FeatureBagDataset
from abmil.slides.study import cross_validate
from abmil.slides.train import WSIConfig


def _pooled_auc(out) -> float:
    """The out-of-fold AUC over every slide, as `abmil evaluate` reports it (scikit-learn's)."""
    p = read_predictions(out / "oof.csv")
    return float(roc_auc_score(p.labels, p.probs[:, 1]))


def test_mixing_sites_reports_a_higher_auc_than_holding_them_out(tmp_path):
    manifest, features = write_site_cohort(tmp_path / "cohort", n_sites=4, patients_per_site=6, sizes=(8, 16),
                                           seed=0)
    config = WSIConfig(hidden=32, att_dim=16, epochs=6, lr=1e-3, seed=0)
    dataset = FeatureBagDataset(manifest, features)
    cross_validate(dataset, tmp_path / "mixed", config, folds=4)
    cross_validate(dataset, tmp_path / "sites", config, folds=4, group_by="site")
    mixed, held_out = _pooled_auc(tmp_path / "mixed"), _pooled_auc(tmp_path / "sites")
    assert mixed > 0.7, mixed
    assert mixed - held_out > 0.1, (mixed, held_out)

    # The difference is the split: mixed folds test sites they trained on, site-preserved folds never do.
    site = {r.split(",")[0]: r.split(",")[3] for r in manifest.read_text().splitlines()[1:]}

    def seen_test_sites(run) -> int:
        folds = json.loads((run / "splits.json").read_text())["folds"]
        return sum(len({site[s] for s in f["test"]["slides"]} & {site[s] for s in f["train"]["slides"]})
                   for f in folds)

    assert seen_test_sites(tmp_path / "mixed") > 0 and seen_test_sites(tmp_path / "sites") == 0
