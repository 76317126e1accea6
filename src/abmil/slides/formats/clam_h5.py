"""CLAM and TRIDENT patch features in HDF5 (``clam-h5``).

    <slide>.h5   at the file root: ``features`` (n_instances, dim) float16/float32 and, optionally,
                 ``coords`` (n_instances, 2) int (patch corners at level 0). CLAM and TRIDENT write the same
                 two datasets, row-chunked and resizable; TRIDENT adds attributes (on ``features``: encoder,
                 name; on ``coords``: patch_size, patch_size_level0, level0_magnification,
                 target_magnification...), CLAM's ``coords`` carry patch_size and patch_level.

Written by CLAM's ``extract_features_fp.py`` into ``<feat_dir>/h5_files/`` and by TRIDENT's patch-feature job into
``<job_dir>/<mag>x_<px>px_<overlap>px_overlap/features_<encoder>/``. Claims any file with a root ``features``
dataset that is not one vector per slide (:mod:`.slide_embedding`), so that a malformed ``features`` is reported
by its shape or dtype.
"""
from __future__ import annotations

from .base import H5Reader


class ClamH5(H5Reader):
    name = "clam-h5"
    layout = "CLAM/TRIDENT: 'features' (n_instances, dim), optional 'coords' (n_instances, 2) in level-0 pixels"
    features_name = "features"

    @classmethod
    def claims(cls, f) -> bool:
        return "features" in f
