"""The paper's search: the five knobs HSC-MAE introduces, with priors on the scale they act on."""
from search_spaces.space import Space


def sample(trial):
    trial.suggest_float("mask_ratio", 0.1, 0.8)
    # momentum matters through 1 - m (the teacher's half-life in steps): log-uniform on that
    one_minus = trial.suggest_float("one_minus_ema_momentum", 1e-3, 1e-1, log=True)
    trial.suggest_int("top_k", 1, 16)  # 1 = plain InfoNCE; <= batch_size 64
    trial.suggest_float("temperature", 0.03, 0.5, log=True)
    trial.suggest_categorical("cca_dim", [8, 16, 32, 48])  # < batch_size 64, <= embed_dim
    return {"ema_momentum": 1.0 - one_minus}


# 60 epochs (not the shipped 100) keeps a 24-trial search on 2 cores within about 15 minutes.
SPACE = Space(name="default", description="mask ratio, EMA momentum, top-k, temperature, CCA dim",
              sample=sample, fixed={"epochs": 60}, num_samples=24, max_concurrent=2,
              grace_period=10, reduction_factor=3, checkpoint_every=5)
