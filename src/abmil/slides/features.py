"""Feature bags of whole slides: a manifest CSV plus one feature file per slide.

    manifest.csv   slide_id, label[, split][, path]                 (``abmil.slides.manifest``)
    features/      <slide_id>.h5 or .pt, in any format of ``abmil.slides.formats`` (CLAM / TRIDENT, STAMP, slide
                   embeddings), or a folder below it where the extraction tool put them (CLAM's ``h5_files/``...)

A slide is read only when it is asked for (``dataset[i]``), optionally kept in an LRU cache
bounded in bytes, and can be streamed in chunks (:meth:`FeatureBagDataset.iter_chunks`) when
the bag does not fit in memory. Items are ``(features (n_instances, dim), label, slide_id)``;
:func:`abmil.data.bags.pack` packs their features.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..tasks import DEFAULT_TASK, Task, get_task
from .feature_files import FeatureFile
from .formats import find_feature_file, find_feature_folder, suffixes
from .manifest import encode_labels, read_manifest


class SlideBag(NamedTuple):
    features: Tensor
    """(n_instances, dim) instance features."""
    coords: Tensor | None
    """(n_instances, 2) patch coordinates, or None (``.pt`` files have none)."""
    label: int
    slide_id: str


class ByteBudgetCache:
    """An LRU cache of tensors whose total size stays within ``max_bytes`` (0 disables it)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[object, tuple[tuple, int]] = OrderedDict()

    @staticmethod
    def size_of(value: tuple) -> int:
        return sum(t.numel() * t.element_size() for t in value if isinstance(t, Tensor))

    def get(self, key: object) -> tuple | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: object, value: tuple) -> None:
        size = self.size_of(value)
        if size > self.max_bytes or key in self._items:
            return  # a bag larger than the whole budget would only evict everything else
        while self.nbytes + size > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.nbytes -= old
        self._items[key] = (value, size)
        self.nbytes += size

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class FeatureBagDataset(Dataset):
    """Slides as bags of pre-extracted patch features.

    Args:
        manifest: CSV with columns ``slide_id``, ``label`` and optionally ``split``, ``path``.
        features_dir: folder of the feature files, and the base of relative ``path`` cells;
            default: the manifest's folder. Slides without a ``path`` are looked for in it, or in the one folder
            below it that holds their files (:func:`~abmil.slides.formats.find_feature_folder`: CLAM's
            ``h5_files/``, TRIDENT's ``<mag>x_<px>px_<overlap>px_overlap/features_<encoder>/``, STAMP's
            ``<extractor>/``); :attr:`files_dir` is where they were found.
        split: keep only the rows whose ``split`` is this value.
        classes: the class names in index order; default: integer labels as they are, or
            the sorted distinct names (see :func:`abmil.slides.manifest.encode_labels`).
        dtype: features are converted to this dtype (float16 files become float32 by default);
            ``None`` keeps the stored dtype.
        cache_bytes: keep recently read slides in RAM up to this many bytes (0: no cache).
            Each DataLoader worker process keeps its own cache; treat cached tensors as read-only.
        check_finite: reject features holding NaN or ±Inf when they are read.
        require_labels: ``False`` lets ``label`` cells be empty (slides to predict); their label is None.
        task: ``classification`` (``label``), ``survival`` (``time``, ``event``), ``regression`` (``target``) or
            a task's class (:func:`abmil.tasks.get_task`, e.g. multilabel of its targets): the manifest's outcome
            columns (:func:`~abmil.slides.manifest.read_manifest`); :attr:`outcomes`, :attr:`task` (its name),
            :attr:`task_class`.
        mpp: the slides' microns per level-0 pixel, for feature files with coordinates in micrometres (STAMP) that
            record none (coords are None without it; features are read either way).

    Every slide's file must exist when the dataset is built; its contents are checked when it
    is read (or all at once, from metadata only, by :meth:`validate`).
    """

    def __init__(self, manifest: str | os.PathLike, features_dir: str | os.PathLike | None = None, *,
                 split: str | None = None, classes: Sequence[str] | None = None,
                 dtype: torch.dtype | None = torch.float32, cache_bytes: int = 0,
                 check_finite: bool = True, require_labels: bool = True, task: str | type[Task] = DEFAULT_TASK,
                 mpp: float | None = None):
        self.manifest = os.fspath(manifest)
        self.features_dir = Path(features_dir) if features_dir is not None else Path(self.manifest).parent
        self.task_class = get_task(task)
        self.task = self.task_class.name
        rows = read_manifest(self.manifest, require_labels=require_labels, task=self.task_class)
        if split is not None:
            if all(r.split is None for r in rows):
                raise DataError(f"manifest has no 'split' column to select split {split!r} from",
                                path=self.manifest)
            rows = [r for r in rows if r.split == split]
            if not rows:
                raise DataError(f"no slides in split {split!r}", path=self.manifest)
        encoded, self.classes = encode_labels([r for r in rows if r.label], classes, manifest=self.manifest)
        labels = iter(encoded)
        self.labels: list[int | None] = [next(labels) if r.label else None for r in rows]
        """Class index of each slide (None for an unlabelled slide, only with ``require_labels=False``)."""
        self.outcomes: list = [r.outcome for r in rows]
        """Survival: ``(time, event)`` of each slide; regression: its target (None where empty); classification:
        None (the class is in :attr:`labels`)."""
        self.slide_ids: list[str] = [r.slide_id for r in rows]
        self.splits: list[str | None] = [r.split for r in rows]
        self.case_ids: list[str] = [r.case for r in rows]
        """Each slide's case (patient): the manifest's ``case_id``, or the slide id where it has none."""
        self.files_dir = find_feature_folder(self.features_dir, [r.slide_id for r in rows if r.path is None])
        self.files: list[FeatureFile] = [FeatureFile(self._resolve(r.slide_id, r.path), r.slide_id, mpp=mpp)
                                         for r in rows]
        self._position = {s: i for i, s in enumerate(self.slide_ids)}
        self.dtype, self.check_finite = dtype, check_finite
        self.cache = ByteBudgetCache(cache_bytes)
        self.dim: int | None = None
        """Feature dimension, known after the first read or :meth:`validate`."""
        self._dim_from: str | None = None
        self._sizes: list[int] | None = None

    def _resolve(self, slide_id: str, path: str | None) -> Path:
        if path is None:
            found = find_feature_file(self.files_dir, slide_id)
            if found is None:
                raise DataError(f"field 'path': slide file not found: no {slide_id}{'/'.join(suffixes())} "
                                f"in {self.files_dir}", path=self.manifest, bag=slide_id)
            return found
        p = Path(path)
        p = p if p.is_absolute() else self.features_dir / p
        if not p.is_file():
            raise DataError(f"field 'path': slide file not found: {p}", path=self.manifest, bag=slide_id)
        return p

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return len(self.slide_ids)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str]:
        """``(features (n_instances, dim), label, slide_id)``."""
        bag = self.load(i)
        return bag.features, bag.label, bag.slide_id

    # ------------------------------------------------------------------ access
    def index(self, slide: int | str) -> int:
        """Position of a slide given by position or by slide id."""
        if isinstance(slide, str):
            if slide not in self._position:
                raise KeyError(f"no slide {slide!r} in this dataset")
            return self._position[slide]
        i = int(slide)
        if not -len(self) <= i < len(self):
            raise IndexError(f"slide index {i} out of range for {len(self)} slides")
        return i % len(self)

    def load(self, slide: int | str) -> SlideBag:
        """One whole slide: features (n_instances, dim), coords (n_instances, 2) or None, label, id."""
        i = self.index(slide)
        cached = self.cache.get(i)
        if cached is None:
            f = self.files[i]
            features, coords = f.read(check_finite=self.check_finite)
            self._check_dim(i, features.shape[1])
            cached = (self._convert(features), coords)
            self.cache.put(i, cached)
        return SlideBag(cached[0], cached[1], self.labels[i], self.slide_ids[i])

    def coords(self, slide: int | str) -> Tensor | None:
        """(n_instances, 2) patch coordinates of a slide, or None."""
        return self.load(slide).coords

    def iter_chunks(self, slide: int | str, chunk_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Stream one slide as ``(features (n_chunk, dim), coords (n_chunk, 2) or None)`` chunks
        of at most ``chunk_size`` instances, reading only one chunk at a time from disk."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        i = self.index(slide)
        cached = self.cache.get(i)
        if cached is not None:
            features, coords = cached
            for start in range(0, features.shape[0], chunk_size):
                stop = start + chunk_size
                yield features[start:stop], None if coords is None else coords[start:stop]
            return
        f, start = self.files[i], 0
        for features, coords in f.iter_chunks(chunk_size):
            self._check_dim(i, features.shape[1])
            if self.check_finite:
                f.check_finite(features, first_row=start)
            start += features.shape[0]
            yield self._convert(features), coords

    def shape(self, slide: int | str) -> tuple[int, int]:
        """``(n_instances, dim)`` of a slide from file metadata, without reading the features."""
        return self.files[self.index(slide)].shape()

    def bag_sizes(self) -> list[int]:
        """Instances per slide, from metadata (for :class:`~abmil.data.samplers.InstanceBudgetSampler`)."""
        if self._sizes is None:
            self._sizes = [f.shape()[0] for f in self.files]
        return list(self._sizes)

    def validate(self) -> int:
        """Check every slide's file from metadata only: ``features`` present, 2-D, float, not
        empty, ``coords`` matching, the same dim for all. Returns the dim. (NaN/Inf can only be
        seen by reading the data; that check runs on each read.)"""
        sizes = []
        for i, f in enumerate(self.files):
            n, d = f.shape()
            self._check_dim(i, d)
            sizes.append(n)
        self._sizes = sizes
        return int(self.dim)

    # ------------------------------------------------------------------ helpers
    def _check_dim(self, i: int, dim: int) -> None:
        if self.dim is None:
            self.dim, self._dim_from = dim, self.slide_ids[i]
        elif dim != self.dim:
            raise self.files[i].error("features", f"feature dimension {dim} differs from the {self.dim} "
                                                  f"of slide {self._dim_from}")

    def _convert(self, features: Tensor) -> Tensor:
        return features if self.dtype is None else features.to(self.dtype)

    def __repr__(self) -> str:
        classes = f", classes={self.classes}" if self.classes is not None else ""
        return f"FeatureBagDataset({len(self)} slides from {self.manifest}{classes})"


BAG_LEVELS = ("slide", "case")


class CaseBagDataset:
    """The cases of a :class:`FeatureBagDataset` as bags: a case's slides concatenated, in manifest order, into one
    bag (attention then spans the whole case). Offers what training and scoring read of a dataset (``labels``,
    ``splits``, ``slide_ids`` — here the case ids —, ``load``, ``bag_sizes``, ``validate``), so that the same
    training code runs on slides or on cases; cases are in order of first appearance in the manifest."""

    def __init__(self, slides: FeatureBagDataset):
        self.slides = slides
        members: dict[str, list[int]] = {}
        for i, case in enumerate(slides.case_ids):
            members.setdefault(case, []).append(i)
        self.case_ids: list[str] = list(members)
        self.slide_ids = self.case_ids
        """The bag ids (case ids), named as :class:`FeatureBagDataset` names its bags."""
        self.members: list[list[int]] = list(members.values())
        """Slide positions of each case."""
        # the manifest checks one label and one split per case (empty label cells aside)
        self.labels: list[int | None] = [next((slides.labels[i] for i in m if slides.labels[i] is not None), None)
                                         for m in self.members]
        self.splits: list[str | None] = [slides.splits[m[0]] for m in self.members]
        self.outcomes: list = [next((slides.outcomes[i] for i in m if slides.outcomes[i] is not None), None)
                               for m in self.members]
        self.classes, self.manifest, self.task = slides.classes, slides.manifest, slides.task
        self.task_class = slides.task_class

    @property
    def dim(self) -> int | None:
        return self.slides.dim

    def __len__(self) -> int:
        return len(self.case_ids)

    def load(self, case: int | str) -> SlideBag:
        """The case's slides end to end: features (sum of n_instances, dim), coords or None (if a slide has none)."""
        i = self.case_ids.index(case) if isinstance(case, str) else int(case)
        bags = [self.slides.load(j) for j in self.members[i]]
        coords = [b.coords for b in bags]
        return SlideBag(torch.cat([b.features for b in bags]) if len(bags) > 1 else bags[0].features,
                        None if any(c is None for c in coords) else torch.cat(coords),
                        self.labels[i], self.case_ids[i])

    def bag_sizes(self) -> list[int]:
        sizes = self.slides.bag_sizes()
        return [sum(sizes[j] for j in m) for m in self.members]

    def validate(self) -> int:
        return self.slides.validate()

    def __repr__(self) -> str:
        return f"CaseBagDataset({len(self)} cases of {self.slides!r})"


def bags_at_level(dataset: FeatureBagDataset, level: str) -> FeatureBagDataset | CaseBagDataset:
    """The bags of ``dataset`` at ``level``: ``"slide"`` (each slide a bag) or ``"case"`` (:class:`CaseBagDataset`)."""
    if level not in BAG_LEVELS:
        raise ValueError(f"bag level must be one of {', '.join(BAG_LEVELS)}, got {level!r}")
    return dataset if level == "slide" else CaseBagDataset(dataset)
