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
from .features import FeatureBagDataset
from .predict import load_models, load_run, predict_dataset, write_predictions
from .study import cross_validate
from .train import WSIConfig, train_feature_model

__all__ = ["FeatureBagDataset", "WSIConfig", "cross_validate", "load_models", "load_run", "predict_dataset",
           "train_feature_model", "write_predictions"]
