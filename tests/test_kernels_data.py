"""Data for structured kernels (MODEL.md §10): the seeded ``signals`` and ``shapes`` datasets and
multi-channel ``.npz`` files."""

from __future__ import annotations

import numpy as np
import pytest

from pdenets.config import Config, load_config
from pdenets.data import load_dataset, load_dataset_config, shapes, signals
from pdenets.errors import ConfigError, PdenetsError


@pytest.mark.parametrize("length", [40, 4096])
def test_signals_are_seeded_balanced_and_sized(length):
    x, y = signals(50, length, seed=3)
    x2, y2 = signals(50, length, seed=3)
    assert x.shape == (50, length) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.isfinite(x).all()
    assert np.bincount(y).tolist() == [10] * 5
    assert not np.array_equal(signals(50, length, seed=4)[0], x)


def test_signals_length_is_checked_and_config_reaches_the_generator():
    with pytest.raises(PdenetsError, match="length"):
        signals(10, 39)
    cfg = Config()
    cfg.data.name, cfg.data.length, cfg.data.n_samples = "signals", 64, 200
    ds = load_dataset_config(cfg.data)
    assert ds.input_shape == (64,) and ds.channels == 1 and ds.n_outputs == 5


def test_shapes_are_three_channel_images_whose_colour_is_uninformative():
    x, y = shapes(400, 32, seed=1)
    assert x.shape == (400, 3, 32, 32) and x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(y).tolist() == [100] * 4
    x2, y2 = shapes(400, 32, seed=1)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    # the background colour (the image's median per channel) has the same distribution in
    # every class: per-class means equal within sampling error (classes differ by shape only)
    bg = np.median(x, (2, 3))
    means = np.stack([bg[y == c].mean(0) for c in range(4)])
    assert np.abs(means - means.mean(0)).max() < 0.03
    ds = load_dataset("shapes", n_samples=120)
    assert ds.channels == 3 and ds.input_shape == (32, 32)


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_have_a_visible_contrast_of_fixed_polarity(size):
    # the shape is the background plus 0.25-0.5 in every channel: the brightest pixels (the
    # shape covers >= 4 % of the image) exceed the background (the median) by clearly more
    # than the background's ramp (<= 0.1) and noise (sigma 0.05) in every channel of every
    # image, and the darkest pixels lie within ramp and noise of it
    x, _ = shapes(200, size, seed=2)
    flat = x.reshape(200, 3, -1)
    med = np.median(flat, -1)
    assert (np.quantile(flat, 0.99, axis=-1) - med).min() > 0.2
    assert (med - np.quantile(flat, 0.01, axis=-1)).max() < 0.25
    # the background (the median: the shape covers under half of the image) is dark
    assert 0.05 < med.min() and med.max() < 0.55


def test_shapes_size_is_checked_and_config_reaches_the_generator():
    with pytest.raises(PdenetsError, match="size"):
        shapes(10, 7)
    cfg = Config()
    cfg.data.name, cfg.data.image_size, cfg.data.n_samples = "shapes", 16, 80
    ds = load_dataset_config(cfg.data)
    assert ds.input_shape == (16, 16) and ds.x_train.shape[1:] == (3, 16, 16)
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(overrides=["data.image_size=4"])


def test_multichannel_npz_files(tmp_path):
    rng = np.random.default_rng(0)
    p4 = tmp_path / "img.npz"
    np.savez(p4, x=rng.random((30, 3, 5, 4)), y=np.arange(30) % 2)
    ds = load_dataset(str(p4))
    assert ds.channels == 3 and ds.input_shape == (5, 4) and ds.x_train.shape[1:] == (3, 5, 4)
    p3 = tmp_path / "sig.npz"
    np.savez(p3, x=rng.random((30, 2, 50)), y=np.arange(30) % 3, channels=np.array(2))
    ds = load_dataset(str(p3))
    assert ds.channels == 2 and ds.input_shape == (50,)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=rng.random((30, 2, 50)), y=np.arange(30) % 3, channels=np.array(3))
    with pytest.raises(PdenetsError, match="channels"):
        load_dataset(str(bad))
    # without 'channels' a 3-D x is one-channel images
    p = tmp_path / "gray.npz"
    np.savez(p, x=rng.random((30, 6, 6)), y=np.arange(30) % 2)
    ds = load_dataset(str(p))
    assert ds.channels == 1 and ds.input_shape == (6, 6)


def test_conv_network_trains_on_multichannel_images():
    from pdenets.training import make_trainer

    cfg = Config()
    cfg.data.name, cfg.data.n_samples = "shapes", 60
    cfg.model.kernel, cfg.model.channels, cfg.model.steps = "conv", 2, 2
    cfg.train.epochs = 1
    tr = make_trainer(cfg, load_dataset_config(cfg.data))
    res = tr.fit()
    assert np.isfinite(res.history[-1]["train_objective"])
    assert np.isfinite(res.history[-1]["val_loss"])
