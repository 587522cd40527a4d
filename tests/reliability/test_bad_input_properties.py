"""Bad input, generated with hypothesis: every malformed config or feature folder is refused with
one DataError/ConfigError that names the key or the file, never a crash or a silent acceptance."""
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hscmae.config import Config, ConfigError, config_from_dict
from hscmae.data import DataError, load_data

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# (key, strategy of values that must be refused)
OUT_OF_RANGE = {
    "mask_ratio": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.just(float("nan"))),
    "ema_momentum": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0)),
    "temperature": st.floats(max_value=0.0),
    "top_k": st.one_of(st.integers(max_value=0), st.integers(min_value=257, max_value=10**6)),
    "cca_dim": st.integers(min_value=129, max_value=10**6),  # >= batch 256 or > embed 128
    "lr": st.floats(max_value=0.0),
    "batch_size": st.integers(max_value=0),
    "epochs": st.integers(max_value=0),
}


@FAST
@given(st.sampled_from(sorted(OUT_OF_RANGE)).flatmap(lambda k: st.tuples(st.just(k), OUT_OF_RANGE[k])))
def test_out_of_range_values_are_refused_naming_the_key(kv):
    key, value = kv
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict({"batch_size": 256, "embed_dim": 128, key: value})


@FAST
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20))
def test_unknown_keys_are_refused(key):
    if key in Config.__dataclass_fields__:
        return
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        config_from_dict({key: 1})


WRONG_TYPE = st.one_of(st.text(min_size=1).filter(lambda s: not _floaty(s)), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))


def _floaty(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


@FAST
@given(st.sampled_from(["batch_size", "epochs", "top_k", "lr", "mask_ratio", "use_dcca"]), WRONG_TYPE)
def test_wrong_types_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict({key: value})


@pytest.fixture(scope="module", autouse=True)
def _root(tmp_path_factory):
    global _ROOT  # one folder, rewritten by every example: hypothesis runs many
    _ROOT = str(tmp_path_factory.mktemp("bad"))


def _folder(audio, visual, labels):
    d = _ROOT
    np.save(os.path.join(d, "audio_features.npy"), audio)
    np.save(os.path.join(d, "visual_features.npy"), visual)
    np.save(os.path.join(d, "labels.npy"), labels)
    return d


@FAST
@given(n=st.integers(12, 40), da=st.integers(1, 6), dv=st.integers(1, 6), data=st.data())
def test_nan_inf_rows_are_counted_and_the_file_named(n, da, dv, data):
    rng = np.random.default_rng(0)
    audio, visual = rng.normal(size=(n, da)), rng.normal(size=(n, dv))
    labels = np.arange(n) % 3
    which = data.draw(st.sampled_from(["audio", "visual"]))
    rows = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    target = audio if which == "audio" else visual
    target[rows, 0] = bad
    with pytest.raises(DataError, match=rf"{which}_features.npy: {len(rows)} row\(s\) contain NaN or Inf"):
        load_data(_folder(audio, visual, labels))


@FAST
@given(na=st.integers(3, 30), nv=st.integers(3, 30), nl=st.integers(3, 30))
def test_length_mismatch_is_refused(na, nv, nl):
    if na == nv == nl:
        return
    with pytest.raises(DataError, match="same number of clips"):
        load_data(_folder(np.zeros((na, 2)), np.zeros((nv, 2)), np.arange(nl) % 2))


@FAST
@given(ndim=st.sampled_from([1, 4, 5]), which=st.sampled_from(["audio", "visual"]))
def test_wrong_rank_is_refused(ndim, which):
    shape = (12,) + (2,) * (ndim - 1)  # 3-D (clips x segments x dims) is accepted and pooled
    arrays = {"audio": np.zeros((12, 2)), "visual": np.zeros((12, 2))}
    arrays[which] = np.zeros(shape)
    with pytest.raises(DataError, match=f"{which}_features.npy: expected a 2-D array"):
        load_data(_folder(arrays["audio"], arrays["visual"], np.arange(12) % 3))


@FAST
@given(labels=st.lists(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
                       min_size=1, max_size=3))
def test_fractional_labels_are_refused(labels):
    lab = np.arange(12, dtype=float) % 3
    lab[: len(labels)] = labels
    with pytest.raises(DataError, match="labels.npy: expected integer class ids"):
        load_data(_folder(np.zeros((12, 2)), np.zeros((12, 2)), lab))


def test_fewer_train_clips_than_the_batch_is_refused():
    from hscmae.train import fit
    ds = load_data("synthetic:tiny")
    cfg = config_from_dict({"batch_size": 512, "cca_dim": 8, "embed_dim": 16})
    with pytest.raises(ConfigError, match=r"'batch_size': must be <= the number of training clips"):
        fit(cfg, ds, log=None)
