"""Why a study must split by patient: on a cohort whose labels are drawn per patient and carried by nothing in the
slides but the patient's own signature, splitting slides (a patient's slides on both sides) scores well above chance,
wrongly; splitting cases (abmil's splitter with the manifest's case_id) stays near chance, rightly."""
from __future__ import annotations

import json

import pytest

from abmil.data.synthetic import write_patient_cohort
from abmil.slides.features import FeatureBagDataset
from abmil.slides.study import cross_validate
from abmil.slides.train import WSIConfig


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_patient_cohort(tmp_path_factory.mktemp("cohort"), n_patients=30, seed=1)


def _study(manifest, out) -> float:
    """Mean test AUC over the folds of a 5-fold study of a small slide model."""
    config = WSIConfig(hidden=32, att_dim=16, epochs=12, lr=1e-3, seed=0)
    summary = cross_validate(FeatureBagDataset(manifest, manifest.parent / "features"), out, config, folds=5)
    return float(summary["mean"]["auc"]["mean"])


def test_a_slide_level_split_leaks_and_the_case_level_split_does_not(cohort, tmp_path):
    cases, slides = cohort
    leaky_auc = _study(slides, tmp_path / "slide-split")
    honest_auc = _study(cases, tmp_path / "case-split")
    assert leaky_auc > 0.75, leaky_auc       # the model recognises patients it trained on
    assert honest_auc < 0.65, honest_auc     # nothing predicts an unseen patient's label
    assert leaky_auc - honest_auc > 0.2
    # The leak is the split: in the slide-split study patients straddle train and test folds.
    split = json.loads((tmp_path / "slide-split" / "splits.json").read_text())
    honest = json.loads((tmp_path / "case-split" / "splits.json").read_text())

    def straddling(doc) -> int:
        patient = lambda s: s.rsplit("_s", 1)[0]  # noqa: E731
        n = 0
        for fold in doc["folds"]:
            test = {patient(s) for s in fold["test"]["slides"]}
            train = {patient(s) for s in fold["train"]["slides"] + fold["val"]["slides"]}
            n += len(test & train)
        return n

    assert straddling(split) > 0 and straddling(honest) == 0
