"""Training data (MODEL.md §4): bundled, synthetic and user datasets with fixed splits.

No network access is ever needed: the real datasets are the ones bundled with scikit-learn.

======================  ====================  ==========  =============================
name                    inputs                d (Ω)       task
======================  ====================  ==========  =============================
``digits``              8×8 images            2           10 classes
``breast_cancer``       30 features           1           2 classes
``wine``                13 features           1           3 classes
``iris``                4 features            1           3 classes
``spirals``             2 features            1           2 classes (two spirals)
``moons``, ``circles``  2 features            1           2 classes
``signals``             1-D signals, length   1           5 classes (:func:`signals`)
                        ``data.length``
``shapes``              s×s, 3 channels, s =  2           4 classes (:func:`shapes`)
                        ``data.image_size``
file ``*.npz``          arrays ``x``, ``y``   by x.ndim   classes (int y) or regression
file ``*.csv``          last column = label   1           classes (int y) or regression
======================  ====================  ==========  =============================

Multi-channel inputs (MODEL.md §10): an ``.npz`` whose ``x`` has shape ``(n, C_in, p, q)``
(4-D: images with channels), or ``(n, C_in, L)`` together with an integer scalar array
``channels`` = C_in (without it a 3-D ``x`` is ``(n, p, q)`` one-channel images);
:attr:`Dataset.channels` is C_in and :attr:`Dataset.input_shape` the spatial shape.

Splits are fixed and seeded: a stratified test split (25 % by default; digits: 25 %,
stratified, seed 0), then a stratified validation split of the rest. Tabular features are
standardized with the training split's mean and standard deviation; images are scaled to [0, 1].

The package: :mod:`.datasets` (splits, :class:`Dataset`), :mod:`.reader` (array files),
:mod:`.synthetic` (spirals, signals, shapes) and :mod:`.augment` (affine image augmentation).
"""

from __future__ import annotations

from .augment import (
    affine_images,
    random_affine,
)
from .datasets import (
    BUILTIN,
    Dataset,
    _load_file,  # noqa: F401 (re-exported)
    _npz_channels,  # noqa: F401 (re-exported)
    _raw,  # noqa: F401 (re-exported)
    load_dataset,
    load_dataset_config,
    preprocess,
)
from .reader import (
    _NUMERIC_KINDS,  # noqa: F401 (re-exported)
    ARRAY_SUFFIXES,
    _check_header,  # noqa: F401 (re-exported)
    _npy_header,  # noqa: F401 (re-exported)
    _read_npy,  # noqa: F401 (re-exported)
    _read_npz,  # noqa: F401 (re-exported)
    _read_text,  # noqa: F401 (re-exported)
    check_array,
    load_array,
    load_xy,
    npz_keys,
    read_arrays,
    validate_arrays,
)
from .synthetic import (
    SHAPE_CLASSES,
    SIGNAL_CLASSES,
    _template,  # noqa: F401 (re-exported)
    shapes,
    signals,
    two_spirals,
)

__all__ = [
    "ARRAY_SUFFIXES",
    "BUILTIN",
    "Dataset",
    "SHAPE_CLASSES",
    "SIGNAL_CLASSES",
    "affine_images",
    "check_array",
    "load_array",
    "load_dataset",
    "load_dataset_config",
    "load_xy",
    "npz_keys",
    "preprocess",
    "random_affine",
    "read_arrays",
    "shapes",
    "signals",
    "two_spirals",
    "validate_arrays",
]
