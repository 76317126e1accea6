"""``abmil heatmap`` on a real slide: a pyramidal TIFF of the shipped H&E image, opened by OpenSlide itself.

The run's attention is planted (the model's weights set so that one patch takes the attention), and the tests check
where it lands in the PNG at every pyramid level, that the top-k tiles are the slide's pixels, that the GeoJSON is
valid GeoJSON (the official schema, vendored in tests/data) and round-trips, manifests (resume), and bad input."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from abmil.cli import main
from abmil.explain.geojson import read_patch_geojson
from abmil.explain.heatmap import colourise, panel_layout, patch_boxes, rasterise, rasterise_loop
from abmil.slides.heatmap import HeatmapOptions, render_slide
from abmil.slides.predict import load_run
from abmil.slides.wsi import Slide, patch_geometry, tissue_mask
from slide_image_helpers import CROP, write_pyramidal_tiff
from wsi_helpers import DIM, fail, make_dataset

openslide = pytest.importorskip("openslide", reason="the slide tests need the 'slides' extra (openslide-python, "
                                                    "openslide-bin)")

P0 = 64  # patch side at level 0; cut at level 1 as 32-pixel patches (CLAM attributes patch_size 32, patch_level 1)
HOT = (640, 320)
TRAIN = ["--epochs", "1", "--hidden", str(DIM), "--att-dim", "8", "--chunk-size", "64"]


def grid_coords() -> np.ndarray:
    cols, rows = -(-CROP[0] // P0), CROP[1] // P0  # the last column runs past the slide's edge, as CLAM's may
    xs, ys = np.meshgrid(np.arange(cols) * P0, np.arange(rows) * P0)
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


def write_features(path: Path, coords: np.ndarray, hot: tuple[int, int] = HOT, attrs: dict | None = None) -> int:
    """CLAM-style .h5: zero features but feature 0 = 3 at the hot patch; returns the hot row."""
    x = np.zeros((len(coords), DIM), np.float32)
    k = int(np.flatnonzero((coords[:, 0] == hot[0]) & (coords[:, 1] == hot[1]))[0])
    x[k, 0] = 3.0
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x, chunks=(1, DIM), maxshape=(None, DIM))
        d = f.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
        for key, value in (attrs if attrs is not None else {"patch_size": 32, "patch_level": 1}).items():
            d.attrs[key] = value
    return k


def plant(run) -> None:
    """Attention logit = 10 tanh(x_0): h = relu(x) (identity encoder), V picks h_0, the gate is 1/2, w = 20."""
    with torch.no_grad():
        first = next(m for m in run.model.encoder.modules() if isinstance(m, torch.nn.Linear))
        first.weight.copy_(torch.eye(DIM))
        first.bias.zero_()
        pool = run.model.pool
        for layer in (pool.V, pool.U, pool.w):
            if layer is not None:
                layer.weight.zero_()
                layer.bias.zero_()
        pool.V.weight[0, 0] = 1.0
        pool.w.weight[0, 0] = 20.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two trained runs (2 and 3 classes, DIM-wide hidden layer), the slide TIFF and its features."""
    root = tmp_path_factory.mktemp("slides")
    for name, classes in (("run2", ("normal", "tumor")), ("run3", ("a", "b", "c"))):
        manifest, feats = make_dataset(root / name, 6, classes=classes)
        assert main(["train", "--manifest", str(manifest), "--features", str(feats), "--out", str(root / name / "run"),
                     *TRAIN]) == 0
    (root / "slides").mkdir()
    (root / "features").mkdir()
    levels = write_pyramidal_tiff(root / "slides" / "s1.tif")
    coords = grid_coords()
    hot = write_features(root / "features" / "s1.h5", coords)
    return root, levels, coords, hot


def planted_run(root: Path, name: str = "run2"):
    run = load_run(root / name / "run")
    plant(run)
    return run


