"""Whole-slide heatmaps: score normalisation, the PNG's size and layout, colours where scores are high."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from abmil.explain.heatmap import (
    COLORBAR_PX,
    MAX_CANVAS_SIDE,
    heatmap_layout,
    normalise_scores,
    paint_heatmap,
    rasterise,
)

PATCH = 256


def grid_coords(cols: int, rows: int) -> np.ndarray:
    """(cols*rows, 2) level-0 top-left corners of a patch grid, row-major, as CLAM writes them."""
    xs, ys = np.meshgrid(np.arange(cols) * PATCH, np.arange(rows) * PATCH)
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


def pixel(png: np.ndarray, layout, x0: float, y0: float, downsample: float) -> np.ndarray:
    """RGB of the PNG pixel at the centre of the patch whose level-0 corner is (x0, y0)."""
    col = int((x0 + PATCH / 2) / downsample)
    row = int((y0 + PATCH / 2) / downsample)
    return png[layout.top + layout.zoom * row, layout.zoom * col, :3].astype(int)


def test_normalise_rank_is_percentile_with_ties():
    s = np.array([0.1, 5.0, 0.1, 100.0, 2.0])
    r = normalise_scores(s)
    assert r.max() == 1.0 and normalise_scores(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert r[0] == r[2]  # ties share their mean rank (1.5 of 1..5)
    np.testing.assert_allclose(r, [0.125, 0.75, 0.125, 1.0, 0.5])
    # rank only depends on order: a monotone transform of the scores changes nothing
    np.testing.assert_array_equal(normalise_scores(np.log(s)), r)


def test_normalise_minmax_none_and_degenerate():
    np.testing.assert_allclose(normalise_scores(np.array([1.0, 2.0, 3.0]), "minmax"), [0, 0.5, 1])
    np.testing.assert_allclose(normalise_scores(np.array([-1.0, 0.3, 2.0]), "none"), [0, 0.3, 1])
    assert (normalise_scores(np.full(4, 7.0)) == 0.5).all()
    assert (normalise_scores(np.full(4, 7.0), "minmax") == 0.5).all()
    assert normalise_scores(np.array([3.0]))[0] == 0.5
    with pytest.raises(ValueError, match="NaN"):
        normalise_scores(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise_scores(np.ones(2), "zscore")


def test_rasterise_squares_overlap_mean_and_clipping():
    coords = np.array([[0, 0], [128, 0], [1000, 1000]])
    grid = rasterise(np.array([0.0, 1.0, 0.5]), coords, PATCH, (4, 8), downsample=64.0)
    assert np.isnan(grid[:, 6:]).all()  # nothing painted right of the patches
    assert grid[0, 0] == 0.0 and grid[0, 5] == 1.0
    assert grid[0, 2] == 0.5  # pixels covered by both patches show the mean
    assert np.isnan(grid[3, 7])  # the third patch is entirely outside the (4, 8) image


def test_paint_over_image_size_and_hot_region(tmp_path):
    coords = grid_coords(10, 6)
    scores = np.where((coords[:, 0] >= 5 * PATCH) & (coords[:, 1] < 3 * PATCH), 1.0, 0.01)
    down = 16.0
    image = np.full((6 * PATCH // 16, 10 * PATCH // 16, 3), 200, dtype=np.uint8)
    out = tmp_path / "heat.png"
    paint_heatmap(scores, coords, PATCH, out, image=image, downsample=down, title="slide A")
    layout = heatmap_layout(coords, PATCH, image_shape=image.shape[:2], downsample=down, title="slide A")
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[:2] == (layout.height, layout.width)
    assert layout.zoom == 400 // 160 and layout.width == 2 * image.shape[1] + COLORBAR_PX
    hot = pixel(png, layout, 7 * PATCH, 1 * PATCH, down)
    cold = pixel(png, layout, 1 * PATCH, 4 * PATCH, down)
    # jet: high scores red, low blue, each blended half-and-half with the grey background
    assert hot[0] > hot[2] + 60 and cold[2] > cold[0] + 60
    assert list(tmp_path.iterdir()) == [out]  # atomic: no temporary file left beside it


def test_paint_without_image_is_white_canvas_and_bounded(tmp_path):
    coords = grid_coords(4, 3)
    scores = np.arange(12, dtype=float)
    out = tmp_path / "white.png"
    paint_heatmap(scores, coords, PATCH, out, downsample=32.0, alpha=1.0)
    layout = heatmap_layout(coords, PATCH, downsample=32.0)
    assert (layout.image_width, layout.image_height) == (4 * PATCH // 32, 3 * PATCH // 32)
    assert layout.zoom == 400 // 32  # a 32 x 24 image is drawn 12 times larger
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[:2] == (layout.height, layout.width)
    lowest, highest = (pixel(png, layout, x, y, 32.0) for x, y in (coords[0], coords[-1]))
    assert lowest[2] > lowest[0] and highest[0] > highest[2]  # alpha 1: pure colour map
    # a level-0 extent of 10⁵ pixels at downsample 1 would be a 10⁵-pixel canvas: it is shrunk
    big = heatmap_layout(np.array([[100_000, 50_000]]), PATCH)
    assert max(big.image_width, big.image_height) <= MAX_CANVAS_SIDE


def test_paint_rejects_bad_input_and_writes_nothing(tmp_path):
    out = tmp_path / "bad.png"
    coords = grid_coords(2, 2)
    with pytest.raises(ValueError, match="coords"):
        paint_heatmap(np.ones(3), coords, PATCH, out)
    with pytest.raises(ValueError, match="NaN"):
        paint_heatmap(np.array([1.0, np.nan, 0.0, 0.0]), coords, PATCH, out)
    with pytest.raises(ValueError, match="uint8"):
        paint_heatmap(np.ones(4), coords, PATCH, out, image=np.zeros((8, 8, 3)))
    assert not out.exists()


LONG_TITLE = "gated: img67: P(positive) = 1.000, label positive; circles = epithelial nuclei and a tail"


@pytest.mark.parametrize("title", ["short", LONG_TITLE, LONG_TITLE * 4])  # one line, two lines, a smaller font
def test_title_stays_inside_the_png(tmp_path, title):
    coords = grid_coords(8, 8)
    out = tmp_path / "t.png"
    paint_heatmap(np.arange(64, dtype=float), coords, PATCH, out, downsample=8.0, title=title)
    layout = heatmap_layout(coords, PATCH, downsample=8.0, title=title)
    band = np.asarray(Image.open(out).convert("L"))[:layout.top]
    dark = np.flatnonzero((band < 128).any(axis=0))
    assert dark.size > 0, "no title drawn"
    assert dark.min() > 0 and dark.max() < band.shape[1] - 1, "title clipped at the PNG's edge"
    rows = np.flatnonzero((band[:, :-COLORBAR_PX] < 128).any(axis=1))  # the bar's "1.0" reaches into the band
    assert rows.min() > 0 and rows.max() < layout.top - 1, "title spills out of its band"
