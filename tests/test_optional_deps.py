"""A missing optional package (OpenSlide, scikit-survival, tifffile, ...) is one line naming the install to run:
``abmil.errors.optional_import`` everywhere, exit status 2 from the command, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from abmil.errors import MissingDependency, extra_packages, optional_import

ROOT = Path(__file__).resolve().parents[1]


def _blocked(modules: list[str], code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing ``modules`` fails (``sys.modules[name] = None``)."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, timeout=300)


def _assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert "pip install 'abmil[" not in err, err  # abmil is on no package index


def test_survival_evaluate_without_scikit_survival(tmp_path):
    preds = tmp_path / "preds.csv"
    preds.write_text("slide_id,time,event,risk\n" + "".join(f"s{i},{i + 1},{i % 2},{(7 * i) % 5}\n"
                                                            for i in range(12)))
    out = tmp_path / "eval"
    proc = _blocked(["sksurv"], "from abmil.cli import main\nsys.exit(main(sys.argv[1:]))",
                    "evaluate", "--predictions", str(preds), "--bootstrap", "0", "--out", str(out))
    _assert_one_line(proc, "abmil: error: evaluating survival predictions needs sksurv, which is not installed",
                     "pip install scikit-survival", "pip install -e '.[survival]'")
    assert not out.exists()


def test_slide_image_without_openslide(monkeypatch):
    from abmil.slides.wsi import Slide

    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(MissingDependency) as e:
        Slide("any.svs")
    assert str(e.value).startswith("reading whole-slide images needs openslide, which is not installed: pip install "
                                   f"{' '.join(extra_packages('slides'))} (")


def test_svs_image_without_openslide_names_the_file(monkeypatch, tmp_path):
    from abmil.data.histology import read_rgb

    svs = tmp_path / "x.svs"
    svs.write_bytes(b"never read")
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(MissingDependency, match=r"reading .*x\.svs needs openslide.*pip install -e '\.\[slides\]'"):
        read_rgb(svs)


def test_a_package_that_fails_to_import_is_told_apart(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_abmil").mkdir()
    (tmp_path / "brokenpkg_abmil" / "__init__.py").write_text("import libmissing_abmil_c\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependency, match=r"needs brokenpkg_abmil, which cannot be imported \(No module named "
                                                r"'libmissing_abmil_c'\): pip install tifffile \("):
        optional_import("brokenpkg_abmil", "test", "testing", package="tifffile")
    assert optional_import("json", "test", "testing") is sys.modules["json"]


def test_figure_script_without_tifffile_stops_before_writing():
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "docs" / "img").glob("*.png")}
    proc = _blocked(["tifffile"], "import runpy\nsys.argv = ['make_slide_figures.py']\n"
                    f"runpy.run_path({str(ROOT / 'docs' / 'img' / 'make_slide_figures.py')!r}, run_name='__main__')")
    err = proc.stderr
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("make_slide_figures.py: error: writing the pyramidal TIFF needs tifffile, which is not "
                          "installed: pip install tifffile ("), err
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "docs" / "img").glob("*.png")} == before
