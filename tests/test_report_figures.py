"""report.py --figures on a hand-built experiment folder (one trial trained here with fit, its Tune-
style checkpoint and result.json written by the test): every file exists and is listed in
summary.md; the per-class AP, the PR curve and the test mAP agree with scikit-learn recomputed from
the exported embeddings and with the trial's own reported scores; a checkpoint of another config
is one error line. Both command forms parse: the README's `report.py --figures <experiment>` and
`report.py <experiment> --figures`; `--figures-from retrain` retrains even where a checkpoint exists."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import average_precision_score, precision_recall_curve

import report
from hscmae.baselines import linear_cca_baseline
from hscmae.config import config_from_dict
from hscmae.data import load_data
from hscmae.train import fit

TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=3, threads=1, test_cca="auto")
TRIAL = "run_trial_abc12_00000_0_x=1_2026-01-01_00-00-00"


def _experiment(root, cfg_dict, ckpt_cfg=None):
    """A folder shaped like tune_main.py's: space.json, base_config.yaml, data.json, one trial."""
    exp = root / "exp"
    trial = exp / TRIAL
    (trial / "checkpoint_000000").mkdir(parents=True)
    cfg = config_from_dict(ckpt_cfg or cfg_dict)
    data = load_data(cfg.data)
    lines = []

    def on_epoch(m, save):
        lines.append(json.dumps({**m, "trial_id": "abc12", "training_iteration": m["epoch"]}))
        if m["epoch"] == cfg.epochs:
            save(str(trial / "checkpoint_000000" / "checkpoint.pt"))
    final = fit(cfg, data, on_epoch=on_epoch, log=None)
    (trial / "result.json").write_text("\n".join(lines) + "\n")
    (trial / "params.json").write_text("{}")
    (exp / "space.json").write_text(json.dumps({"name": "hand", "params": {}, "fixed": {},
                                                "max_epochs": cfg_dict["epochs"]}))
    (exp / "base_config.yaml").write_text(yaml.safe_dump(cfg_dict))
    (exp / "data.json").write_text(json.dumps({"fingerprint": data.fingerprint()}))
    return exp, final, data


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    exp, final, data = _experiment(root, TINY)
    out = root / "report"
    assert report.main(["--figures", str(exp), "--out", str(out)]) == 0  # the README's form
    return out, final, data


def _scores(q, g):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q.astype(np.float64) @ g.T.astype(np.float64)


def test_every_file_is_written_and_listed(figures):
    out, _, _ = figures
    summary = (out / "summary.md").read_text()
    for name in ("fig_pr.png", "fig_pr.pdf", "fig_per_class.png", "fig_per_class.pdf", "fig_embedding_map.png",
                 "fig_embedding_map.pdf", "per_class_ap.md", "per_class_ap.parquet", "pr_curves.parquet",
                 "retrieval_examples.md", "embeddings.npz"):
        assert (out / name).stat().st_size > 0, name
        assert f"({name})" in summary, name
    assert (out / "fig_pr.pdf").read_bytes().startswith(b"%PDF")
    assert "last checkpoint" in summary and "all 91 test clips" in summary
    ex = (out / "retrieval_examples.md").read_text()
    assert ex.count("Query: audio") == 3 and ex.count("Query: visual") == 3


