"""Whole-slide attention MIL on precomputed patch features (CLAM / TRIDENT HDF5, .pt): the application.

    manifest.py       the slide manifest CSV: rows, cases (case_id), label encoding, train/validation split
    formats/          feature-file formats, one reader each (CLAM/TRIDENT .h5 and .pt, STAMP, slide embeddings), and
                      the factory that picks one from a file's content; the folders the extraction tools write
    feature_files.py  one slide's feature file in any format: shape, chunks, coordinates, checks
    features.py       FeatureBagDataset: the slides of a manifest, read lazily with a byte-budget cache; CaseBagDataset
    train.py          WSIConfig and train_feature_model: the one training loop on slides (resumable, DDP)
    predict.py        a trained run's predictions, streamed slide by slide; fold ensembles
    predictions.py    the predictions files (CSV + attention HDF5): written, and read back (tables.py: the CSV reader)
    run_folder.py     the layout of a run's folder: checkpoint.json; a study's run.json, splits.json, folds/, oof.csv,
                      summary.*
    study.py          patient-level K-fold cross-validation: folds as resumable units, out-of-fold predictions, summary
    heatmap.py        a slide's attention painted over its thumbnail
"""
from .._lazy import lazy_exports

# Lazy (PEP 562): the tasks read slides/tables.py, which must not pull in the datasets, which ask the tasks.
__getattr__, __all__ = lazy_exports(__name__, {
    "FeatureBagDataset": ".features", "load_models": ".predict", "load_run": ".predict",
    "predict_dataset": ".predict", "write_predictions": ".predict", "cross_validate": ".study",
    "WSIConfig": ".train", "train_feature_model": ".train",
})
