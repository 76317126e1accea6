"""Training: one loop (loop.py) on schedules of steps (schedule.py), the paper's fit, engines, cross-validation."""
from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "TrainConfig": ".config",
    "Callback": ".loop", "Checkpointing": ".loop", "EarlyStopping": ".loop", "FitHistory": ".loop", "Step": ".loop",
    "TensorBags": ".loop", "train_loop": ".loop",
    "fit": ".fit", "predict": ".fit", "validation_split": ".fit",
    "ENGINES": ".engines", "fit_auto": ".engines", "resolve_engine": ".engines",
    "cv_splits": ".cv", "run_cv": ".cv",
    "case_cv_splits": ".splits", "stratified_group_holdout": ".splits",
    "bag_losses": ".loss", "mil_loss": ".loss",
    "epoch_steps": ".schedule", "paper_steps": ".schedule",
    "benchmark_config": ".presets", "histology_config": ".presets", "mnist_bags_config": ".presets",
})
