"""Data loading: validation errors name the file, splits are stratified, standardisation is train-only."""
import numpy as np
import pytest

from hscmae.data import DataError, export, load_data, make_synthetic, stratified_split


def _write(folder, audio, visual, labels):
    folder.mkdir(exist_ok=True)
    np.save(folder / "audio_features.npy", audio)
    np.save(folder / "visual_features.npy", visual)
    np.save(folder / "labels.npy", labels)
    return str(folder)


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    return tmp_path / "d", rng.normal(size=(60, 5)), rng.normal(size=(60, 7)), np.repeat(np.arange(4), 15)


def test_synthetic_is_deterministic_and_shaped():
    a1, v1, l1 = make_synthetic(n=300, classes=5, audio_dim=16, visual_dim=32, seed=3)
    a2, v2, l2 = make_synthetic(n=300, classes=5, audio_dim=16, visual_dim=32, seed=3)
    assert a1.shape == (300, 16) and v1.shape == (300, 32) and l1.shape == (300,)
    assert np.array_equal(a1, a2) and np.array_equal(v1, v2) and np.array_equal(l1, l2)
    assert (v1 >= 0).all()  # Inception-like non-negative visual features
    assert set(np.unique(l1)) == set(range(5))


def test_ave_preset_is_ave_sized():
    ds = load_data("synthetic:ave")
    assert ds.audio.shape == (4143, 128) and ds.visual.shape == (4143, 1024)
    assert len(np.unique(ds.labels)) == 28


def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.repeat(np.arange(5), [3, 10, 20, 40, 100])
    s = stratified_split(labels, seed=1)
    assert np.array_equal(np.sort(np.concatenate(list(s.values()))), np.arange(len(labels)))
    for part in s.values():
        assert set(labels[part]) == set(range(5))  # every class in every split
    assert all(np.array_equal(s[k], stratified_split(labels, seed=1)[k]) for k in s)
    assert not all(np.array_equal(s[k], stratified_split(labels, seed=2)[k]) for k in s)


def test_standardisation_uses_train_statistics_only(good):
    folder, a, v, l = good
    a[:, 2] = 5.0  # constant column: must not divide by zero
    with pytest.warns(UserWarning, match="constant column"):
        ds = load_data(_write(folder, a, v, l))
    tr = ds.splits["train"]
    np.testing.assert_allclose(ds.audio[tr].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.visual[tr].std(0), 1, atol=1e-4)
    expected = (a[:, 0] - a[tr, 0].mean()) / a[tr, 0].std()
    np.testing.assert_allclose(ds.audio[:, 0], expected, rtol=1e-4, atol=1e-5)
    assert np.isfinite(ds.audio).all() and (ds.audio[:, 2] == 0).all()


def test_export_round_trip_keeps_split(tmp_path):
    export("synthetic:tiny", str(tmp_path / "x"))
    a = load_data("synthetic:tiny")
    b = load_data(str(tmp_path / "x"), split_seed=99)  # splits.npz wins over the split seed
    for k in ("train", "val", "test"):
        assert np.array_equal(a.splits[k], b.splits[k])
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-6)
    assert a.fingerprint() == load_data("synthetic:tiny").fingerprint()
    assert a.fingerprint() != load_data("synthetic:tiny", split_seed=1).fingerprint()


def _expect(folder, match):
    with pytest.raises(DataError, match=match):
        load_data(str(folder))


def test_missing_file(good):
    folder, a, v, l = good
    _write(folder, a, v, l)
    (folder / "labels.npy").unlink()
    _expect(folder, r"labels.npy: file not found")


def test_n_mismatch(good):
    folder, a, v, l = good
    _expect(_write(folder, a, v[:50], l), r"same number of clips.*audio_features.npy: 60.*visual_features.npy: 50")


def test_not_2d(good):
    folder, a, v, l = good
    _expect(_write(folder, a[:, 0], v, l), r"audio_features.npy: expected a 2-D array")
    # 3-D (clips x segments x dims) is accepted since issue 16 (pooled by temporal_pool); 4-D is not
    _expect(_write(folder, a, v.reshape(60, 7, 1, 1), l), r"visual_features.npy: expected a 2-D array")


def test_nan_rows_are_counted(good):
    folder, a, v, l = good
    v[[3, 9], 1] = np.nan
    v[20, 0] = np.inf
    _expect(_write(folder, a, v, l), r"visual_features.npy: 3 row\(s\) contain NaN or Inf")


def test_bad_labels(good):
    folder, a, v, l = good
    _expect(_write(folder, a, v, l + 0.5), r"labels.npy: expected integer class ids")
    _expect(_write(folder, a, v, l - 2), r"labels.npy: expected non-negative")
    l2 = l.copy()
    l2[:2] = 9  # class 9 has two clips: cannot be in train, val and test
    _expect(_write(folder, a, v, l2), r"labels.npy: class\(es\) \[9\] have fewer than 3 clips")


def test_empty_and_pickled(good):
    folder, a, v, l = good
    _expect(_write(folder, a[:0], v[:0], l[:0]), r"audio_features.npy: empty array")
    _write(folder, a, v, l)
    np.save(folder / "audio_features.npy", np.array([{"x": 1}] * 60, dtype=object), allow_pickle=True)
    _expect(folder, r"audio_features.npy: cannot load without pickle")
    (folder / "visual_features.npy").write_text("not an array")
    np.save(folder / "audio_features.npy", a)
    _expect(folder, r"visual_features.npy: not a readable .npy")


def test_bad_splits_file(good):
    folder, a, v, l = good
    _write(folder, a, v, l)
    np.savez(folder / "splits.npz", train=np.arange(40), val=np.arange(35, 50), test=np.arange(50, 60))
    _expect(folder, r"splits.npz: split 'val' overlaps")
    np.savez(folder / "splits.npz", train=np.arange(40), val=np.arange(40, 50))
    _expect(folder, r"splits.npz: missing split array\(s\) \['test'\]")


def test_unknown_source():
    with pytest.raises(DataError, match="unknown synthetic preset 'nope'"):
        load_data("synthetic:nope")
    with pytest.raises(DataError, match="not a folder"):
        load_data("/no/such/folder")
    with pytest.raises(DataError, match="unknown option 'q'"):
        load_data("synthetic:tiny,q=3")
