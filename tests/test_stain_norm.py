"""Lab conversion and Reinhard normalisation on real H&E patches (the demo image shipped with the package)."""
from __future__ import annotations

import pytest
import torch

from abmil.data.augment import random_dihedral, random_he_stain
from abmil.data.patches import patches_to_tensor
from abmil.experiments.histology_demo import demo_image_path
from abmil.explain.histology import image_bag
from abmil.nn.stain_norm import GMUM_LAB_TARGET, ReinhardNormalize, lab_to_rgb, rgb_to_lab
from abmil.nn.zoo import histology_model


@pytest.fixture(scope="module")
def he_patches() -> torch.Tensor:
    """(64, 3, 32, 32) float32 tissue tiles (mostly-white tiles dropped) of the H&E image shipped for the demo."""
    bag = image_bag(demo_image_path(), 32, "grid")
    return patches_to_tensor(bag.patches[::8][:64])


def test_lab_of_the_srgb_primaries_is_the_published_one():
    # CIE Lab (D65) of sRGB white, red, green, blue, mid grey, black, as tabulated (e.g. Lindbloom's calculator)
    rgb = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0]], dtype=torch.float64)
    lab = rgb_to_lab(rgb.T.reshape(1, 3, 6, 1))[0, :, :, 0].T
    expected = torch.tensor([[100, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                             [32.30, 79.19, -107.86], [53.39, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert torch.allclose(lab, expected, atol=0.01)


def test_lab_round_trip_on_he_patches(he_patches):
    assert he_patches.shape[0] >= 20
    x = he_patches.double()
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-9)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(he_patches)), he_patches, atol=1e-4)  # float32 too


def _tissue_stats(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, 2): per patch, Lab mean and sd over the pixels with grey <= 215/255."""
    grey = 0.2125 * x[:, 0] + 0.7154 * x[:, 1] + 0.0721 * x[:, 2]
    lab = rgb_to_lab(x.double())
    out = []
    for i in range(len(x)):
        m = grey[i] <= 215 / 255
        vals = lab[i][:, m]
        out.append(torch.stack([vals.mean(1), vals.std(1, unbiased=False)], 1))
    return torch.stack(out)


def test_reinhard_maps_each_patch_to_the_target_and_keeps_white(he_patches):
    x = he_patches.clone()
    x[0] = 1.0                                   # an all-white patch: nothing to normalise
    x[1, :, :4, :] = 1.0                         # a white band on a tissue patch
    y = ReinhardNormalize()(x)
    assert y.shape == x.shape and y.dtype == x.dtype and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert torch.equal(y[0], x[0]) and torch.equal(y[1, :, :4, :], x[1, :, :4, :])
    before, after = _tissue_stats(x[1:]), _tissue_stats(y[1:])
    target = torch.tensor(GMUM_LAB_TARGET, dtype=torch.float64)
    # the patches differ before; after, every one is near the target (not exactly: RGB clipping, pixels that
    # cross the white threshold)
    assert float((before[:, 0, 0] - target[0, 0]).abs().max()) > 5
    assert float((after[..., 0] - target[:, 0]).abs().median()) < 1.5
    assert float((after[..., 1] / target[:, 1]).median()) == pytest.approx(1.0, abs=0.15)


def test_reinhard_undoes_a_stain_change_and_commutes_with_the_symmetries(he_patches):
    norm = ReinhardNormalize()
    x = he_patches
    restained = random_he_stain(x, torch.Generator().manual_seed(0), sigma=0.2)
    gap_before = (restained - x).abs().mean()
    gap_after = (norm(restained) - norm(x)).abs().mean()
    assert gap_after < 0.5 * gap_before
    turned = random_dihedral(x, torch.Generator().manual_seed(1))
    assert torch.allclose(norm(turned), random_dihedral(norm(x), torch.Generator().manual_seed(1)), atol=1e-6)


def test_bad_target_and_input_are_named():
    with pytest.raises(ValueError, match="three \\(mean, sd > 0\\) pairs"):
        ReinhardNormalize(target=((50, 10), (0, 0)))
    with pytest.raises(ValueError, match="expects \\(n, 3, h, w\\) RGB"):
        ReinhardNormalize()(torch.zeros(2, 1, 8, 8))


def test_histology_model_normalises_inside_with_the_same_weight_names(he_patches):
    torch.manual_seed(0)
    plain = histology_model("attention", 32)
    torch.manual_seed(0)
    normed = histology_model("attention", 32, stain_normalize=True)
    assert list(plain.state_dict()) == list(normed.state_dict())
    normed.load_state_dict(plain.state_dict())
    plain.eval(), normed.eval()
    bag_index = torch.zeros(len(he_patches), dtype=torch.long)
    a = plain(he_patches, bag_index, 1).prob
    b = normed(he_patches, bag_index, 1).prob
    c = plain(ReinhardNormalize()(he_patches), bag_index, 1).prob
    assert not torch.allclose(a, b) and torch.allclose(b, c)

