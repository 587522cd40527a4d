"""Synthetic presets: adding one (or a generator option) must not change the existing presets'
data. The digests below were computed from make_synthetic at commit af6b832, before the
max_events / spurious_std options and the "plain" preset existed (numpy 2.4's PCG64 streams)."""
import hashlib

import numpy as np
import pytest

from hscmae.data import DataError, PRESETS, load_data, make_synthetic

BEFORE = {
    "tiny": "d16334bf3d2122b10a47b34602dac591c6ebca933152640fdcd91537dc037348",
    "ave": "3bab8c76191fe28628634e127252ae10287b4348d5420662ec93fe8cd135f910",
    "vegas": "72a1d65a6c3528df78d5a88970c1eb3dd2bdfc1a8acfcdf44b05dbaf430e518b",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vegas" else n
                                  for n in sorted(BEFORE)])  # vegas: the big one (same generator)
def test_existing_presets_are_bit_identical(name):
    h = hashlib.sha256()
    for a in make_synthetic(**PRESETS[name]):
        h.update(a.tobytes())
    assert h.hexdigest() == BEFORE[name]


def test_plain_preset_has_none_of_the_generator_structures():
    p = PRESETS["plain"]
    assert (p["p_both"], p["mismatch"], p["max_events"], p["spurious_std"]) == (1.0, 0.0, 1, 0.0)
    d = load_data("synthetic:plain")
    assert d.audio.shape == (1797, 32) and d.visual.shape == (1797, 32) and len(np.unique(d.labels)) == 10
    # each option changes the data it should (same seed, one option back at its default)
    base = make_synthetic(**p)[0]
    for key, default in (("spurious_std", 1.5), ("max_events", 3), ("mismatch", 0.1)):
        other = make_synthetic(**{**p, key: default})
        same = np.array_equal(base, other[0]) if key != "mismatch" else np.array_equal(make_synthetic(**p)[1], other[1])
        assert not same, key


def test_float_options_parse_and_bad_ones_are_refused():
    d = load_data("synthetic:plain,spurious_std=1.5,n=300")
    assert len(d) == 300
    with pytest.raises(DataError, match="spurious_std"):
        load_data("synthetic:plain,spurious_std=lots")