# ----------------------------------------------------------------------------------------------- OpenSlide
def test_openslide_reads_the_pyramid_and_overviews_are_its_levels(world):
    root, levels, *_ = world
    with Slide(root / "slides" / "s1.tif") as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((1104, 1472), (552, 736), (276, 368))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        for level, pixels in enumerate(levels):
            image, downsample = slide.overview(max(pixels.shape[:2]))
            assert downsample == 2.0 ** level and np.array_equal(image, pixels)  # read from that level, unchanged
            np.testing.assert_array_equal(slide.read_region(256, 128, level, 20, 10),
                                          pixels[128 >> level:(128 >> level) + 10, 256 >> level:(256 >> level) + 20])
        assert slide.level_for_downsample(3.0) == 1 and slide.level_for_downsample(0.5) == 0
        image, downsample = slide.overview(500)  # between levels: level 1, shrunk
        assert image.shape == (500, 375, 3) and downsample == pytest.approx(1104 / 375)
        edge = slide.read_region(1088, 0, 0, 32, 8)  # past the right edge: white
        assert (edge[:, 16:] == 255).all() and np.array_equal(edge[:, :16], levels[0][:8, 1088:])


def test_patch_geometry_from_clam_and_trident_attributes(world):
    root, _, coords, _ = world
    with Slide(root / "slides" / "s1.tif") as slide:
        clam = patch_geometry({"patch_size": 32, "patch_level": 1, "downsample": [2.0, 2.0]}, coords, slide)
        assert (clam.size0, clam.level, clam.read_size) == (64, 1, 32)
        trident = patch_geometry({"patch_size": 16, "patch_size_level0": 64}, coords, slide)
        assert (trident.size0, trident.level, trident.read_size) == (64, 2, 16)  # read at level 2, 64 / 4
        inferred = patch_geometry({}, coords, slide)
        assert (inferred.size0, inferred.level, inferred.read_size) == (64, 0, 64)
        assert patch_geometry({}, coords, slide, patch_size=128).size0 == 128
    no_slide = patch_geometry({"patch_size": 32, "patch_level": 1, "downsample": np.array([2.0, 2.0])}, coords)
    assert no_slide.size0 == 64
    assert patch_geometry({}, coords[:1]) is None


def test_rasterise_vectorised_equals_the_loop():
    rng = np.random.default_rng(0)
    for _ in range(10):
        coords = rng.integers(-300, 3000, (300, 2))
        values, size, down = rng.random(300), int(rng.integers(40, 400)), float(rng.uniform(3, 40))
        a = rasterise(values, coords, size, (70, 90), down)
        b = rasterise_loop(values, coords, size, (70, 90), down)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=1e-12)


