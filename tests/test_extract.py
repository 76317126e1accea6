"""``abmil extract``: tissue, tiles at a physical scale, encoders, the TRIDENT-layout file, resuming, bad input.

Slides: pyramidal TIFFs written with tifffile (``extract_helpers``) and the real Aperio SVS of the shared data
(skipped where ../shared is absent). Tiles are checked against OpenSlide's own ``read_region``, features against
encoding those tiles by hand."""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from abmil.cli import main
from cli_helpers import assert_refused
from extract_helpers import SVS, WHITE, corrupt_tile, register_tiny, tissue_canvas, write_slide

openslide = pytest.importorskip("openslide", reason="extraction needs the 'slides' extra (openslide-python, "
                                                    "openslide-bin)")

HERE = Path(__file__).resolve().parent
BOX = (256, 320, 704, 768)  # tissue, level-0 pixels; on the 64-pixel level-0 grid of the tiles below
TILES = ["--mpp", "0.5", "--patch-size", "32", "--workers", "1", "--batch-size", "8"]  # mpp 0.25 slides: 64 px


@pytest.fixture(autouse=True)
def tiny():
    register_tiny()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """good.tif (tissue in BOX, 3 levels, 0.25 µm/px), white.tif (glass only), broken.svs (not a slide), torn.tif
    (good.tif with a corrupt tile)."""
    root = tmp_path_factory.mktemp("slides")
    write_slide(root / "good.tif", tissue_canvas(1024, 1024, BOX))
    write_slide(root / "white.tif", np.full((512, 512, 3), WHITE, dtype=np.uint8))
    (root / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    write_slide(root / "torn.tif", tissue_canvas(1024, 1024, BOX))
    corrupt_tile(root / "torn.tif", 1, 6)  # level 1 (tiles read there), in BOX: it opens, then fails mid-slide
    return root


def extract(slides_dir: Path, out: Path, *args: str) -> int:
    return main(["extract", "--slides", str(slides_dir), "--out", str(out), "--encoder", "tiny-test",
                 "--weights", "none", *TILES, *args])


def summary(out: Path, name: str = "summary.csv") -> dict[str, dict]:
    """A CSV's rows by slide id (the extraction summary by default)."""
    with open(out / name, newline="") as f:
        return {row["slide_id"]: row for row in csv.DictReader(f)}


def by_hand(path: Path, coords: np.ndarray, level: int, read: int, size: int, state: dict | None = None,
            encoder: str = "tiny-test"):
    """OpenSlide's tiles at ``coords`` (level-0 corners) and the encoder's features of them, step by step."""
    from abmil.extract.encoders import load_encoder

    enc = load_encoder(encoder, "none")
    if state is not None:
        enc.model.load_state_dict(state)
    with openslide.OpenSlide(str(path)) as s:
        tiles = []
        for x, y in coords:
            im = s.read_region((int(x), int(y)), level, (read, read)).convert("RGB")
            tiles.append(np.asarray(im if read == size else im.resize((size, size), Image.Resampling.BILINEAR)))
    pre = enc.preprocess
    x = torch.stack([torch.from_numpy(np.array(Image.fromarray(t).resize((pre.resize,) * 2,
                                                                         Image.Resampling.BILINEAR)))
                     .permute(2, 0, 1).float() / 255 for t in tiles])
    x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return tiles, enc.model(x).numpy()


def test_tiles_lie_on_tissue_and_features_are_the_tiles_encoded(slides, tmp_path, capsys):
    good = tmp_path / "in"
    good.mkdir()
    (good / "good.tif").symlink_to(slides / "good.tif")
    assert extract(good, tmp_path / "out") == 0
    with h5py.File(tmp_path / "out" / "features" / "good.h5") as f:
        feats, coords, attrs = f["features"][:], f["coords"][:], dict(f["coords"].attrs)
    assert feats.dtype == np.float32 and coords.dtype == np.int64 and feats.shape == (len(coords), 64)
    # 0.5 µm/px on a 0.25 µm/px slide: 64 level-0 pixels a tile, read at level 1 (downsample 2) as 32 pixels
    assert (attrs["patch_size"], attrs["patch_size_level0"], attrs["read_level"]) == (32, 64, 1)
    assert attrs["target_magnification"] == 20 and attrs["level0_magnification"] == 40
    x0, y0, x1, y1 = BOX
    inside = {(x, y) for x in range(x0, x1, 64) for y in range(y0, y1, 64)}
    assert set(map(tuple, coords.tolist())) == inside  # every tile of the tissue, none of the glass
    tiles, expected = by_hand(slides / "good.tif", coords[:5], 1, 32, 32)
    levels = [np.asarray(Image.open(slides / "good.tif"))]  # level 0 as written, to check the corners' meaning
    for (x, y), tile in zip(coords[:5], tiles):
        block = levels[0][y:y + 64, x:x + 64].astype(np.uint16)
        mean2x2 = (block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2] + 2) // 4
        np.testing.assert_array_equal(tile, mean2x2)  # level 1 is the 2x2 mean of level 0 at the same place
    np.testing.assert_allclose(feats[:5], expected, rtol=1e-5, atol=1e-5)
    qc = np.asarray(Image.open(tmp_path / "out" / "qc" / "good.png"))
    assert qc.shape[:2] == (1024, 1024)


