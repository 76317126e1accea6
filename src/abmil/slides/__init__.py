"""Whole-slide attention MIL on precomputed patch features (CLAM / TRIDENT HDF5, .pt): the application.

    manifest.py       the slide manifest CSV: rows, label encoding, train/validation split
    feature_files.py  one slide's feature file (HDF5 or .pt): shape, chunks, coordinates, checks
    features.py       FeatureBagDataset: the slides of a manifest, read lazily with a byte-budget cache
    train.py          WSIConfig and train_feature_model: the one training loop on slides (resumable, DDP)
    predict.py        a trained run's predictions, streamed slide by slide (CSV + attention HDF5)
    heatmap.py        a slide's attention painted over its thumbnail
"""
from .features import FeatureBagDataset
from .predict import load_run, predict_dataset, write_predictions
from .train import WSIConfig, train_feature_model

__all__ = ["FeatureBagDataset", "WSIConfig", "load_run", "predict_dataset", "train_feature_model",
           "write_predictions"]
