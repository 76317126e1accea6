"""Synthetic slide cohorts written as a study's real inputs (CLAM-style HDF5 files and a manifest), for tests and
demonstrations where the truth is known: :func:`write_patient_cohort` (patient-level leakage),
:func:`write_outcome_cohort` (survival or regression outcomes carried by a few key patches),
:func:`write_key_patch_cohort` (a classification cohort whose positive slides carry a few key patches: localisation
has a truth), :func:`write_multilabel_cohort` (several 0/1 targets, each carried by its own key patches),
:func:`write_multitarget_cohort` (a class, a survival outcome and a grade, each carried by its own key patches) and
:func:`write_site_cohort` (sites whose slides differ by a feature offset and whose prevalence differs: site leakage).

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


def write_outcome_cohort(root: str | os.PathLike, task: str, n_slides: int = 60, *, seed: int = 0,
                         sizes: tuple[int, int] = (20, 40), dim: int = 16,
                         censor_scale: float = 1.0) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A synthetic survival or regression cohort with a planted truth: each slide has a grade ``g ~ U(0, 3)`` carried
    by its *key* instances only (``max(2, n // 8)`` of them, feature 1 shifted by ``2 + 2 g``; the rest noise).
    Survival: hazard ``0.05 exp(1.5 g)``, exponential event times, independent exponential censoring (about 40% censored
    at ``censor_scale`` 1); columns ``time, event``. Regression: ``target = 10 + 5 g + N(0, 0.5)``. Returns (manifest,
    features_dir, {slide_id: key instance rows})."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    header = "slide_id,time,event" if task == "survival" else "slide_id,target"
    lines, keys = [header], {}
    for i in range(n_slides):
        n = int(rng.integers(*sizes))
        g = rng.uniform(0.0, 3.0)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        hot = rng.choice(n, size=max(2, n // 8), replace=False)
        x[hot, 1] += 2.0 + 2.0 * g
        sid = f"c{i:03d}"
        keys[sid] = np.sort(hot)
        _write_bag(features, sid, x)
        if task == "survival":
            t = rng.exponential(1.0 / (0.05 * np.exp(1.5 * g)))
            c = rng.exponential(censor_scale * 3.3)
            lines.append(f"{sid},{min(t, c):.4f},{int(t <= c)}")
        else:
            lines.append(f"{sid},{10.0 + 5.0 * g + rng.normal(0, 0.5):.4f}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, features, keys


def write_key_patch_cohort(root: str | os.PathLike, n_patients: int = 60, *, seed: int = 0,
                           slides_per_patient: tuple[int, int] = (1, 2), sizes: tuple[int, int] = (20, 60),
                           n_key: tuple[int, int] = (2, 4), shift: float = 3.0,
                           dim: int = 16) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A planted-truth classification cohort: patients alternate ``neg`` / ``pos``, each with ``slides_per_patient``
    (inclusive) slides of ``sizes`` (half-open) patches of ``N(0, I)`` features in ``dim`` dimensions; every slide of
    a positive patient carries ``n_key`` (inclusive) *key* patches whose features 0 and 1 are shifted by ``shift``
    (the rest noise), negative slides none. So an embedding's max sees the key patches clearly while the mean sees a
    few of them diluted among many, and a pooling's instance scores can be scored against the key rows.

    Writes ``root/features/<slide_id>.h5`` (``features``, ``coords`` on a grid of 256-px patches, 8 to a row) and
    ``root/manifest.csv`` (``slide_id, label, case_id``). Returns (manifest, features_dir, {slide_id: key rows},
    empty for negative slides)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    rows, keys = [("slide_id", "label", "case_id")], {}
    for p in range(n_patients):
        case_id, positive = f"patient{p:03d}", p % 2 == 1
        for s in range(int(rng.integers(slides_per_patient[0], slides_per_patient[1] + 1))):
            n = int(rng.integers(*sizes))
            x = rng.standard_normal((n, dim)).astype(np.float32)
            hot = (rng.choice(n, size=int(rng.integers(n_key[0], n_key[1] + 1)), replace=False) if positive
                   else np.array([], dtype=np.int64))
            x[hot, :2] += shift
            sid = f"{case_id}_s{s}"
            keys[sid] = np.sort(hot)
            k = np.arange(n)
            coords = np.stack([(k % 8) * 256, (k // 8) * 256], 1).astype(np.int64)
            with h5py.File(features / f"{sid}.h5", "w") as f:
                f.create_dataset("features", data=x)
                f.create_dataset("coords", data=coords)
            rows.append((sid, ("neg", "pos")[positive], case_id))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return manifest, features, keys


def write_multilabel_cohort(root: str | os.PathLike, targets: tuple[str, ...] = ("A", "B", "C"), n_slides: int = 60,
                            *, seed: int = 0, sizes: tuple[int, int] = (16, 32), dim: int = 8, shift: float = 3.0
                            ) -> tuple[Path, Path, dict[str, dict[str, np.ndarray]]]:
    """A synthetic multilabel cohort with a planted truth per target: each target ``t`` (the k-th) is an independent
    fair coin per slide, and a slide positive for ``t`` has its own *key* patches for it (``max(2, n // 8)`` of them,
    disjoint from the other targets' keys) whose feature ``k + 1`` is shifted by ``shift``; every other value is
    N(0, 1) noise (``dim`` > len(targets)). A target is then learnable from its key patches only. Writes
    ``root/features/<slide_id>.h5`` (``features``, ``coords``: a grid of 256-px patches, 8 to a row) and
    ``root/manifest.csv`` (``slide_id, <target>...``, 0/1). Returns (manifest, features_dir,
    ``{target: {slide_id: key rows}}``, the key rows of the slides positive for the target)."""
    if dim <= len(targets):
        raise ValueError(f"dim must exceed the number of targets ({len(targets)}), got {dim}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    lines, keys = [",".join(("slide_id", *targets))], {t: {} for t in targets}
    for i in range(n_slides):
        n = int(rng.integers(*sizes))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        y = rng.integers(0, 2, len(targets))
        per = max(2, n // 8)
        order = rng.permutation(n)
        sid = f"m{i:03d}"
        for k, t in enumerate(targets):
            if y[k]:
                hot = np.sort(order[k * per:(k + 1) * per])
                x[hot, k + 1] += shift
                keys[t][sid] = hot
        _write_bag(features, sid, x)
        lines.append(",".join((sid, *[str(int(v)) for v in y])))
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, features, keys


def write_multitarget_cohort(root: str | os.PathLike, n_slides: int = 60, *, seed: int = 0,
                             sizes: tuple[int, int] = (16, 32), dim: int = 8, shift: float = 4.0
                             ) -> tuple[Path, Path, dict[str, dict[str, np.ndarray]]]:
    """A synthetic cohort for a multitarget run (``--targets label,os:survival,grade:regression``) with a planted
    truth per head, each carried by its own key patches (``max(2, n // 8)`` of them, disjoint between heads): the
    class (``label``, ``tumor`` or ``normal``, a fair coin) by feature 1 shifted by ``shift`` in a tumour slide's keys;
    the survival outcome (``os_time``, ``os_event``) by a high-risk coin ``z`` whose keys have feature 2 shifted
    (hazard ``0.05 exp(3 z)``, exponential times, exponential censoring of mean 30); the grade (``1 + 2 g + N(0,
    0.3)``, ``g`` a coin) by feature 3 shifted in a high grade's keys. Returns (manifest, features_dir,
    ``{"label" | "os" | "grade": {slide_id: key rows}}``, the key rows of the slides positive for each)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    lines, keys = ["slide_id,label,os_time,os_event,grade"], {"label": {}, "os": {}, "grade": {}}
    for i in range(n_slides):
        n = int(rng.integers(*sizes))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        tumour, high, g = (int(v) for v in rng.integers(0, 2, 3))
        per, order, sid = max(2, n // 8), rng.permutation(n), f"t{i:03d}"
        for k, (head, on) in enumerate((("label", tumour), ("os", high), ("grade", g))):
            if on:
                hot = np.sort(order[k * per:(k + 1) * per])
                x[hot, k + 1] += shift
                keys[head][sid] = hot
        t, c = rng.exponential(1.0 / (0.05 * np.exp(3.0 * high))), rng.exponential(30.0)
        grade = 1.0 + 2.0 * g + rng.normal(0, 0.3)
        _write_bag(features, sid, x)
        lines.append(f"{sid},{'tumor' if tumour else 'normal'},{min(t, c):.4f},{int(t <= c)},{grade:.4f}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, features, keys


def write_site_cohort(root: str | os.PathLike, *, n_sites: int = 4, patients_per_site: int = 12,
                      prevalence: tuple[float, float] = (0.2, 0.8), site_shift: float = 2.0, shift: float = 3.0,
                      n_key: tuple[int, int] = (2, 4), sizes: tuple[int, int] = (16, 32), dim: int = 8,
                      seed: int = 0) -> tuple[Path, Path]:
    """A planted cohort of several sites (hospitals) whose slides carry the site and whose prevalence differs, so
    that a model can score by recognising the site: the site leakage that site-preserved folds remove.

    Site ``s`` has ``patients_per_site`` patients, ``round(p_s * n)`` of them ``pos`` with ``p_s`` alternating
    between ``prevalence[0]`` (even sites) and ``prevalence[1]`` (odd sites); every patch of its slides is offset by
    ``site_shift`` along the site's own random unit direction (a staining or scanner signature: the directions are
    independent of the labels, so an unseen site's offset says nothing about its slides). Each patient has one or two
    slides of ``sizes`` (half-open) patches of ``N(0, I)`` features in ``dim`` dimensions; a positive patient's
    slides carry ``n_key`` (inclusive) key patches with features 0 and 1 shifted by ``shift``: the real, weaker
    signal that does carry over to a new site.

    Writes ``root/features/<slide_id>.h5`` (``features``, ``coords``) and ``root/manifest.csv`` (``slide_id, label,
    case_id, site``). Returns (manifest, features_dir)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    rows = [("slide_id", "label", "case_id", "site")]
    for s in range(n_sites):
        site = f"site{s}"
        direction = rng.normal(size=dim)
        offset = site_shift * direction / np.linalg.norm(direction)
        n_pos = int(round(prevalence[s % 2] * patients_per_site))
        positive = rng.permutation(np.arange(patients_per_site) < n_pos)
        for p in range(patients_per_site):
            case_id = f"{site}_p{p:02d}"
            for k in range(int(rng.integers(1, 3))):
                n = int(rng.integers(*sizes))
                x = rng.standard_normal((n, dim)) + offset
                if positive[p]:
                    x[rng.choice(n, size=int(rng.integers(n_key[0], n_key[1] + 1)), replace=False), :2] += shift
                sid = f"{case_id}_s{k}"
                _write_bag(features, sid, x.astype(np.float32))
                rows.append((sid, ("neg", "pos")[bool(positive[p])], case_id, site))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return manifest, features


def _write_bag(features: Path, slide_id: str, x: np.ndarray) -> None:
    """``features/<slide_id>.h5`` as CLAM writes it: ``features`` and ``coords``, a row-major grid of 256-px
    patches, 8 to a row."""
    k = np.arange(x.shape[0])
    coords = np.stack([(k % 8) * 256, (k // 8) * 256], 1).astype(np.int64)
    with h5py.File(features / f"{slide_id}.h5", "w") as f:
        f.create_dataset("features", data=x)
        f.create_dataset("coords", data=coords)