def test_resnet50_trunc_features_are_its_tiles_encoded(slides, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.tif").symlink_to(slides / "good.tif")
    # 1 µm/px tiles of 112 px: 448 level-0 pixels, read at level 2 (downsample 4) as 112 px; two touch BOX enough
    assert main(["extract", "--slides", str(folder), "--out", str(tmp_path / "out"), "--encoder", "resnet50-trunc",
                 "--weights", "none", "--mpp", "1", "--patch-size", "112", "--workers", "1"]) == 0
    with h5py.File(tmp_path / "out" / "features" / "good.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
        assert f["coords"].attrs["read_level"] == 2 and f["coords"].attrs["patch_size_level0"] == 448
    assert sorted(map(tuple, coords.tolist())) == [(0, 448), (448, 448)]
    _, expected = by_hand(slides / "good.tif", coords, 2, 112, 112, encoder="resnet50-trunc")
    assert feats.shape == (2, 1024)
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)


def test_svs_tiles_are_openslide_read_regions_and_features_match(tmp_path):
    if not SVS.is_file():
        pytest.skip("the shared data (../shared) is absent")
    folder = tmp_path / "svs"
    folder.mkdir()
    (folder / "cmu.svs").symlink_to(SVS)
    # 0.499 µm/px at level 0, the one level: 0.5 µm/px tiles of 48 px cover round(48 * 0.5 / 0.499) = 48 px
    assert main(["extract", "--slides", str(folder), "--out", str(tmp_path / "out"), "--encoder", "tiny-test",
                 "--weights", "none", "--patch-size", "48", "--workers", "2", "--batch-size", "64"]) == 0
    with h5py.File(tmp_path / "out" / "features" / "cmu.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
    assert len(coords) > 100 and (coords % 48 == 0).all()
    pick = np.linspace(0, len(coords) - 1, 4).astype(int)
    tiles, expected = by_hand(SVS, coords[pick], 0, 48, 48)
    assert all(np.asarray(t).std() > 10 for t in tiles)  # tissue, not glass
    np.testing.assert_allclose(feats[pick], expected, rtol=1e-5, atol=1e-5)


def test_white_slide_is_no_tissue_and_a_corrupt_one_is_reported_while_others_go_on(slides, tmp_path, capsys):
    status = extract(slides, tmp_path / "out")
    err = capsys.readouterr().err
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("abmil: error: ") for line in lines), err
    assert "broken.svs" in lines[0] and "torn.tif" in lines[1] and "cannot read region" in lines[1], err
    rows = summary(tmp_path / "out")
    assert {k: r["status"] for k, r in rows.items()} == {"broken": "error", "good": "done", "torn": "error",
                                                          "white": "no tissue"}
    assert sorted(p.name for p in (tmp_path / "out" / "features").iterdir()) == ["good.h5"]


def killed_after(batches: int, argv: list[str]) -> int:
    """Run ``abmil ARGV`` in a forked child that SIGKILLs itself after ``batches`` encoded batches (fault
    injection around the pipeline's encode step; the production code reads no such hook); its wait status."""
    import os
    import signal

    import abmil.extract.pipeline as pipeline

    pid = os.fork()
    if pid == 0:  # the child: no pytest teardown, no return
        try:
            calls, encode = [0], pipeline.encode_batch

            def killing(*args, **kwargs):
                calls[0] += 1
                if calls[0] > batches:
                    os.kill(os.getpid(), signal.SIGKILL)
                return encode(*args, **kwargs)

            pipeline.encode_batch = killing
            main(argv)
        finally:
            os._exit(3)
    return os.waitpid(pid, 0)[1]


def test_kill_mid_slide_then_rerun_gives_the_same_bytes(tmp_path):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    write_slide(folder / "good.tif", tissue_canvas(512, 512, (128, 128, 384, 384)))  # 16 tiles, 4 batches
    args = ["extract", "--slides", str(folder), "--encoder", "tiny-test", "--weights", "none", *TILES,
            "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    status = killed_after(2, [*args, "--out", str(tmp_path / "cut")])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status
    assert not (tmp_path / "cut" / "features" / "good.h5").exists()
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0
    whole = (tmp_path / "whole" / "features" / "good.h5").read_bytes()
    assert (tmp_path / "cut" / "features" / "good.h5").read_bytes() == whole
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0  # finished: skipped, not redone
    assert summary(tmp_path / "cut")["good"]["status"] == "skipped"
    assert main([*args, "--out", str(tmp_path / "cut"), "--min-tissue", "0.5"]) == 0  # another setting: redone
    assert summary(tmp_path / "cut")["good"]["status"] == "done"
    assert (tmp_path / "cut" / "features" / "good.h5").read_bytes() != whole  # its key differs


def test_weights_file_is_used_and_the_layout_trains(slides, tmp_path):
    from safetensors.torch import save_file

    from abmil.extract.resnet import TruncatedResNet

    torch.manual_seed(123)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in TruncatedResNet((1, 1, 1), width=4).state_dict().items()}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    folder = tmp_path / "in"
    folder.mkdir()
    for k, offset in enumerate([(350, 950), (500, 900)]):
        write_slide(folder / f"s{k}.tif", tissue_canvas(512, 512, (128, 128, 384, 384), offset))
    manifest = folder / "manifest.csv"  # the slides found beside it by their ids
    manifest.write_text("slide_id,label\ns0,0\ns1,1\n")
    assert main(["extract", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--encoder", "tiny-test",
                 "--weights", str(tmp_path / "tiny.safetensors"), *TILES]) == 0
    with h5py.File(tmp_path / "out" / "features" / "s0.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
        assert f["features"].attrs["encoder_weights"].startswith("tiny.safetensors sha256:")
    _, expected = by_hand(folder / "s0.tif", coords[:3], 1, 32, 32, state)
    np.testing.assert_allclose(feats[:3], expected, rtol=1e-5, atol=1e-5)
    assert main(["train", "--manifest", str(manifest), "--features", str(tmp_path / "out" / "features"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--val-split", "0"]) == 0
    assert (tmp_path / "run" / "checkpoint.json").is_file()
    # the deploy path: the raw slides, extracted as the run's features were (encoder, weights, scale), then predicted
    run = ["predict", "--run", str(tmp_path / "run")]
    assert main([*run, "--manifest", str(manifest), "--features", str(tmp_path / "out" / "features"),
                 "--out", str(tmp_path / "from_features.csv")]) == 0
    assert main([*run, "--slides", str(folder), "--out", str(tmp_path / "from_slides.csv")]) == 2  # which weights?
    assert main([*run, "--slides", str(folder), "--weights", str(tmp_path / "tiny.safetensors"),
                 "--out", str(tmp_path / "from_slides.csv")]) == 0
    with_labels, new = (summary(tmp_path, f"from_{k}.csv") for k in ("features", "slides"))
    assert {k: {**r, "label": ""} for k, r in with_labels.items()} == new  # new slides come without labels
    with h5py.File(tmp_path / "from_slides.features" / "features" / "s1.h5") as a, \
            h5py.File(tmp_path / "out" / "features" / "s1.h5") as b:  # the same settings (another batch size)
        assert a["features"].attrs["extract_key"] == b["features"].attrs["extract_key"]
        np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
        np.testing.assert_allclose(a["features"][:], b["features"][:], rtol=1e-5, atol=1e-6)


def test_slide_without_mpp_needs_the_flag(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_slide(folder / "bare.tif", tissue_canvas(512, 512, (128, 128, 384, 384)), mpp=None)
    assert extract(folder, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "bare.tif" in err and "--mpp-level0" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert extract(folder, tmp_path / "out", "--mpp-level0", "0.25") == 0
    assert summary(tmp_path / "out")["bare"]["tiles"] == "16"


def test_refusals_name_the_flag_or_file(tmp_path, capsys):
    """Nothing could be done: exit 2, one line naming the flag or file, nothing written (through ``python -m abmil``
    once, the rest in this process with the same checks)."""
    from cli_helpers import tree

    (tmp_path / "empty").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a slide")
    write_slide(tmp_path / "in" / "a.tif", np.full((256, 256, 3), WHITE, dtype=np.uint8))
    out = ["--out", "{ws}/out"]
    assert_refused(tmp_path, ["extract", "--slides", "{ws}/empty", "--encoder", "resnet50-trunc", *out],
                   "{ws}/empty")
    for args, culprit in [(["--slides", "{ws}/in", "--encoder", "no-such-net", "--weights", "none"], "--encoder"),
                          (["--slides", "{ws}/in", "--encoder", "resnet50-trunc", "--weights", "{ws}/missing.pt"],
                           "{ws}/missing.pt"),
                          (["--slides", "{ws}/in", "--encoder", "tiny-test", "--weights", "{ws}/in/notes.txt"],
                           "{ws}/in/notes.txt"),
                          (["--slides", "{ws}/in", "--encoder", "tiny-test", "--mpp", "0"], "--mpp")]:
        before = tree(tmp_path)
        assert main(["extract", *(a.format(ws=tmp_path) for a in args + out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("abmil: error: ") and err.count("\n") == 1, err
        assert culprit.format(ws=tmp_path) in err, err
        assert tree(tmp_path) == before


def test_saturation_is_hsv_saturation_and_tissue_geojson_has_the_mask_area():
    from matplotlib.colors import rgb_to_hsv

    from abmil.extract.qc import tissue_polygons
    from abmil.extract.tissue import saturation

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    expected = rgb_to_hsv(rgb / 255.0)[..., 1] * 255
    assert np.abs(saturation(rgb) - expected).max() <= 0.5 + 1e-9  # rounded, as OpenCV's uint8 HSV
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 5:45] = True
    mask[15:25, 15:30] = False  # a hole
    mask[2:4, 47:49] = True  # a second region
    polygons = tissue_polygons(mask, downsample=4.0)
    assert [len(rings) for rings in polygons] == [2, 1] or [len(rings) for rings in polygons] == [1, 2]

    def area(ring):
        x, y = np.asarray(ring).T
        return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2

    total = sum(area(rings[0]) - sum(area(r) for r in rings[1:]) for rings in polygons)
    # the 0.5 level lies midway between pixel centres, on the pixels' edges: the mask's area, but for an eighth of a
    # pixel cut (or added) at each of the 12 corners
    assert abs(total / 16 - mask.sum()) <= 12 / 8


def test_torchrun_ranks_share_the_slides(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_slide(folder / f"{name}.tif", tissue_canvas(256, 256, (64, 64, 192, 192)))
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert extract(folder, tmp_path / "out") == 0
    shares = [set(summary(tmp_path / "out", f"summary.rank{r}.csv")) for r in (0, 1)]
    assert shares == [{"a", "c"}, {"b"}]
    assert sorted(p.stem for p in (tmp_path / "out" / "features").iterdir()) == ["a", "b", "c"]

