"""Synthetic slide cohorts written as a study's real inputs (CLAM-style HDF5 files and a manifest), for tests and
demonstrations where the truth is known.

:func:`write_patient_cohort` makes the case that shows why splits must keep a patient's slides together: every slide
of a patient shares that patient's *signature* (a random feature vector plus noise) and the label is drawn per patient,
independent of the features. Nothing in a slide predicts the label of an unseen patient, so an honest AUC is 0.5; a
split that puts one slide of a patient in training and another in test lets the model recognise the patient and
"predict" the label.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import numpy as np


def write_patient_cohort(out: str | os.PathLike, *, n_patients: int = 40, slides_per_patient: tuple[int, int] = (2, 4),
                         instances: tuple[int, int] = (20, 40), dim: int = 16, noise: float = 0.5,
                         seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/features/<slide_id>.h5`` and two manifests of the same slides: ``out/cases.csv`` (``slide_id, label,
    case_id``: the patients) and ``out/slides.csv`` (``slide_id, label``: every slide its own case).

    Patients alternate between the labels ``neg`` and ``pos``; each has ``slides_per_patient`` (inclusive range)
    slides of ``instances`` (inclusive range) instances, each instance ``signature + noise * N(0, I)`` in ``dim``
    dimensions. Returns (cases manifest, slides manifest)."""
    out = Path(out)
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        case_id, label = f"patient{p:03d}", ("neg", "pos")[p % 2]
        signature = rng.normal(size=dim)
        for s in range(int(rng.integers(slides_per_patient[0], slides_per_patient[1] + 1))):
            n = int(rng.integers(instances[0], instances[1] + 1))
            slide_id = f"{case_id}_s{s}"
            with h5py.File(features / f"{slide_id}.h5", "w") as f:
                f.create_dataset("features", data=(signature + noise * rng.normal(size=(n, dim))).astype(np.float32))
            rows.append((slide_id, label, case_id))
    cases, slides = out / "cases.csv", out / "slides.csv"
    with open(cases, "w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "label", "case_id"), *rows])
    with open(slides, "w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "label"), *(r[:2] for r in rows)])
    return cases, slides
