"""The slides-to-heatmaps tutorial's pseudo-slides (docs/tutorials/make_pseudo_slides.py): TIFFs OpenSlide opens at
the stated µm/px, level 0 the shipped image's window, a planted lesion where lesions.csv says and nowhere else."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "make_pseudo_slides.py"


def test_pseudo_slides_open_in_openslide_with_their_lesions(tmp_path):
    openslide = pytest.importorskip("openslide")
    pytest.importorskip("tifffile")
    spec = importlib.util.spec_from_file_location("make_pseudo_slides", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--n", "2", "--size", "300", "--seed", "3"])
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert [(r["slide_id"], r["label"]) for r in rows] == [("pseudo00", "clear"), ("pseudo01", "lesion")]
    (lesion,) = csv.DictReader(open(tmp_path / "lesions.csv"))
    assert lesion["slide_id"] == "pseudo01"
    x, y, r = (int(lesion[k]) for k in ("x", "y", "radius"))
    for row in rows:
        with openslide.OpenSlide(tmp_path / f"{row['slide_id']}.tif") as slide:
            assert slide.dimensions == (300, 300) and slide.level_count == 3
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(script.MPP)
            pixels = np.asarray(slide.read_region((0, 0), 0, (300, 300)).convert("RGB"))
        if row["label"] == "lesion":  # darker inside the disc than the same window's rim outside it
            yy, xx = np.mgrid[:300, :300]
            inside = (xx - x) ** 2 + (yy - y) ** 2 <= (r - 2) ** 2
            assert pixels[inside].mean() < 0.8 * pixels[~inside].mean()
