"""Heatmaps that do not mislead: the raw-attention scale (the default), the scale named under the colour bar, a
perceptual colour map, a scale bar from the slide's µm per pixel."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from abmil.explain.heatmap import (
    bar_scale,
    colourise,
    nice_length,
    normalise_scores,
    paint_panels,
    panel_layout,
    scale_bar,
)
from abmil.slides.heatmap import HeatmapOptions, _mpp


def test_attention_scale_is_linear_from_zero():
    a = np.array([0.5, 0.3, 0.09, 0.01, 0.1])
    np.testing.assert_allclose(normalise_scores(a, "attention"), a / 0.5)
    # three patches holding 90 % of the attention: under rank half the patches are above the middle of the map,
    # under attention only those three are
    rest = np.arange(1.0, 98.0)
    weights = np.r_[0.3, 0.3, 0.3, 0.1 * rest / rest.sum()]
    assert (normalise_scores(weights, "rank") > 0.5).sum() >= 49
    assert (normalise_scores(weights, "attention") > 0.5).sum() == 3


def test_the_colour_bar_names_its_scale():
    a = np.array([0.2, 0.05, 0.75])
    assert bar_scale("attention", [("attention", a)], "score") == ("attention (linear from 0)", 0.0, 0.75)
    assert bar_scale("rank", [("attention", a)], "score") == ("score: rank percentile in the slide", 0.0, 1.0)
    assert bar_scale("minmax", [("attention", a)], "score")[0] == "score: linear, min to max"
    several = [("attention", a), ("tumor: share of logit", -a)]
    assert bar_scale("attention", several, "score") == ("score: linear from 0 to the slide's largest", 0.0, 1.0)


def test_slide_heatmaps_default_to_attention_and_a_perceptual_map():
    options = HeatmapOptions()
    assert options.normalise == "attention" and options.cmap == "viridis"
    lut = colormaps[options.cmap](np.linspace(0, 1, 256))[:, :3] @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(lut) > 0).all()  # brightness rises with the score (jet's does not)
    jet = colormaps["jet"](np.linspace(0, 1, 256))[:, :3] @ np.array([0.2126, 0.7152, 0.0722])
    assert not (np.diff(jet) > 0).all()


def test_scale_bar_lengths():
    assert [nice_length(t) for t in (1.0, 3.7, 99.0, 100.0, 740.0, 2500.0)] == [1.0, 2.0, 50.0, 100.0, 500.0, 2000.0]
    assert scale_bar(0.5, 2.0, 500) == (100, "100 µm")  # 1 µm per pixel, about a fifth of 500 pixels
    assert scale_bar(0.25, (16.0, 16.1), 1000) == (125, "500 µm")  # 4 µm per pixel
    assert scale_bar(2.0, 8.0, 1000) == (125, "2 mm")
    assert _mpp({"openslide.mpp-x": "0.499"}) == 0.499 and _mpp({}) is None and _mpp({"openslide.mpp-x": "x"}) is None


def test_the_scale_bar_is_drawn_where_the_layout_says(tmp_path):
    coords = np.array([[0, 0], [64, 0], [0, 64], [64, 64]])
    image = np.full((128, 256, 3), 230, np.uint8)
    out = tmp_path / "bar.png"
    geometry = paint_panels([("attention", np.array([0.1, 0.2, 0.3, 0.4]))], coords, 64, out, image=image,
                            downsample=1.0, mpp=0.5)
    png = np.asarray(Image.open(out).convert("RGB"))
    length, text = scale_bar(0.5, 1.0, 256)  # 0.5 µm per pixel: 20 µm (a fifth: 25.6) = 40 pixels
    bottom = geometry.top + 128 - 6
    left = geometry.lefts[0] + 6
    bar = png[bottom - 4:bottom + 1, left:left + length]
    assert (length, text) == (40, "20 µm") and (bar == 0).all()
    assert not (png[bottom - 4:bottom + 1, left + length + 1] == 0).all()  # the bar ends there
    plain = tmp_path / "plain.png"
    paint_panels([("attention", np.array([0.1, 0.2, 0.3, 0.4]))], coords, 64, plain, image=image, downsample=1.0)
    assert not (np.asarray(Image.open(plain).convert("RGB"))[bottom - 4:bottom + 1, left:left + length] == 0).all()
    assert panel_layout(1, (128, 256)) == geometry
    assert colourise(np.ones((1, 1)), None, alpha=1.0, cmap="viridis")[0, 0].tolist() == [253, 231, 37]
