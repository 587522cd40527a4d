"""python -m hscmae.eval --export: the embeddings file is plain arrays (no pickle), its labels and
splits are the data's, its post-CCA test embeddings score the reported test mAP under
scikit-learn's AP, the CCA it records whitens the train split; parquet holds the same rows; bad
input is one error line, exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.linalg
from sklearn.metrics import average_precision_score

from hscmae.config import config_from_dict, save_config
from hscmae.data import load_data
from hscmae.train import fit

from conftest import ROOT  # noqa: E402
TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=2, threads=1, test_cca="on")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = config_from_dict(TINY)
    fit(cfg, load_data(cfg.data), out_dir=str(d), log=None)
    save_config(cfg, str(d / "config.yaml"))
    return d


def _eval(run, *extra):
    """`python -m hscmae.eval` on the run, as a command."""
    return subprocess.run([sys.executable, "-m", "hscmae.eval", "--config", str(run / "config.yaml"),
                           "--checkpoint", str(run / "checkpoint.pt"), "--out", str(run), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _eval_here(run, capsys, *extra):
    """The same, hscmae.eval.main in this process (no interpreter and torch start-up per call):
    (exit code, stdout, stderr) as a CompletedProcess."""
    from hscmae.eval import main

    capsys.readouterr()
    code = main(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pt"),
                 "--out", str(run), *extra])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out.out, out.err)


def _sk_map(q, g, labels):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    return float(np.mean([average_precision_score(labels == labels[i], s[i]) for i in range(len(q))]))


def test_npz_export_is_plain_arrays_and_matches_the_protocol(run, tmp_path):
    r = _eval(run, "--export", str(tmp_path / "emb"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics_eval.json").read_text())
    z = np.load(tmp_path / "emb" / "embeddings.npz", allow_pickle=False)  # raises on any object array
    data = load_data("synthetic:tiny")
    np.testing.assert_array_equal(z["labels"], data.labels)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(z[split], data.splits[split])
    assert z["audio"].shape == z["visual"].shape == (len(data), 16)
    dim = int(z["test_cca_dim"])
    assert bool(z["test_cca"]) and 1 <= dim <= 16 and z["audio_cca"].shape == (len(data), dim)
    assert json.loads(str(z["config"]))["hidden_dim"] == 32
    te = z["test"]
    lab = z["labels"][te]
    # the reported scores, recomputed with scikit-learn on the exported post-CCA test embeddings
    assert _sk_map(z["audio_cca"][te], z["visual_cca"][te], lab) == pytest.approx(metrics["test_map_a2v"], abs=1e-5)
    assert _sk_map(z["visual_cca"][te], z["audio_cca"][te], lab) == pytest.approx(metrics["test_map_v2a"], abs=1e-5)
    # the recorded CCA, recomputed in closed form with scipy on the raw train embeddings (ridge
    # whitening + SVD); a canonical pair's sign is arbitrary, so columns are compared up to it
    tr, reg = z["train"], float(z["test_cca_reg"])
    a, v = z["audio"][tr].astype(np.float64), z["visual"][tr].astype(np.float64)
    ma, mv = a.mean(0), v.mean(0)
    n = len(a)
    kx = np.linalg.inv(np.real(scipy.linalg.sqrtm((a - ma).T @ (a - ma) / (n - 1) + reg * np.eye(a.shape[1]))))
    ky = np.linalg.inv(np.real(scipy.linalg.sqrtm((v - mv).T @ (v - mv) / (n - 1) + reg * np.eye(v.shape[1]))))
    u, _, vt = np.linalg.svd(kx @ ((a - ma).T @ (v - mv) / (n - 1)) @ ky)
    ref_a = (z["audio"] - ma) @ kx @ u[:, :dim]
    ref_v = (z["visual"] - mv) @ ky @ vt[:dim].T
    sign = np.sign(np.sum(ref_a * z["audio_cca"], axis=0))
    np.testing.assert_allclose(z["audio_cca"], ref_a * sign, atol=2e-3 * np.abs(ref_a).max())
    np.testing.assert_allclose(z["visual_cca"], ref_v * sign, atol=2e-3 * np.abs(ref_v).max())


def test_parquet_export_holds_the_same_rows(run, tmp_path, capsys):
    assert _eval_here(run, capsys, "--export", str(tmp_path / "npz")).returncode == 0
    r = _eval_here(run, capsys, "--export", str(tmp_path / "pq"), "--format", "parquet")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "npz" / "embeddings.npz", allow_pickle=False)
    for split in ("train", "val", "test"):
        t = pq.read_table(tmp_path / "pq" / f"embeddings_{split}.parquet")
        np.testing.assert_array_equal(t["index"].to_numpy(), z[split])
        np.testing.assert_array_equal(t["label"].to_numpy(), z["labels"][z[split]])
        for k in ("audio", "visual", "audio_cca", "visual_cca"):
            np.testing.assert_array_equal(np.stack(t[k].to_numpy(zero_copy_only=False)), z[k][z[split]])


def _one_error(r):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_bad_input_is_one_error_line(run, tmp_path, capsys):
    """(main() in this process: the command itself runs in the npz test.)"""
    msg = _one_error(_eval_here(run, capsys, "--export", str(tmp_path / "e"), "--set", "hidden_dim=48"))
    assert "checkpoint.pt" in msg and "hidden_dim" in msg
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = _one_error(_eval_here(run, capsys, "--export", str(blocker / "sub")))
    assert "not writable" in msg and "a_file" in msg
    # a data set of one class: retrieval would score AP 1 everywhere
    rng = np.random.default_rng(0)
    one = tmp_path / "one_class"
    one.mkdir()
    np.save(one / "audio_features.npy", rng.normal(size=(200, 32)).astype(np.float32))
    np.save(one / "visual_features.npy", rng.normal(size=(200, 64)).astype(np.float32))
    np.save(one / "labels.npy", np.zeros(200, dtype=np.int64))
    msg = _one_error(_eval_here(run, capsys, "--export", str(tmp_path / "e1"), "--data", str(one)))
    assert "1 class" in msg


def test_a_final_checkpoints_kept_choice_gives_the_final_evaluations_numbers(tmp_path):
    """The report reuses the choice a final checkpoint keeps instead of choosing again; with
    test_cca auto on a tiny model, the numbers must be fit's own final ones, and sklearn's."""
    from hscmae.checkpoint import final_choice, load_checkpoint, load_model
    from hscmae.export import protocol_embeddings

    cfg = config_from_dict({**TINY, "test_cca": "auto", "epochs": 3})
    data = load_data(cfg.data)
    final = fit(cfg, data, out_dir=str(tmp_path), log=None)
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    choice = final_choice(state, cfg)
    assert choice == [final["test_cca_reg"], final["test_cca_dim"]]
    emb = protocol_embeddings(load_model(cfg, data, str(tmp_path / "checkpoint.pt")), data, cfg, choice)
    for key in ("val_map", "test_map", "test_map_a2v", "test_map_v2a", "test_cca_dim", "test_cca_reg"):
        assert emb["scores"][key] == pytest.approx(final[key], abs=1e-9), key
    te = data.splits["test"]
    a, v, lab = emb["audio_cca"][te], emb["visual_cca"][te], data.labels[te]
    assert (_sk_map(a, v, lab) + _sk_map(v, a, lab)) / 2 == pytest.approx(final["test_map"], abs=1e-6)
    # an earlier epoch's checkpoint keeps only a between-epochs choice: the report chooses again
    assert final_choice({**state, "epoch": 2}, cfg) is None


def test_protocol_embeddings_are_the_scored_projection_without_another_fit(tmp_path, monkeypatch):
    """protocol_embeddings' audio_cca / visual_cca are the projection its scores are of (val rows
    score its val_map, by sklearn), from the scorer's own fit: one CCA fit for a kept choice."""
    import hscmae.protocol as P
    from hscmae.checkpoint import load_model
    from hscmae.export import protocol_embeddings

    cfg = config_from_dict({**TINY, "test_cca": "on", "epochs": 1})
    data = load_data(cfg.data)
    final = fit(cfg, data, out_dir=str(tmp_path), log=None)
    fits, fit_cca = [], P.fit_linear_cca
    monkeypatch.setattr(P, "fit_linear_cca", lambda *a, **k: fits.append(1) or fit_cca(*a, **k))
    model = load_model(cfg, data, str(tmp_path / "checkpoint.pt"))
    emb = protocol_embeddings(model, data, cfg, [final["test_cca_reg"], final["test_cca_dim"]])
    assert len(fits) == 1
    assert emb["audio_cca"].shape[1] == int(final["test_cca_dim"])
    va = data.splits["val"]
    a, v, lab = emb["audio_cca"][va], emb["visual_cca"][va], data.labels[va]
    assert (_sk_map(a, v, lab) + _sk_map(v, a, lab)) / 2 == pytest.approx(emb["scores"]["val_map"], abs=1e-6)
