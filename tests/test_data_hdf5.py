"""The authors' HDF5 feature files, 3-D (segment) features, scaling and export: every file here is
written independently with h5py / np.save inside the test, and every expected array is computed
here with numpy or scikit-learn, never by the loader."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler

from hscmae.data import DataError, export, load_data

RNG = np.random.default_rng(0)
N_TR, N_TE, C = 60, 20, 4  # train part / test part / classes


def _zscore(x, train):
    x = x.astype(np.float64)
    return (x - x[train].mean(0)) / x[train].std(0)


def _split_keys(path, audio, visual, lab_tr, lab_te, **extra):
    with h5py.File(path, "w") as f:
        f["audio_train"], f["audio_test"] = audio[:N_TR], audio[N_TR:]
        f["visual_train"], f["visual_test"] = visual[:N_TR], visual[N_TR:]
        f["lab_train"], f["lab_test"] = lab_tr, lab_te
        for k, v in extra.items():
            f[k] = v
    return str(path)


def _flag_column(path, audio, visual, labels, flags, flag_key="Train_test", **extra):
    with h5py.File(path, "w") as f:
        f["audio_feat"], f["visual_feat"], f["Label_ID"] = audio, visual, labels
        f[flag_key] = flags
        for k, v in extra.items():
            f[k] = v
    return str(path)


@pytest.fixture
def arrays():
    n = N_TR + N_TE
    labels = np.tile(np.arange(C), n // C)
    return RNG.normal(size=(n, 6)).astype(np.float32), RNG.normal(size=(n, 9)).astype(np.float32), labels


# ------------------------------------------------------------------------------------------------
# Layouts, labels, flags, splits
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("one_hot", [False, True])
def test_split_keys_layout_keeps_test_and_carves_val_per_class(tmp_path, arrays, one_hot):
    audio, visual, labels = arrays
    lab = np.eye(C, dtype=np.float32)[labels] if one_hot else labels.reshape(-1, 1)  # the authors' (N, 1)
    path = _split_keys(tmp_path / "s.h5", audio, visual, lab[:N_TR], lab[N_TR:])
    ds = load_data(path, split_seed=3)
    assert np.array_equal(ds.labels, labels)
    assert np.array_equal(ds.splits["test"], np.arange(N_TR, N_TR + N_TE))  # their test, exactly
    tr, va = ds.splits["train"], ds.splits["val"]
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(N_TR))  # val is out of their train
    for c in range(C):  # 15 train clips per class -> round(0.15 * 15) = 2 in val
        assert (labels[va] == c).sum() == 2
    np.testing.assert_allclose(ds.audio, _zscore(audio, tr), atol=1e-5)  # scaled on the carved train only
    np.testing.assert_allclose(ds.visual, _zscore(visual, tr), atol=1e-5)
    again, other = load_data(path, split_seed=3), load_data(path, split_seed=4)
    assert np.array_equal(again.splits["val"], va) and not np.array_equal(other.splits["val"], va)
    assert np.array_equal(other.splits["test"], ds.splits["test"])
    assert len(load_data(path, val_fraction=0.4).splits["val"]) == C * 6
    assert ds.meta["layout"] == "split-keys" and "carved" in ds.meta["val"]
    assert ds.meta["labels"] == ("one-hot" if one_hot else "class ids")


@pytest.mark.parametrize("flags", [
    pytest.param(lambda t: np.where(t, b"1", b"0").astype("S1"), id="bytes"),
    pytest.param(lambda t: np.array(["1" if x else "0" for x in t], dtype=h5py.string_dtype()), id="str"),
    pytest.param(lambda t: t.astype(np.int8), id="int"),
])
@pytest.mark.parametrize("flag_key", ["Train_test", "Split"])
def test_flag_column_layout(tmp_path, arrays, flags, flag_key):
    audio, visual, labels = arrays
    is_train = RNG.uniform(size=len(labels)) < 0.75
    path = _flag_column(tmp_path / "f.h5", audio, visual, labels, flags(is_train), flag_key)
    ds = load_data(path)
    assert np.array_equal(ds.splits["test"], np.flatnonzero(~is_train))
    assert np.array_equal(np.sort(np.concatenate([ds.splits["train"], ds.splits["val"]])), np.flatnonzero(is_train))
    np.testing.assert_allclose(ds.audio, _zscore(audio, ds.splits["train"]), atol=1e-5)
    assert ds.meta["layout"] == "flag-column" and ds.meta["flag_key"] == flag_key


def test_3d_features_pooled_mean_and_max_with_different_segment_counts(tmp_path, arrays):
    _, _, labels = arrays
    n = len(labels)
    audio = RNG.normal(size=(n, 10, 5)).astype(np.float32)  # AVE's release: clips x 10 s x dims
    visual = RNG.normal(size=(n, 3, 7)).astype(np.float64)  # another segment count, another dtype
    path = _split_keys(tmp_path / "seg.h5", audio, visual, labels[:N_TR], labels[N_TR:])
    for pool, f in (("mean", np.mean), ("max", np.max)):
        ds = load_data(path, temporal_pool=pool)
        tr = ds.splits["train"]
        np.testing.assert_allclose(ds.audio, _zscore(f(audio.astype(np.float64), axis=1), tr), atol=1e-4)
        np.testing.assert_allclose(ds.visual, _zscore(f(visual.astype(np.float32), axis=1), tr), atol=1e-4)
        assert ds.audio.shape == (n, 5) and ds.visual.shape == (n, 7) and pool in ds.meta["temporal_pool"]
    assert load_data(path, temporal_pool="mean").fingerprint() != load_data(path, temporal_pool="max").fingerprint()


def test_3d_npy_folder_is_pooled(tmp_path, arrays):
    _, visual, labels = arrays
    audio = RNG.normal(size=(len(labels), 4, 5))
    d = tmp_path / "folder"
    d.mkdir()
    np.save(d / "audio_features.npy", audio)
    np.save(d / "visual_features.npy", visual)
    np.save(d / "labels.npy", labels)
    ds = load_data(str(d), temporal_pool="max")
    np.testing.assert_allclose(ds.audio, _zscore(audio.astype(np.float32).max(1), ds.splits["train"]), atol=1e-4)


def test_minmax_matches_sklearn_fitted_on_train_only(tmp_path, arrays):
    audio, visual, labels = arrays
    visual[:, 2] = 3.0  # constant: sklearn leaves the range at 1
    path = _split_keys(tmp_path / "m.h5", audio, visual, labels[:N_TR], labels[N_TR:])
    with pytest.warns(UserWarning, match="constant column"):
        ds = load_data(path, normalize="minmax")
    tr = ds.splits["train"]
    for got, x in ((ds.audio, audio), (ds.visual, visual)):
        want = MinMaxScaler().fit(x[tr]).transform(x)  # fitted on train; transform clips nothing
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert ds.audio[tr].min() == 0 and ds.audio[tr].max() == 1
    assert ds.audio.min() < 0 or ds.audio.max() > 1  # val/test outside [0, 1]: not clipped


# ------------------------------------------------------------------------------------------------
# Export and round trip
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ave():
    return load_data("synthetic:ave")


@pytest.mark.parametrize("layout", ["split-keys", "flag-column"])
def test_round_trip_synthetic_ave_through_h5(tmp_path, layout, ave):
    a = ave
    path = str(tmp_path / "ave.h5")
    export("synthetic:ave", path, layout=layout)
    b = load_data(path)
    for k in ("train", "val", "test"):  # split-keys stores train part first: compare split by split
        assert np.array_equal(a.audio[a.splits[k]], b.audio[b.splits[k]])
        assert np.array_equal(a.visual[a.splits[k]], b.visual[b.splits[k]])
        assert np.array_equal(a.labels[a.splits[k]], b.labels[b.splits[k]])
    if layout == "flag-column":  # same clip order: the same data, bit for bit
        assert b.fingerprint() == a.fingerprint()
    # the authors' files carry no val: without our val_index key, val is carved from their train
    with h5py.File(path, "a") as f:
        del f["val_index"]
    c = load_data(path)
    assert np.array_equal(a.labels[a.splits["test"]], c.labels[c.splits["test"]])
    assert np.array_equal(a.audio[a.splits["test"]].size, c.audio[c.splits["test"]].size)
    train_part = np.setdiff1d(np.arange(len(c)), c.splits["test"])
    assert np.array_equal(np.union1d(c.splits["train"], c.splits["val"]), train_part)
    assert abs(len(c.splits["val"]) - 0.15 * len(train_part)) < 28  # per-class rounding, 28 classes


def test_cli_export_then_train_end_to_end(tmp_path):
    """The one subprocess: export a tiny file with the CLI; then train 1 epoch on it through the
    training CLI's main (in-process: a second interpreter would spend its time importing torch)."""
    from hscmae import train

    path = str(tmp_path / "t.h5")
    subprocess.run([sys.executable, "-m", "hscmae.data", "export", "synthetic:tiny,n=200", path, "--layout",
                    "flag-column"], check=True, capture_output=True, env={"PYTHONPATH": ".", "PATH": "/usr/bin:/bin"})
    with h5py.File(path) as f:
        assert set(f) == {"audio_feat", "visual_feat", "Label_ID", "Train_test", "val_index"}
        assert f["Train_test"].dtype.kind == "S"
    out = tmp_path / "run"
    assert train.main(["--data", path, "--out", str(out), "--set", "epochs=1", "hidden_dim=16", "embed_dim=8",
                       "cca_dim=4", "top_k=2", "batch_size=32", "threads=1", 'test_cca="off"']) == 0
    assert 0 < json.loads((out / "metrics.json").read_text())["test_map"] <= 1


