"""hscmae/data/real.py: the digits views are the image halves they claim to be (checked against
scikit-learn's flat pixel vectors, indexed here independently), and the built folder loads with a
fixed stratified split."""
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hscmae.data import load_data
from hscmae.data import real as real_data


def _pixels(cols=range(8), rows=range(8)):
    flat = load_digits().data  # (1797, 64), row-major 8 x 8
    return flat[:, [r * 8 + c for r in rows for c in cols]]


def test_views_are_the_image_halves():
    a, v, y = real_data.digits_views("lr")
    np.testing.assert_array_equal(a, _pixels(cols=range(4)))
    np.testing.assert_array_equal(v, _pixels(cols=range(4, 8)))
    np.testing.assert_array_equal(y, load_digits().target)
    a, v, _ = real_data.digits_views("tb")
    np.testing.assert_array_equal(a, _pixels(rows=range(4)))
    np.testing.assert_array_equal(v, _pixels(rows=range(4, 8)))


def test_built_folder_loads_with_a_fixed_stratified_split(tmp_path):
    path = real_data.build("sk_digits_lr", str(tmp_path))
    d = load_data(path, split_seed=5)  # splits.npz wins over any split_seed
    s = d.splits
    assert sorted(np.concatenate([s["train"], s["val"], s["test"]]).tolist()) == list(range(1797))
    for part in s.values():  # every class in every split, in about its overall share
        counts = np.bincount(d.labels[part], minlength=10)
        assert (counts > 0).all()
        np.testing.assert_allclose(counts / len(part), np.bincount(d.labels) / 1797, atol=0.02)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (1259, 269, 269)


def test_shared_halves_are_the_top_bottom_views_if_present():
    shared = real_data.shared_folder()
    if not shared or not os.path.isdir(os.path.join(shared, "sk_digits_halves")):
        pytest.skip("no shared real-data folder on this machine")
    a, v, y = real_data.digits_views("tb")
    folder = os.path.join(shared, "sk_digits_halves")
    np.testing.assert_array_equal(np.load(os.path.join(folder, "audio_features.npy")), a)
    np.testing.assert_array_equal(np.load(os.path.join(folder, "visual_features.npy")), v)
    np.testing.assert_array_equal(np.load(os.path.join(folder, "labels.npy")), y)