def test_numbers_match_sklearn_and_the_trial(figures):
    out, final, data = figures
    z = np.load(out / "embeddings.npz", allow_pickle=False)
    te = z["test"]
    lab = z["labels"][te]
    a, v = z["audio_cca"][te], z["visual_cca"][te]
    ap = {"a2v": [], "v2a": []}
    pr = {}
    levels = np.linspace(0, 1, 11)
    for d, s in (("a2v", _scores(a, v)), ("v2a", _scores(v, a))):
        curves = []
        for i in range(len(te)):
            y = lab == lab[i]
            ap[d].append(average_precision_score(y, s[i]))
            p, r, _ = precision_recall_curve(y, s[i])
            curves.append([p[:-1][r[:-1] >= lv - 1e-12].max() for lv in levels])
        pr[d] = np.mean(curves, axis=0)
        ap[d] = np.array(ap[d])
    # the model is the trial's: its test scores are the ones the trial reported
    assert ap["a2v"].mean() == pytest.approx(final["test_map_a2v"], abs=1e-5)
    assert ap["v2a"].mean() == pytest.approx(final["test_map_v2a"], abs=1e-5)
    t = pd.read_parquet(out / "per_class_ap.parquet")
    assert sorted(t["class"]) == sorted(np.unique(lab))
    assert list(t["hscmae_ap"]) == sorted(t["hscmae_ap"], reverse=True)
    for row in t.itertuples():
        assert row.hscmae_ap_a2v == pytest.approx(ap["a2v"][lab == row[1]].mean(), abs=1e-6)
        assert row.hscmae_ap_v2a == pytest.approx(ap["v2a"][lab == row[1]].mean(), abs=1e-6)
        assert row.n_test == (lab == row[1]).sum()
    c = pd.read_parquet(out / "pr_curves.parquet")
    for d in ("a2v", "v2a"):
        mine = c[(c["method"] == "HSC-MAE") & (c["direction"] == d)].sort_values("recall")
        np.testing.assert_allclose(mine["recall"], levels)
        np.testing.assert_allclose(mine["precision"], pr[d], atol=1e-6)
    lin = linear_cca_baseline(data)
    for d in ("a2v", "v2a"):
        got = c[(c["method"] == "linear CCA (raw features)") & (c["direction"] == d)]["map"].iloc[0]
        assert got == pytest.approx(lin[f"test_map_{d}"], abs=1e-9)


def test_a_checkpoint_of_another_config_is_one_error_line(tmp_path, capsys):
    exp, _, _ = _experiment(tmp_path, TINY, ckpt_cfg={**TINY, "hidden_dim": 24})
    assert report.main([str(exp), "--out", str(tmp_path / "r"), "--figures"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "hidden_dim" in err[0] and "checkpoint.pt" in err[0]


@pytest.mark.parametrize("how", ["no checkpoint",  # the same retrain, asked for by flag: slow suite
                                 pytest.param("--figures-from retrain", marks=pytest.mark.slow)])
def test_without_a_checkpoint_or_when_asked_the_config_is_retrained_to_the_same_model(tmp_path, how):
    """config + seed -> the same model: a retrain scores exactly what the trial reported."""
    exp, final, _ = _experiment(tmp_path, TINY)
    out = tmp_path / "r"
    if how == "no checkpoint":
        for p in (exp / TRIAL).glob("checkpoint_*/checkpoint.pt"):
            p.unlink()
        argv = [str(exp), "--out", str(out), "--figures"]  # the experiment first: the other form
    else:
        argv = ["--figures", str(exp), "--figures-from", "retrain", "--out", str(out)]
    assert report.main(argv) == 0
    summary = (out / "summary.md").read_text()
    assert "retrained here" in summary and (how != "--figures-from retrain" or "--figures-from retrain" in summary)
    c = pd.read_parquet(out / "pr_curves.parquet")
    got = c[c["method"] == "HSC-MAE"].groupby("direction")["map"].first()
    assert got["a2v"] == pytest.approx(final["test_map_a2v"], abs=1e-9)
    assert got["v2a"] == pytest.approx(final["test_map_v2a"], abs=1e-9)


@pytest.mark.parametrize("argv, figures, source", [
    (["--figures", "EXP"], True, "checkpoint"),
    (["EXP", "--figures"], True, "checkpoint"),
    (["--figures", "EXP", "--figures-from", "retrain"], True, "retrain"),
    (["EXP", "--figures-from", "checkpoint"], True, "checkpoint"),
    (["EXP"], False, "checkpoint"),
])
def test_figures_is_a_flag_and_figures_from_picks_the_model(argv, figures, source):
    args = report.parse_args(argv)
    assert (args.experiment, args.figures, args.figures_from) == ("EXP", figures, source)


@pytest.mark.parametrize("argv, says", [
    (["--figures", "retrain", "EXP"], "--figures takes no value: use --figures --figures-from retrain"),
    (["--figures", "EXP", "--figures-from", "best"], "invalid choice: 'best'"),
])
def test_the_old_or_a_bad_figures_form_is_one_usage_error(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        report.parse_args(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err
