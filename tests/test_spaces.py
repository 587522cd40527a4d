"""The `components` and `wide` spaces: their constraints, checked before Ray starts, and one smoke
search of `components`."""
import glob
import itertools
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml

import tune_main
from hscmae.config import ConfigError
from search_spaces import SPACES, Space, trial_config
from search_spaces.space import _corner_combos

from conftest import ROOT, SEARCH_ENV as ENV  # noqa: E402
BASE = yaml.safe_load(open(os.path.join(ROOT, "config", "hsc_mae.yaml")))
LOSSES = ("use_recon", "use_dcca", "use_infonce", "use_distill", "use_cross_recon")


def _draw(space: Space, n: int, seed: int = 0) -> list[dict]:
    """n trial configs sampled by a real Optuna study (random sampler), as the harness builds them."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        derived = space.sample(t) or {}
        out.append(trial_config(BASE, space.fixed, {**t.params, **derived}).to_dict())
        study.tell(t, 0.0)
    return out


def test_components_space_samples_only_valid_configs_and_varies_every_switch():
    cfgs = _draw(SPACES["components"], 300)
    for c in cfgs:  # the rule, restated here: at least one loss term on
        assert any(c[k] for k in LOSSES), c
    for key in ("use_recon", "use_dcca", "use_infonce", "use_distill", "use_ema", "learned_weights",
                "use_cross_recon"):
        assert {c[key] for c in cfgs} == {True, False}, key
    assert {c["affinity"] for c in cfgs} == {"cross", "fused"}
    assert {c["ema_schedule"] for c in cfgs} == {"constant", "ramp"}
    assert {c["warmup_epochs"] for c in cfgs} == {0, 5}
    assert {c["enc_layers"] for c in cfgs} == {2, 3} and {c["dec_layers"] for c in cfgs} == {2, 3}
    assert {c["hidden_dim"] for c in cfgs} == {256, 512, 1024}
    assert 0.0 <= min(c["enc_dropout"] for c in cfgs) and max(c["dec_dropout"] for c in cfgs) <= 0.3
    # every combination of the three optional terms is reachable, including "only InfoNCE"
    seen = {(c["use_recon"], c["use_dcca"], c["use_distill"]) for c in cfgs}
    assert seen == set(itertools.product([True, False], repeat=3))
    assert all(c["use_infonce"] for c in cfgs if not (c["use_recon"] or c["use_dcca"] or c["use_distill"]))
    assert all(c["epochs"] == 60 for c in cfgs)


def test_wide_space_searches_the_architecture():
    params = SPACES["wide"].describe()["params"]
    for key in ("lr", "weight_decay", "batch_size", "embed_dim", "hidden_dim", "enc_layers", "dec_layers",
                "enc_dropout", "dec_dropout"):
        assert key in params, key
    for c in _draw(SPACES["wide"], 100):
        assert c["cca_dim"] < c["batch_size"] and c["cca_dim"] <= c["embed_dim"]


def test_shipped_config_passes_every_space_check():
    for space in SPACES.values():
        space.check(BASE)


def test_corner_combos_cover_every_pair_of_a_big_space():
    options = [[0, 1]] * 14 + [["a", "b", "c"]]  # 2^14 * 3 > 4096 combinations
    combos = list(_corner_combos(options, limit=4096))
    for i, j in itertools.combinations(range(len(options)), 2):
        want = set(itertools.product(options[i], options[j]))
        assert {(c[i], c[j]) for c in combos} == want, (i, j)


def test_check_finds_an_impossible_corner_of_an_early_parameter_in_a_big_space():
    # the impossible value sits on the first parameter; a prefix of the product (the first 4096
    # combinations vary only the last parameters) would never reach it
    def sample(trial):
        trial.suggest_categorical("cca_dim", [8, 96])  # 96 >= batch_size 64: impossible
        for i in range(14):  # search-only helpers (not Config keys): dropped from the config
            trial.suggest_categorical(f"flag_{i}", [True, False])
        return {}

    with pytest.raises(ConfigError, match="cca_dim"):
        Space(name="big", description="", sample=sample).check(BASE)


def _fails_before_ray(args, match, capsys):
    import ray

    assert tune_main.main(args) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert not ray.is_initialized()


def test_components_impossible_corners_fail_before_ray(tmp_path, capsys):
    cfg = tmp_path / "small_batch.yaml"
    cfg.write_text("batch_size: 40\ncca_dim: 16\n")  # valid alone; the space samples cca_dim 48
    _fails_before_ray(["--space", "components", "--config", str(cfg), "--storage", str(tmp_path)],
                      "config key 'cca_dim'", capsys)
    # warm-up of 5 epochs is a corner of the space: 5 epochs cannot hold it
    _fails_before_ray(["--space", "components", "--max-epochs", "5", "--storage", str(tmp_path)],
                      "config key 'warmup_epochs'", capsys)


@pytest.mark.slow
def test_components_smoke_search(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tune_main.py"), "--space", "components", "--data", "synthetic:tiny",
           "--max-epochs", "6", "--num-samples", "2", "--storage", str(tmp_path), "--name", "comp"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV, cwd=ROOT)  # a loaded 2-core machine
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = glob.glob(str(tmp_path / "comp" / "run_trial_*" / "result.json"))
    assert len(results) == 2
    space = json.loads((tmp_path / "comp" / "space.json").read_text())
    assert space["name"] == "components" and "use_dcca" in space["params"]
    for f in results:
        last = json.loads(open(f).read().splitlines()[-1])
        assert last["epoch"] >= 1 and last["val_map"] == last["val_map"]  # a number, not NaN
