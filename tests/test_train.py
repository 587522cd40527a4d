"""Training: resume is bit-identical, divergence is reported, checkpoints are data not code,
the commands write their metrics."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from hscmae import checkpoint as C
from hscmae import train as T
from hscmae.config import config_from_dict

TINY = dict(data="synthetic:tiny", hidden_dim=32, embed_dim=16, cca_dim=4, top_k=3, batch_size=64,
            epochs=4, threads=1, test_cca="auto")


def test_fit_reports_every_epoch_and_returns_test_metrics(tiny):
    seen = []
    final = T.fit(config_from_dict(TINY), tiny, on_epoch=lambda m, save: seen.append(m), log=None)
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4]
    for key in ("val_map", "val_map_a2v", "val_map_v2a", "loss", "loss_recon", "loss_dcca",
                "loss_infonce", "loss_distill", "w_recon", "w_dcca"):
        assert key in seen[-1], key
    assert 0 < final["test_map"] <= 1 and final["test_map"] == pytest.approx(
        (final["test_map_a2v"] + final["test_map_v2a"]) / 2)


def test_batches_is_a_seeded_permutation_cut_into_full_batches(tiny):
    """T.batches against the loop written out by hand: a permutation of the train indices drawn
    from a generator in the same state, rows gathered by plain indexing, the ragged end dropped."""
    audio, visual = torch.from_numpy(tiny.audio), torch.from_numpy(tiny.visual)
    train = torch.from_numpy(tiny.splits["train"])
    got = list(T.batches(audio, visual, train, 64, torch.Generator().manual_seed(5)))
    perm = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(5))].numpy()
    assert len(got) == len(train) // 64
    for i, (xa, xv) in enumerate(got):
        rows = perm[i * 64:(i + 1) * 64]
        assert torch.equal(xa, audio[rows]) and torch.equal(xv, visual[rows])
    assert len({int(r) for r in perm[:len(got) * 64]}) == len(got) * 64  # no clip twice in an epoch


def test_epoch_metrics_split_the_epoch_into_train_s_and_eval_s(tiny):
    seen = []
    T.fit(config_from_dict({**TINY, "epochs": 2}), tiny, on_epoch=lambda m, save: seen.append(m), log=None)
    for m in seen:
        assert m["train_s"] > 0 and m["eval_s"] > 0
        assert m["train_s"] + m["eval_s"] == pytest.approx(m["epoch_time_s"], abs=1e-6)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny, tmp_path):
    cfg = config_from_dict(TINY)
    full = T.fit(cfg, tiny, log=None)
    ckpt = str(tmp_path / "ep2.pt")

    def stop_after_2(m, save):
        if m["epoch"] == 2:
            save(ckpt)
            return True
    T.fit(cfg, tiny, on_epoch=stop_after_2, log=None)
    resumed = T.fit(cfg, tiny, resume_from=ckpt, log=None)
    assert resumed["epoch"] == 4
    for k in ("loss", "val_map", "test_map", "test_map_a2v", "w_infonce"):
        assert resumed[k] == full[k], k


def test_learning_improves_over_the_untrained_model(tiny):
    one = T.fit(config_from_dict({**TINY, "epochs": 1, "lr": 3e-3}), tiny, log=None)
    many = T.fit(config_from_dict({**TINY, "epochs": 30, "lr": 3e-3}), tiny, log=None)
    assert many["val_map"] > one["val_map"] + 0.03  # measured: 0.258 -> 0.312


def test_nan_loss_raises_training_diverged(tiny, monkeypatch):
    monkeypatch.setattr(T.L, "dcca_loss", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(T.TrainingDiverged, match="epoch 1, step 1"):
        T.fit(config_from_dict(TINY), tiny, log=None)


def test_every_ablation_switch_trains(tiny):
    for off in ("use_recon", "use_dcca", "use_infonce", "use_ema", "use_distill", "learned_weights"):
        m = T.fit(config_from_dict({**TINY, "epochs": 1, off: False}), tiny, log=None)
        assert 0 < m["test_map"] <= 1, off
    m = T.fit(config_from_dict({**TINY, "epochs": 1, "use_recon": False, "use_infonce": False,
                                "use_distill": False}), tiny, log=None)
    assert "loss_recon" not in m and "loss_dcca" in m


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/hscmae_pwned",))


def test_malicious_and_corrupt_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": _Boom()}, bad, pickle_module=pickle)
    with pytest.raises(C.CheckpointError, match="evil.pt: not a loadable"):
        C.load_checkpoint(str(bad))
    assert not os.path.exists("/tmp/hscmae_pwned")
    trunc = tmp_path / "trunc.pt"
    C.save_checkpoint(str(trunc), {"x": torch.zeros(1000)})
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(C.CheckpointError, match="trunc.pt"):
        C.load_checkpoint(str(trunc))
    with pytest.raises(C.CheckpointError, match="lacks"):
        C.save_checkpoint(str(trunc), {"x": 1}) or C.load_checkpoint(str(trunc))


def test_train_and_eval_commands(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in TINY.items() if k != "data"]
    # the train command as a command; the eval command's main() in this process (tests/test_export.py
    # runs `python -m hscmae.eval` itself)
    r = subprocess.run([sys.executable, "-m", "hscmae.train", "--config", "config/hsc_mae.yaml",
                        "--data", "synthetic:tiny", "--out", str(out), "--set", *sets],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "epoch   4/4" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    for k in ("val_map", "test_map_a2v", "test_map_v2a", "test_map"):
        assert isinstance(m[k], float)
    from hscmae.eval import main as eval_main

    assert eval_main(["--config", str(out / "config.yaml"), "--checkpoint", str(out / "checkpoint.pt")]) == 0
    e = json.loads((out / "metrics_eval.json").read_text())
    assert e["test_map"] == pytest.approx(m["test_map"], abs=1e-6)
    assert T.main(["--set", "top_k=0", "--out", str(out)]) == 2  # (in this process: no third start-up)
    err = capsys.readouterr().err
    assert "'top_k'" in err and "Traceback" not in err
