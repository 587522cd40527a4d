"""A tiny search for tests and for trying the harness: tiny data and model, a few epochs."""
from search_spaces.space import Space


def sample(trial):
    trial.suggest_float("mask_ratio", 0.1, 0.8)
    one_minus = trial.suggest_float("one_minus_ema_momentum", 1e-3, 1e-1, log=True)
    trial.suggest_int("top_k", 1, 4)
    trial.suggest_float("temperature", 0.05, 0.5, log=True)
    trial.suggest_categorical("cca_dim", [4, 8])
    return {"ema_momentum": 1.0 - one_minus}


SPACE = Space(name="smoke", description="tiny data and model, 6 epochs; for tests",
              sample=sample,
              fixed={"data": "synthetic:tiny", "hidden_dim": 32, "embed_dim": 16, "batch_size": 64,
                     "epochs": 6, "lr": 3e-3},
              num_samples=6, max_concurrent=2, grace_period=2, reduction_factor=2, checkpoint_every=2)