# ------------------------------------------------------------------------------------------------
# Bad files: one error line naming the file and key, exit 2, before anything trains
# ------------------------------------------------------------------------------------------------
def _bad(tmp_path, arrays, case):
    audio, visual, labels = arrays
    ok_flags = (np.arange(len(labels)) < N_TR).astype(np.int8)
    p = tmp_path / "bad.h5"
    lt, le = labels[:N_TR], labels[N_TR:]
    if case == "not_hdf5":
        p.write_text("audio,visual\n1,2\n")
        return p, "not an HDF5 file"
    if case == "truncated":
        _split_keys(p, audio, visual, lt, le)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return p, "truncated"
    if case == "neither_layout":
        with h5py.File(p, "w") as f:
            f["audio"], f["visual"], f["lab_train"] = audio, visual, labels
        return p, r"neither layout.*keys found: \['audio', 'lab_train', 'visual'\].*audio_train.*Train_test or Split"
    if case == "vlen":
        with h5py.File(p, "w") as f:
            ds = f.create_dataset("audio_feat", (len(labels),), dtype=h5py.vlen_dtype(np.float32))
            for i in range(len(labels)):
                ds[i] = audio[i, : 1 + i % 3]
            f["visual_feat"], f["Label_ID"], f["Train_test"] = visual, labels, ok_flags
        return p, "key 'audio_feat': expected a numeric feature array, got a variable-length dtype"
    if case == "string":
        _split_keys(p, audio, visual.astype("S8"), lt, le)
        return p, "key 'visual_train': expected a numeric feature array, got a string dtype"
    if case == "object":
        with h5py.File(p, "w") as f:
            ref = f.create_dataset("x", data=[1.0]).ref
            _ = f.create_dataset("visual_test", data=np.array([ref] * N_TE, dtype=h5py.ref_dtype))
            f["audio_train"], f["audio_test"], f["visual_train"] = audio[:N_TR], audio[N_TR:], visual[:N_TR]
            f["lab_train"], f["lab_test"] = lt, le
        return p, "key 'visual_test': expected a numeric feature array, got a object dtype"
    if case == "lengths":
        _split_keys(p, audio, visual, lt, le)
        with h5py.File(p, "a") as f:
            del f["visual_train"]
            f["visual_train"] = visual[: N_TR - 3]
        return p, r"the train arrays differ in length \(audio_train: 60, visual_train: 57, lab_train: 60\)"
    if case == "1d":
        _split_keys(p, audio[:, 0], visual, lt, le)
        return p, r"key 'audio_train': expected a 2-D array .* or a 3-D one"
    if case == "4d":
        _flag_column(p, audio, visual.reshape(len(labels), 3, 3, 1), labels, ok_flags)
        return p, r"key 'visual_feat': expected a 2-D array .*got shape \(80, 3, 3, 1\)"
    if case == "nan":
        a = audio.copy()
        a[[2, 5, 70], 1] = [np.nan, np.inf, -np.inf]  # 2 rows of train, 1 of test
        _split_keys(p, a, visual, lt, le)
        return p, r"key 'audio_train': 2 row\(s\) contain NaN or Inf"
    if case == "nan_segments":
        v = RNG.normal(size=(len(labels), 3, 4))
        v[[1, 1, 9], [0, 2, 1], 0] = np.nan
        _flag_column(p, audio, v, labels, ok_flags)
        return p, r"key 'visual_feat': 2 row\(s\) contain NaN or Inf"
    if case == "multi_hot":
        oh = np.eye(C)[labels]
        oh[[0, 1], 3] = 1  # rows 0 and 1: two ones (row 3's label is 3 already)
        oh[7] = 0
        _split_keys(p, audio, visual, oh[:N_TR], oh[N_TR:])
        return p, r"key 'lab_train': label rows are neither integer class ids nor one-hot: 2 multi-hot row\(s\), 1 all-zero"
    if case == "label_strings":
        _flag_column(p, audio, visual, labels.astype("S2"), ok_flags)
        return p, "key 'Label_ID': expected integer class ids or one-hot rows"
    if case == "flags":
        f = np.where(np.arange(len(labels)) < 70, b"1", b"0").astype("S5")
        f[[3, 4]] = b"train"
        f[10] = b"2"
        _flag_column(p, audio, visual, labels, f, "Split")
        return p, r"key 'Split': 3 unknown split flag\(s\) \['2', 'train'\]"
    if case == "no_test":
        _flag_column(p, audio, visual, labels, np.ones(len(labels), np.int8))
        return p, r"key 'Train_test': 80 train and 0 test clip"
    raise AssertionError(case)


