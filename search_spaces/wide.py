"""The default knobs plus optimisation and size: lr, weight decay, batch size, embedding size, and
the architecture's depth, width and dropout (shared with `components`)."""
from search_spaces.space import Space
from search_spaces.components import sample_architecture
from search_spaces.default import sample as sample_default


def sample(trial):
    derived = sample_default(trial)
    trial.suggest_float("lr", 3e-4, 3e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    # every choice keeps cca_dim (<= 48) < batch_size and <= embed_dim, top_k (<= 16) <= batch_size
    trial.suggest_categorical("batch_size", [64, 128, 256])
    trial.suggest_categorical("embed_dim", [64, 128, 256])
    sample_architecture(trial)
    return derived


SPACE = Space(name="wide", description="default + lr, weight decay, batch size, embedding size, depth/width/dropout",
              sample=sample, fixed={"epochs": 60}, num_samples=48, max_concurrent=2,
              grace_period=10, reduction_factor=3, checkpoint_every=5)
