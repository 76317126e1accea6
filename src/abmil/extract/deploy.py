"""Raw slides for a trained run: extracted on the fly with the encoder and scale its training features were made with.

The run's ``config.json`` names its feature folder; the attributes of a feature file there that ``abmil extract``
wrote (``encoder``, ``encoder_weights``, ``mpp``, ``patch_size``, ``overlap``) are the settings new slides get. The
features are cached in a folder (``abmil extract``'s layout, resumable): a second prediction on the same slides reads
them back instead of encoding again."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataError
from ..io import write_text_atomic


def run_feature_settings(run: str | os.PathLike) -> dict:
    """The extraction settings of ``run``'s training features: encoder, encoder_weights, mpp, patch_size, overlap
    (:class:`DataError` naming the run when it was not trained on files ``abmil extract`` wrote)."""
    import h5py

    config = Path(run) / "config.json"
    try:
        settings = json.loads(config.read_text())
        features = settings.get("features") or os.path.dirname(settings["manifest"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError("no config.json naming the run's features: --slides needs a run trained on "
                        "`abmil extract` features", path=str(run)) from None
    folder = Path(features)
    files = sorted(folder.glob("*.h5")) if folder is not None and folder.is_dir() else []
    for path in files:
        with h5py.File(path, "r") as f:
            attrs = dict(f["features"].attrs) if "features" in f else {}
        if "encoder" in attrs and "mpp" in attrs:
            keys = ("encoder", "encoder_weights", "mpp", "patch_size", "overlap")
            return {k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
                    for k, v in attrs.items() if k in keys}
    raise DataError(f"no feature file written by `abmil extract` in the run's features folder {features}: --slides "
                    f"needs its encoder and scale", path=str(run))


def weights_for(recorded: str, given: str | None) -> str | None:
    """The ``--weights`` value that reproduces ``recorded`` (a feature file's ``encoder_weights``)."""
    from .encoders import sha256_of

    if recorded.startswith("none"):
        return "none"
    if " sha256:" in recorded:
        name, digest = recorded.split(" sha256:")
        if given is None:
            raise ValueError(f"--weights: the run's features were encoded with the weights file {name} "
                             f"(sha256 {digest}...): give it")
        if given == "none" or not Path(given).is_file() or not sha256_of(given).startswith(digest):
            raise ValueError(f"--weights: {given} is not the file the run's features were encoded with ({name}, "
                             f"sha256 {digest}...)")
        return given
    return given  # the hub's file (None), or a local copy of it


def slides_manifest(slides: list[tuple[str, Path]], path: Path) -> Path:
    """A manifest of ``slides`` without labels (what ``predict`` reads for new slides)."""
    write_text_atomic(path, "slide_id,label\n" + "".join(f"{sid},\n" for sid, _ in slides))
    return path


def extract_for_run(run: str | os.PathLike, slides_dir: str | os.PathLike, cache: str | os.PathLike, *,
                    weights: str | None = None, device: str = "cpu", workers: int = 2,
                    batch_size: int = 32) -> tuple[Path, Path]:
    """Extract ``slides_dir``'s slides into ``cache`` as ``run``'s training features were; ``(manifest,
    features folder)`` for :class:`~abmil.slides.features.FeatureBagDataset`. Slides without tissue or unreadable
    ones are left out (``cache/summary.csv`` says which); none left is a :class:`DataError`."""
    from .encoders import load_encoder
    from .pipeline import extract_all
    from .settings import ExtractSettings
    from .sources import slides_in_folder

    found = run_feature_settings(run)
    slides = slides_in_folder(slides_dir)
    encoder = load_encoder(found["encoder"], weights_for(str(found.get("encoder_weights", "")), weights))
    settings = ExtractSettings(mpp=float(found["mpp"]), patch_size=int(found["patch_size"]),
                               overlap=int(found.get("overlap", 0)))
    results = extract_all(slides, cache, encoder, settings, batch_size=batch_size, workers=workers, device=device)
    done = [(r.slide_id, Path(r.path)) for r in results if r.status in ("done", "skipped")]
    if not done:
        raise DataError("no slide with tissue to predict (see summary.csv)", path=str(cache))
    cache = Path(cache)
    return slides_manifest(done, cache / "manifest.csv"), cache / "features"
