"""Heatmap numerics checked against code nobody here wrote: openslide-python's straight-alpha RGBA over white (Pillow's
alpha compositing), QuPath's classification forms, a patch's rows at the overview's own y scale."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from abmil.explain.geojson import patch_feature_collection
from abmil.explain.heatmap import patch_boxes
from abmil.slides.wsi import _on_white


def test_rgba_over_white_is_straight_alpha_as_pillow_composites_it():
    alpha = np.arange(256, dtype=np.uint8)
    colours = np.array([[0, 0, 0], [255, 255, 255], [100, 0, 200], [17, 129, 250], [201, 64, 3]], dtype=np.uint8)
    rgba = np.zeros((colours.shape[0], 256, 4), dtype=np.uint8)
    rgba[:, :, :3] = colours[:, None, :]
    rgba[:, :, 3] = alpha[None, :]
    white = Image.new("RGBA", (256, colours.shape[0]), (255, 255, 255, 255))
    pillow = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")))[:, :, :3]
    ours = _on_white(rgba)
    assert np.abs(ours.astype(int) - pillow.astype(int)).max() <= 1  # Pillow rounds its own way, by at most 1
    exact = np.rint(colours[:, None, :] * (alpha[None, :, None] / 255) + 255 * (1 - alpha[None, :, None] / 255))
    assert np.array_equal(ours, exact.astype(np.uint8))
    assert np.array_equal(ours[:, 0], np.full((colours.shape[0], 3), 255))  # transparent: white
    assert np.array_equal(ours[:, 255], colours)  # opaque: the colour itself


def test_qupath_classification_is_a_string_or_name_with_colour():
    coords = np.array([[0, 0], [10, 0]])
    plain = patch_feature_collection(coords, 10, {}, classification="Tumor")
    assert [f["properties"]["classification"] for f in plain["features"]] == ["Tumor", "Tumor"]
    coloured = patch_feature_collection(coords, 10, {}, classification="Tumor", classification_color=(200, 0, 0))
    assert coloured["features"][0]["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert "classification" not in patch_feature_collection(coords, 10, {})["features"][0]["properties"]
    with pytest.raises(ValueError, match="classification_color"):
        patch_feature_collection(coords, 10, {}, classification="Tumor", classification_color=(300, 0, 0))


def test_patch_rows_use_the_y_scale():
    # a 1000 x 1049 slide shrunk to 95 x 100: 10.526 level-0 pixels per pixel along x, 10.49 along y
    dx, dy = 1000 / 95, 1049 / 100
    coords = np.array([[0, 504], [0, 1039]])
    x0, x1, y0, y1 = patch_boxes(coords, 10, (100, 95), (dx, dy))
    assert list(y0) == [int(np.floor(504 / dy)), int(np.floor(1039 / dy))] == [48, 99]
    assert list(y1) == [int(np.ceil(514 / dy)), 100]
    assert patch_boxes(coords, 10, (100, 95), dx)[2][0] == 48 - 1  # the x scale puts the row one pixel higher