# ----------------------------------------------------------------------------------------------- heatmaps
@pytest.mark.parametrize("max_size", [1472, 736, 368, 500])
def test_hot_patch_lands_on_its_pixels_at_every_level(world, tmp_path, max_size):
    root, levels, coords, hot = world
    run = planted_run(root)
    out = tmp_path / "s1.png"
    options = HeatmapOptions(max_size=max_size, normalise="minmax", alpha=1.0)
    render_slide(run, root / "features" / "s1.h5", out, wsi=root / "slides" / "s1.tif", options=options)
    png = np.asarray(Image.open(out).convert("RGB"))
    with Slide(root / "slides" / "s1.tif") as slide:
        image, down = slide.overview(max_size)
    layout = panel_layout(1, image.shape[:2])
    assert png.shape[:2] == (layout.height, layout.width)
    panel = png[layout.top:layout.top + image.shape[0], layout.lefts[0]:layout.lefts[0] + image.shape[1]]
    cmap = HeatmapOptions().cmap
    red = colourise(np.ones((1, 1)), None, alpha=1.0, cmap=cmap)[0, 0]  # the map's top: the planted patch (min-max: 1)
    blue = colourise(np.zeros((1, 1)), None, alpha=1.0, cmap=cmap)[0, 0]  # its bottom: every other patch
    x0, x1, y0, y1 = (int(v[0]) for v in patch_boxes(coords[hot:hot + 1], P0, image.shape[:2], down))
    assert (x0, y0) == (int(HOT[0] // down), int(HOT[1] // down))
    expected = np.zeros(image.shape[:2], bool)
    expected[y0:y1, x0:x1] = True
    is_red = (panel == red).all(axis=2)
    # the hot square is red and nothing else is, up to the one-pixel rim a neighbour shares when
    # the patch edge falls inside a pixel (that pixel shows the mean of the two)
    assert is_red[expected].mean() > 0.8 and is_red[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all()
    assert not is_red[~expected].any()
    assert (panel[~expected] == blue).all(axis=1).mean() > 0.95
    if down in (1.0, 2.0, 4.0):  # a whole level: the square's pixels are exactly the patch's
        assert (x1 - x0, y1 - y0) == (P0 / down, P0 / down) and is_red[expected].all()


def test_hot_patch_rows_follow_the_overviews_own_y_scale(world, tmp_path):
    # at 166 px the overview is 124 x 166: 8.903 level-0 pixels per pixel along x, 8.867 along y
    root, levels, coords, hot = world
    out = tmp_path / "s1.png"
    render_slide(planted_run(root), root / "features" / "s1.h5", out, wsi=root / "slides" / "s1.tif",
                 options=HeatmapOptions(max_size=166, normalise="minmax", alpha=1.0))
    png = np.asarray(Image.open(out).convert("RGB"))
    with Slide(root / "slides" / "s1.tif") as slide:
        image, down = slide.overview(166)
        scale = (slide.dimensions[0] / image.shape[1], slide.dimensions[1] / image.shape[0])
    assert scale[0] == down != scale[1]
    layout = panel_layout(1, image.shape[:2])
    panel = png[layout.top:layout.top + image.shape[0], layout.lefts[0]:layout.lefts[0] + image.shape[1]]
    red = colourise(np.ones((1, 1)), None, alpha=1.0, cmap=HeatmapOptions().cmap)[0, 0]
    painted = np.flatnonzero((panel == red).all(axis=2).any(axis=1))
    one_hot = np.zeros(len(coords))
    one_hot[hot] = 1.0

    def red_rows(downsample):
        return np.flatnonzero((rasterise(one_hot, coords, P0, image.shape[:2], downsample) == 1.0).any(axis=1))

    assert not np.array_equal(red_rows(down), red_rows(scale))  # the two scales paint the patch on other rows
    assert np.array_equal(painted, red_rows(scale))


def test_overlay_keeps_the_slide_and_side_by_side_shows_it(world, tmp_path):
    root, levels, *_ = world
    run = planted_run(root)
    out = tmp_path / "side.png"
    render_slide(run, root / "features" / "s1.h5", out, wsi=root / "slides" / "s1.tif",
                 options=HeatmapOptions(max_size=368, layout="side-by-side"))
    png = np.asarray(Image.open(out).convert("RGB"))
    layout = panel_layout(2, (368, 276))
    assert png.shape[:2] == (layout.height, layout.width)
    slide_panel = png[layout.top:layout.top + 368, layout.lefts[0]:layout.lefts[0] + 276]
    assert np.array_equal(slide_panel, levels[2])  # the slide itself, pixel for pixel
    out2 = tmp_path / "tissue.png"
    render_slide(run, root / "features" / "s1.h5", out2, wsi=root / "slides" / "s1.tif",
                 options=HeatmapOptions(max_size=368, tissue=True))
    panel = np.asarray(Image.open(out2).convert("RGB"))[layout.top:layout.top + 368, :276]
    mask = tissue_mask(levels[2])
    assert 0.2 < mask.mean() < 0.8  # the section, not the glass
    assert ((panel == (0, 160, 0)).all(axis=2)).sum() > 100  # its outline is drawn


def test_multiclass_maps_are_shares_of_the_logits(world, tmp_path):
    from abmil.slides.feature_files import FeatureFile
    from abmil.slides.heatmap import class_contributions
    from abmil.slides.predict import predict_file

    root, *_ = world
    run = load_run(root / "run3" / "run")
    file = FeatureFile(root / "run3" / "features" / "s00.h5", "s00")
    pred = predict_file(run, file)
    shares = class_contributions(run, file, pred.attention)
    with torch.no_grad():
        x = torch.from_numpy(file.read()[0].numpy()).float()
        logits = run.model(x).logits[0].double().numpy()
    bias = run.model.classifier.bias.detach().double().numpy()
    np.testing.assert_allclose(shares.sum(0) + bias, logits, rtol=1e-4, atol=1e-5)
    out = tmp_path / "mc.png"
    summary = render_slide(planted_run(root, "run3"), root / "features" / "s1.h5", out,
                           wsi=root / "slides" / "s1.tif", options=HeatmapOptions(max_size=368))
    layout = panel_layout(4, (368, 276))  # attention + one map per class
    assert Image.open(out).size == (layout.width, layout.height) and "s1" in summary


# ----------------------------------------------------------------------------------------------- top-k, GeoJSON
def test_top_k_tiles_are_the_slides_pixels(world, tmp_path):
    root, levels, coords, hot = world
    out = tmp_path / "s1.png"
    render_slide(planted_run(root), root / "features" / "s1.h5", out, wsi=root / "slides" / "s1.tif",
                 options=HeatmapOptions(max_size=368, top_k=3))
    tiles = tmp_path / "s1_tiles"
    with open(tiles / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["rank"]) for r in rows] == [("top", "1"), ("top", "2"), ("top", "3"),
                                                      ("bottom", "1"), ("bottom", "2"), ("bottom", "3")]
    assert rows[0]["file"] == f"top001_x{HOT[0]}_y{HOT[1]}.png" and int(rows[0]["patch"]) == hot
    assert float(rows[0]["attention"]) > 0.5 and float(rows[0]["percentile"]) == 1.0
    with Slide(root / "slides" / "s1.tif") as slide:
        for r in rows:
            x, y, level, size = (int(r[k]) for k in ("x", "y", "level", "size"))
            assert (level, size) == (1, 32)  # the patches' own level and size (CLAM patch_level 1, patch_size 32)
            tile = np.asarray(Image.open(tiles / r["file"]).convert("RGB"))
            np.testing.assert_array_equal(tile, slide.read_region(x, y, level, size, size))
            assert r["file"] == f"{r['kind']}{int(r['rank']):03d}_x{x}_y{y}.png"
    top = np.asarray(Image.open(tiles / rows[0]["file"]).convert("RGB"))
    np.testing.assert_array_equal(top, levels[1][HOT[1] // 2:HOT[1] // 2 + 32, HOT[0] // 2:HOT[0] // 2 + 32])
    grid = Image.open(tmp_path / "s1_topk.png")
    assert grid.size[0] >= 3 * 100 and not list(tmp_path.glob(".*"))  # no temporary left


def test_geojson_is_valid_and_round_trips(world, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    root, _, coords, hot = world
    out = tmp_path / "s1.png"
    render_slide(planted_run(root), root / "features" / "s1.h5", out, wsi=root / "slides" / "s1.tif",
                 options=HeatmapOptions(max_size=368, geojson=True))
    data = json.loads((tmp_path / "s1.geojson").read_text())
    schema = json.loads((Path(__file__).parent / "data" / "geojson_FeatureCollection.schema.json").read_text())
    jsonschema.validate(data, schema)
    feature = data["features"][hot]
    assert feature["properties"]["objectType"] == "detection"
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5  # a closed ring
    corners, sides, measurements = read_patch_geojson(tmp_path / "s1.geojson")
    np.testing.assert_array_equal(corners, coords)
    assert (sides == P0).all()
    assert int(np.argmax(measurements["attention"])) == hot
    np.testing.assert_allclose(measurements["attention"].sum(), 1.0, rtol=1e-5)
    assert len({f["id"] for f in data["features"]}) == len(coords)


# ----------------------------------------------------------------------------------------------- CLI, manifests
def cli_world(root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two slides (s1 as written, s2 its mirror image) and a manifest listing both."""
    slides, feats = tmp_path / "slides", tmp_path / "features"
    slides.mkdir()
    feats.mkdir()
    write_pyramidal_tiff(slides / "s1.tif")
    from slide_image_helpers import he_image

    write_pyramidal_tiff(slides / "s2.tif", np.ascontiguousarray(he_image()[:, ::-1]))
    write_features(feats / "s1.h5", grid_coords())
    write_features(feats / "s2.h5", grid_coords(), hot=(128, 1024))
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,label\ns1,tumor\ns2,\n")
    return manifest, feats, slides


def test_cli_manifest_all_outputs_and_resume(world, tmp_path, capsys):
    root, *_ = world
    manifest, feats, slides = cli_world(root, tmp_path)
    out = tmp_path / "out"
    argv = ["heatmap", "--run", str(root / "run2" / "run"), "--manifest", str(manifest), "--features", str(feats),
            "--slides", str(slides), "--out", str(out), "--max-size", "400", "--top-k", "2", "--geojson",
            "--layout", "side-by-side", "--tissue", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 2 heatmap(s)" in capsys.readouterr().out
    for sid in ("s1", "s2"):
        for name in (f"{sid}.png", f"{sid}_topk.png", f"{sid}.geojson", f"{sid}_tiles/index.csv"):
            assert (out / name).is_file(), name
    stamp = (out / "s1.png").stat().st_mtime_ns
    (out / "s2.png").write_bytes((out / "s2.png").read_bytes()[:1000])  # a truncated PNG is not done
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 heatmap(s)" in printed and "1 already there" in printed
    assert (out / "s1.png").stat().st_mtime_ns == stamp
    Image.open(out / "s2.png").verify()



def test_cli_bad_input_names_the_file_and_writes_nothing(world, tmp_path, capsys):
    root, *_ = world
    run = str(root / "run2" / "run")
    manifest, feats, slides = cli_world(root, tmp_path)
    out = tmp_path / "out"
    base = ["heatmap", "--run", run, "--manifest", str(manifest), "--features", str(feats), "--slides", str(slides),
            "--out", str(out), "--no-progress"]
    # a slide file that is not a slide
    (slides / "s2.tif").unlink()
    (slides / "s2.svs").write_text("not a slide\n")
    fail(capsys, base, "s2.svs", "not a whole-slide image")
    assert not out.exists()
    # a plain (untiled) image is not a slide either
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(slides / "s2.svs", format="PNG")
    fail(capsys, base, "s2.svs")
    # a manifest slide without its image
    (slides / "s2.svs").unlink()
    fail(capsys, base, "s2", "no slide image", str(manifest))
    assert not out.exists()
    # coordinates outside the slide (features of another, larger slide)
    write_pyramidal_tiff(slides / "s2.tif")
    big = grid_coords() + np.array([0, 1472])
    write_features(feats / "s2.h5", big, hot=(0, 1472))
    fail(capsys, base, "s2.h5", "'coords'", "outside the slide")
    assert not out.exists()
    # single slide: --wsi not a slide; --top-k without the image
    single = ["heatmap", "--run", run, "--slide", str(feats / "s1.h5"), "--out", str(tmp_path / "one.png")]
    fail(capsys, [*single, "--wsi", str(manifest)], "m.csv", "not a whole-slide image")
    fail(capsys, [*single, "--top-k", "2"], "--top-k", "--wsi")
    fail(capsys, [*single, "--slides", str(slides)], "--slides")
    assert not (tmp_path / "one.png").exists()


def test_skip_unreadable_paints_the_rest_of_a_batch(world, tmp_path, capsys, monkeypatch):
    """One unreadable image, one missing, one corrupt tile found while painting: --skip-unreadable paints the
    slides that can be painted and names the others; a rerun with the images repaired paints only those."""
    root, *_ = world
    manifest, feats, slides = cli_world(root, tmp_path)
    for sid in ("s3", "s4"):
        write_pyramidal_tiff(slides / f"{sid}.tif")
        write_features(feats / f"{sid}.h5", grid_coords())
    manifest.write_text("slide_id,label\ns1,tumor\ns2,\ns3,\ns4,\n")
    (slides / "s2.tif").unlink()
    (slides / "s2.svs").write_text("not a slide\n")
    (slides / "s3.tif").rename(tmp_path / "s3.tif")
    out = tmp_path / "out"
    argv = ["heatmap", "--run", str(root / "run2" / "run"), "--manifest", str(manifest), "--features", str(feats),
            "--slides", str(slides), "--out", str(out), "--max-size", "300", "--no-progress"]
    fail(capsys, argv, "s3", "no slide image")  # the default: the first failure stops the batch
    assert not out.exists()

    from abmil.slides import wsi

    read_region = wsi.Slide.read_region

    def corrupt_s4(self, *args, **kwargs):
        if self.path.name == "s4.tif":
            raise self.error("a corrupt tile")
        return read_region(self, *args, **kwargs)

    monkeypatch.setattr(wsi.Slide, "read_region", corrupt_s4)
    assert main([*argv, "--skip-unreadable"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 heatmap(s)" in printed and "skipped 3 slide(s)" in printed
    assert "s2: " in printed and "not a whole-slide image" in printed and "s3: no slide image" in printed
    assert "s4: " in printed and "corrupt tile" in printed
    assert sorted(p.name for p in out.iterdir()) == ["s1.png"]
    monkeypatch.undo()
    (slides / "s2.svs").unlink()
    write_pyramidal_tiff(slides / "s2.tif")
    (tmp_path / "s3.tif").rename(slides / "s3.tif")
    assert main([*argv, "--skip-unreadable"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 heatmap(s)" in printed and "1 already there" in printed and "skipped" not in printed


def test_missing_openslide_names_the_extra(world, tmp_path, monkeypatch, capsys):
    root, *_ = world
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[slides\]'"):
        Slide(root / "slides" / "s1.tif")
    fail(capsys, ["heatmap", "--run", str(root / "run2" / "run"), "--slide", str(root / "features" / "s1.h5"),
                  "--wsi", str(root / "slides" / "s1.tif"), "--out", str(tmp_path / "x.png")], "'.[slides]'")
