"""The load-time challenges (hscmae.data.challenges): pair_noise shuffles exactly round(rate x
n_train) train pairs into wrong pairs and nothing else, seeded; mix_events and shared_nuisance do
what they say; all off is today's data, byte for byte. Every check compares against the clean
load's arrays, indexed here independently."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from hscmae.config import ConfigError, config_from_dict
from hscmae.data import DataError, export, load_data, load_data_for
from hscmae.data import challenges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = "synthetic:tiny"


@pytest.fixture(scope="module")
def clean():
    return load_data(SRC)


def _changed_rows(a, b):
    return np.flatnonzero((a != b).any(axis=1))


def test_shuffled_count_and_only_train_visual_rows_change(clean):
    noisy = load_data(SRC, pair_noise=0.3, pair_noise_seed=4)
    train = clean.splits["train"]
    k = round(0.3 * len(train))
    changed = _changed_rows(clean.visual, noisy.visual)
    assert len(changed) == k and set(changed) <= set(train.tolist())
    assert noisy.meta["pair_noise"]["shuffled"] == k
    for part in ("val", "test"):  # byte-identical to the clean load
        idx = clean.splits[part]
        assert clean.visual[idx].tobytes() == noisy.visual[idx].tobytes()
        assert clean.audio[idx].tobytes() == noisy.audio[idx].tobytes()
    assert clean.audio.tobytes() == noisy.audio.tobytes()  # audio and labels never move
    assert clean.labels.tobytes() == noisy.labels.tobytes()
    for k_ in ("train", "val", "test"):
        np.testing.assert_array_equal(clean.splits[k_], noisy.splits[k_])


def test_each_chosen_item_gets_another_chosen_items_visual_vector(clean):
    noisy = load_data(SRC, pair_noise=0.5, pair_noise_seed=1)
    train = clean.splits["train"]
    changed = _changed_rows(clean.visual, noisy.visual)
    sources, same = [], 0
    for i in changed:
        hits = np.flatnonzero((clean.visual[train] == noisy.visual[i]).all(axis=1))
        assert len(hits) == 1, "the new vector is exactly one clean train row"
        j = train[hits[0]]
        assert j != i
        sources.append(j)
        same += int(clean.labels[i] == clean.labels[j])
    # a derangement among the chosen: every chosen vector goes to exactly one other chosen item
    assert sorted(sources) == sorted(changed.tolist())
    meta = noisy.meta["pair_noise"]
    assert meta["shuffled_same_class"] == same
    assert meta["effective_noise"] == pytest.approx((len(changed) - same) / len(train))
    assert (meta["rate"], meta["seed"]) == (0.5, 1)


def test_same_seed_same_permutation_other_seed_other(clean):
    a = load_data(SRC, pair_noise=0.4, pair_noise_seed=9)
    b = load_data(SRC, pair_noise=0.4, pair_noise_seed=9)
    c = load_data(SRC, pair_noise=0.4, pair_noise_seed=10)
    assert a.visual.tobytes() == b.visual.tobytes() and a.fingerprint() == b.fingerprint()
    assert a.visual.tobytes() != c.visual.tobytes() and a.fingerprint() != c.fingerprint()


def _fingerprint_by_hand(d) -> str:
    """Today's fingerprint, computed here: sha256 of dtype, shape and bytes of audio, visual, labels
    and the three splits."""
    h = hashlib.sha256()
    for a in [d.audio, d.visual, d.labels] + [d.splits[k] for k in ("train", "val", "test")]:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_rate_zero_is_bit_identical_and_keeps_the_fingerprint(clean):
    zero = load_data(SRC, pair_noise=0.0, pair_noise_seed=7, mix_events=0.0, mix_events_seed=3,
                     shared_nuisance=0.0, shared_nuisance_seed=5)
    for k in ("audio", "visual", "labels"):
        assert getattr(zero, k).tobytes() == getattr(clean, k).tobytes()
    assert zero.fingerprint() == clean.fingerprint() == _fingerprint_by_hand(clean)
    assert zero.meta == clean.meta and not {"pair_noise", "mix_events", "shared_nuisance"} & set(zero.meta)
    cfg = config_from_dict({"data": SRC, "pair_noise_seed": 7})
    assert load_data_for(cfg).fingerprint() == _fingerprint_by_hand(clean)


def test_the_fingerprint_covers_the_rate(clean):
    fps = {load_data_for(config_from_dict({"data": SRC, "pair_noise": r})).fingerprint() for r in (0.0, 0.2, 0.5)}
    assert len(fps) == 3  # so tune_main's fingerprint check refuses a resume on another rate
    assert clean.fingerprint() in fps


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_bad_rate_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match="'pair_noise'"):
        config_from_dict({"pair_noise": bad})
    with pytest.raises(DataError, match="pair_noise"):
        load_data(SRC, pair_noise=bad)


@pytest.mark.parametrize("key,bad", [("mix_events", 1.5), ("mix_events", -0.5), ("shared_nuisance", -1.0),
                                     ("pair_noise_seed", -1)])
def test_other_bad_values_are_config_errors_naming_the_key(key, bad):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict({key: bad})


def test_train_command_with_a_bad_rate_is_one_error_line():
    p = subprocess.run([sys.executable, "-m", "hscmae.train", "--set", "pair_noise=1.5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pair_noise" in lines[0]


@pytest.mark.parametrize("dest", ["folder", "tiny.h5"])
def test_every_source_takes_it(tmp_path, clean, dest):
    path = str(tmp_path / dest)
    export(SRC, path)
    base = load_data(path)
    noisy = load_data(path, pair_noise=0.5)
    n = len(base.splits["train"])
    changed = _changed_rows(base.visual, noisy.visual)
    assert len(changed) == round(0.5 * n) and set(changed) <= set(base.splits["train"].tolist())
    assert noisy.meta["pair_noise"]["shuffled"] == round(0.5 * n)


# ---------------------------------------------------------------------------------------------
# the other two challenges
# ---------------------------------------------------------------------------------------------
def test_mix_events_adds_another_class_item_of_the_same_split():
    rng = np.random.default_rng(0)
    n = 120
    a = rng.normal(size=(n, 5)).astype(np.float32)
    v = rng.normal(size=(n, 7)).astype(np.float32)
    labels = np.arange(n) % 4
    idx = rng.permutation(n)
    splits = {"train": np.sort(idx[:80]), "val": np.sort(idx[80:100]), "test": np.sort(idx[100:])}
    ma, mv, meta = challenges.mix_events(a, v, labels, splits, 0.25, seed=3)
    for part, members in splits.items():
        changed = _changed_rows(a[members], ma[members])
        assert len(changed) == round(0.25 * len(members)) == meta["mixed"][part]
        for i in members[changed]:
            da, dv = ma[i].astype(np.float64) - a[i], mv[i].astype(np.float64) - v[i]
            found = False
            for j in members:  # the partner: w x its views, the same w in both views, another class
                w = da @ a[j] / (a[j] @ a[j])
                if np.allclose(da, w * a[j], atol=1e-5) and np.allclose(dv, w * v[j], atol=1e-5):
                    assert labels[j] != labels[i] and 0.3 <= w <= 0.8
                    found = True
            assert found
    d = load_data(SRC, mix_events=0.3, mix_events_seed=2)
    clean = load_data(SRC)
    assert d.labels.tobytes() == clean.labels.tobytes()
    assert d.meta["mix_events"]["mixed"] == {k: round(0.3 * len(clean.splits[k])) for k in ("train", "val", "test")}
    assert d.fingerprint() != clean.fingerprint()


def test_shared_nuisance_is_one_8d_signal_in_both_views():
    rng = np.random.default_rng(1)
    n = 200
    a = rng.normal(size=(n, 20)).astype(np.float32) * 3
    v = rng.normal(size=(n, 30)).astype(np.float32)
    train = np.arange(150)
    na, nv, meta = challenges.add_shared_nuisance(a, v, train, 2.0, seed=5)
    da, dv = na.astype(np.float64) - a, nv.astype(np.float64) - v
    sa, sv = np.linalg.svd(da, compute_uv=False), np.linalg.svd(dv, compute_uv=False)
    assert (sa[8:] < 1e-4 * sa[0]).all() and (sa[7] > 1e-2 * sa[0])  # rank 8
    assert (sv[8:] < 1e-4 * sv[0]).all()
    # the same 8-d signal: each view's nuisance is a linear map of the other's
    coef, *_ = np.linalg.lstsq(da, dv, rcond=None)
    assert np.allclose(da @ coef, dv, atol=1e-4 * np.abs(dv).max())
    # scaled to the feature's std: per-feature nuisance std ~ 2 x the train std of that feature
    ratio = da[train].std(0) / a[train].std(0)
    assert 1.0 < np.median(ratio) < 3.0
    d, clean = load_data(SRC, shared_nuisance=1.0), load_data(SRC)
    assert d.meta["shared_nuisance"]["std"] == 1.0 and d.fingerprint() != clean.fingerprint()


# ---------------------------------------------------------------------------------------------
# found with issue 21: the export command on an unwritable destination
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dest", ["/proc/x.h5", "/proc/hscmae-export-dir"])
def test_export_to_an_unwritable_path_is_one_error_line(dest):
    p = subprocess.run([sys.executable, "-m", "hscmae.data", "export", SRC, dest], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {dest}: cannot write there"), p.stderr
    assert not os.path.exists(dest)


# ---------------------------------------------------------------------------------------------
# bench/bench_noise.py --quick: what a broken benchmark would get wrong
# ---------------------------------------------------------------------------------------------
def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_noise_under_test", os.path.join(ROOT, "bench", "bench_noise.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_noise_quick_trains_on_shuffled_train_pairs_and_tunes_on_val(tmp_path, clean):
    bench = _bench()
    bench_md = os.path.join(ROOT, "BENCHMARKS.md")
    before = open(bench_md, "rb").read() if os.path.exists(bench_md) else None
    out = str(tmp_path / "runs")
    tables = bench.main(["--quick", "--no-write", "--out", out])
    assert (open(bench_md, "rb").read() if before is not None else None) == before
    assert os.path.exists(os.path.join(out, "fig_noise.png"))
    runs = bench.read_runs(out)
    assert {r["rate"] for r in runs} == {0.0, 0.5}
    train = clean.splits["train"]
    for r in runs:
        if r["config"] is None:
            continue
        # what the run trained on is the noisy load its config names: the fingerprint it recorded
        # is that of load_data_for(its config), computed here
        data = load_data_for(config_from_dict({**r["config"]}) if "seed" in r["config"] else
                             config_from_dict({"data": r["config"]["data"], "pair_noise": r["config"]["pair_noise"]}))
        assert r["config"]["pair_noise"] == r["rate"] and r["fingerprint"] == data.fingerprint()
        changed = _changed_rows(clean.visual, data.visual)
        assert len(changed) == round(r["rate"] * len(train)) and set(changed) <= set(train.tolist())
        for part in ("val", "test"):
            assert data.visual[clean.splits[part]].tobytes() == clean.visual[clean.splits[part]].tobytes()
        if r["rate"] == 0:
            assert data.fingerprint() == clean.fingerprint()
    # each deep baseline's reported cell is its search point with the best *validation* mAP
    for m, label in (("dcca", bench.METHODS["dcca"]), ("dccae", bench.METHODS["dccae"])):
        row = next(x for x in tables["noise"] if x["method"] == label)
        for rate in (0.0, 0.5):
            search = [r for r in runs if r["method"] == m and r["rate"] == rate and r.get("search")]
            assert len(search) == 2
            by_val = max(search, key=lambda r: r["auto"]["val_map"])
            assert row[f"test mAP @ {int(100 * rate)}%"] == f"{by_val['auto']['test_map']:.3f}"
            chosen = [x for x in tables["baseline_search"] if x["baseline"] == label and x["noise"] == f"{int(100 * rate)}%"
                      and x["chosen"] == "yes"]
            assert [(c["lr"], c["cca_dim"]) for c in chosen] == [(by_val["point"]["lr"], by_val["point"]["cca_dim"])]
    # a rerun reads every run back instead of training again
    again = bench.main(["--quick", "--no-write", "--out", out])
    assert again["noise"] == tables["noise"] and len(bench.read_runs(out)) == len(runs)


def test_a_resume_on_another_noise_rate_is_refused(tmp_path, capsys):
    """tune_main's fingerprint check: an experiment made on the clean pairs, resumed with
    --set pair_noise=0.5, is one error line saying the data differ (before Ray starts)."""
    import json

    import ray

    sys.path.insert(0, ROOT)
    import tune_main

    clean_fp = load_data_for(config_from_dict({"data": SRC})).fingerprint()
    exp = tmp_path / "e"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"")  # what Tune's can_restore looks for
    (exp / "space.json").write_text(json.dumps({"name": "smoke", "num_samples": 6}))
    (exp / "data.json").write_text(json.dumps({"fingerprint": clean_fp}))
    rc = tune_main.main(["--space", "smoke", "--storage", str(tmp_path), "--name", "e", "--resume",
                         "--set", "pair_noise=0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "was run on different data" in err[0], (rc, err)
    assert not ray.is_initialized()
    # control: without the rate, the search's data is the experiment's (the refusal is the rate's)
    run = tune_main.prepare(tune_main.parse_args(["--space", "smoke", "--storage", str(tmp_path), "--name", "e"]))
    assert run["data"].fingerprint() == clean_fp


# the default path's plan, captured from bench_noise.py before --challenge was added (the same task
# list for today's runs, so their results folder stays valid): length and sha256 of its JSON (sorted
# keys), each task's config reduced to its keys off Config's defaults, so that a knob added later at
# its default (val_every) does not read as a changed plan. Re-captured so when val_every was added,
# after checking that the full-config hashes then equalled the first capture's without val_every.
PLAN_BEFORE = {
    "full": (187, "a612d9ee9f415a0323a36fd950aada7af7112a968a738b932a7cdb1948622a3a"),
    "quick": (16, "8e5989d3ffb21b2ca2f2903e648906d776ca78fba80ba89900cb5498719efad7"),
    "sub": (24, "1c5a89ddc3ba469e8ec6b5afed83ddf8362b8f7963d8864ada6df9c88bfdf135"),
}
PLAN_ARGV = {
    "full": ["--data", "data/a_halves", "--data", "data/b_lr", "--data", "synthetic:plain"],
    "quick": ["--quick"],
    "sub": ["--data", "data/a_halves", "--rates", "0,0.5", "--methods", "linear,dcca,dccae,shipped", "--no-ablation"],
}


@pytest.mark.parametrize("name", sorted(PLAN_BEFORE))
def test_bench_noise_default_plan_is_unchanged(name):
    import json

    bench = _bench()
    from hscmae.config import Config

    plan = bench.Bench(bench.parse_args(PLAN_ARGV[name])).plan()
    defaults = Config().to_dict()
    off_default = [{**t, "config": {k: v for k, v in t["config"].items() if k not in defaults or defaults[k] != v}}
                   if t.get("config") else t for t in plan]
    digest = hashlib.sha256(json.dumps(off_default, sort_keys=True).encode()).hexdigest()
    assert (len(plan), digest) == PLAN_BEFORE[name]
    if name == "sub":  # the documented order, readable: 50 % first (linear, shipped x 3, each baseline's
        # search at seed 0 then its chosen point at seeds 1, 2), then 0 %
        expect = [(k, r, m, s, c) for r in (0.5, 0.0) for k, m, s, c in
                  [("linear", "linear", None, None)] + [("fit", "shipped", s, None) for s in (0, 1, 2)]
                  + [x for b in ("dcca", "dccae") for x in [("fit", b, 0, 8), ("fit", b, 0, 16), ("chosen", b, 1, None),
                                                            ("chosen", b, 2, None)]]]
        assert [(t["kind"], t["rate"], t["method"], t["seed"], (t.get("point") or {}).get("cca_dim")) for t in plan] == expect


def test_bench_noise_challenge_mix_events_trains_on_mixed_data(tmp_path, clean):
    """--challenge mix_events: every stored run's config carries mix_events (its seed 0, pair_noise 0)
    and its fingerprint is that of an independent load with that value; the runs go under --out only,
    BENCHMARKS.md (--quick) and the pair_noise folder/figure are left alone."""
    import json

    bench = _bench()
    bench_md = os.path.join(ROOT, "BENCHMARKS.md")
    before = open(bench_md, "rb").read() if os.path.exists(bench_md) else None
    out = str(tmp_path / "me")
    tables = bench.main(["--quick", "--challenge", "mix_events", "--methods", "linear,dcca,shipped", "--out", out])
    assert (open(bench_md, "rb").read() if before is not None else None) == before
    assert not os.path.exists(os.path.join(out, "fig_noise.png"))
    runs = bench.read_runs(out, "mix_events")
    assert bench.read_runs(out) == []  # never read as pair_noise runs
    assert {r["rate"] for r in runs} == {0.0, 0.5} and {r["method"] for r in runs} == {"linear", "dcca", "shipped", "ablation"}
    for r in runs:
        cfg = r["config"]
        assert (cfg["mix_events"], cfg["mix_events_seed"], cfg.get("pair_noise", 0.0)) == (r["rate"], 0, 0.0)
        data = load_data(SRC, mix_events=r["rate"], mix_events_seed=0)
        assert r["fingerprint"] == data.fingerprint()
        if r["rate"] == 0:
            assert r["fingerprint"] == clean.fingerprint() and r["mix_events_meta"] == {}
        else:
            assert r["fingerprint"] != clean.fingerprint()
            assert r["mix_events_meta"]["mixed"] == {k: round(0.5 * len(v)) for k, v in clean.splits.items()}
    with open(os.path.join(out, "synthetic:tiny", "mix_events0.5", "shipped_s0.json")) as f:
        shipped = json.load(f)
    row = next(x for x in tables["mix_events"] if x.get("method") == bench.METHODS["shipped"])
    assert row["test mAP @ mix_events=0.5"] == f"{shipped['auto']['test_map']:.3f}"


@pytest.mark.parametrize("argv", [["--challenge", "mix_events", "--rates", "0,1.5"],
                                  ["--challenge", "shared_nuisance", "--rates", "-1"],
                                  ["--rates", "0,1"]])
def test_bench_noise_bad_challenge_value_is_one_error_line(argv):
    p = subprocess.run([sys.executable, os.path.join("bench", "bench_noise.py")] + argv, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "--rates" in lines[-1] and lines[-1].split(": ", 1)[1].startswith("error:"), p.stderr