CASES = ["not_hdf5", "truncated", "neither_layout", "vlen", "string", "object", "lengths", "1d", "4d",
         "nan", "nan_segments", "multi_hot", "label_strings", "flags", "no_test"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_one_error_line_and_exit_2_before_training(tmp_path, arrays, case, capsys):
    from hscmae import train

    path, match = _bad(tmp_path, arrays, case)
    with pytest.raises(DataError, match=match):
        load_data(str(path))
    out = tmp_path / "run"
    assert train.main(["--data", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}") and not out.exists(), err


def test_bad_file_through_tune_main_fails_before_ray(tmp_path, arrays, capsys):
    import tune_main

    path, _ = _bad(tmp_path, arrays, "flags")
    assert tune_main.main(["--space", "smoke", "--data", str(path), "--storage", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}, key 'Split'"), err


def test_3d_h5_exports_to_a_folder_and_to_the_other_layout_unpooled(tmp_path, arrays):
    _, _, labels = arrays
    audio = RNG.normal(size=(len(labels), 10, 5)).astype(np.float32)
    visual = RNG.normal(size=(len(labels), 3, 7))
    src = _split_keys(tmp_path / "seg.h5", audio, visual, np.eye(C)[labels[:N_TR]], labels[N_TR:])
    export(src, str(tmp_path / "folder"))
    export(src, str(tmp_path / "flag.h5"), layout="flag-column")
    assert np.array_equal(np.load(tmp_path / "folder" / "audio_features.npy"), audio)  # segments kept
    prints = {load_data(p, temporal_pool="max").fingerprint() for p in (src, str(tmp_path / "folder"),
                                                                        str(tmp_path / "flag.h5"))}
    assert len(prints) == 1
