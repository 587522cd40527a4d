"""Which parts of the method earn their keep: the default five knobs, every component switch, the
official recipe's objective and schedule knobs, and the architecture's depth, width and dropout.

The switches are searched, not only ablated one at a time, so that a search can find that a data
set is better served without a level (e.g. DCCA on VEGAS-like data) and report.py's importance and
ablation tables show which switches separate the good trials from the rest.
"""
from hscmae.config import LOSS_TERMS, SWITCHES, Config
from search_spaces.space import Space
from search_spaces.default import sample as sample_default

# the loss-term switches (hscmae.config's registry), each sampled [its default, the other]: the
# default-on ones first, InfoNCE the objective when they are all off (a trial needs one loss term,
# Config.validate), the default-off ones (the official recipe's) after the non-loss switches
FALLBACK = SWITCHES["infonce"]
_ON_BY_DEFAULT = {k for k, v in Config().to_dict().items() if v is True}
LOSS_SWITCHES = tuple(SWITCHES[t] for t in LOSS_TERMS if SWITCHES[t] in _ON_BY_DEFAULT and SWITCHES[t] != FALLBACK)
RECIPE_SWITCHES = tuple(SWITCHES[t] for t in LOSS_TERMS if SWITCHES[t] not in _ON_BY_DEFAULT)


def sample(trial):
    derived = sample_default(trial)
    on = [trial.suggest_categorical(k, [True, False]) for k in LOSS_SWITCHES]
    if any(on):
        trial.suggest_categorical(FALLBACK, [True, False])
    else:  # every other term is off: InfoNCE is the objective (a trial without a loss is impossible)
        derived[FALLBACK] = True
    trial.suggest_categorical("use_ema", [True, False])
    trial.suggest_categorical("learned_weights", [True, False])
    # the official recipe's knobs
    for k in RECIPE_SWITCHES:
        trial.suggest_categorical(k, [False, True])
    trial.suggest_categorical("affinity", ["cross", "fused"])
    trial.suggest_categorical("warmup_epochs", [0, 5])  # the official 5; < any --max-epochs above 5
    trial.suggest_categorical("ema_schedule", ["constant", "ramp"])
    sample_architecture(trial)
    return derived


def sample_architecture(trial):
    """Depth, width and dropout (the shipped MLP: 2 Linear layers per network, no dropout; the
    official one: 3 layers, dropout 0.2 encoder / 0.1 decoder). Shared with `wide`."""
    trial.suggest_categorical("hidden_dim", [256, 512, 1024])
    trial.suggest_int("enc_layers", 2, 3)
    trial.suggest_int("dec_layers", 2, 3)
    trial.suggest_float("enc_dropout", 0.0, 0.3)
    trial.suggest_float("dec_dropout", 0.0, 0.3)


SPACE = Space(name="components", description="default + component switches, recipe knobs "
                                             "(cross-recon, affinity, warm-up, EMA ramp), depth/width/dropout",
              sample=sample, fixed={"epochs": 60}, num_samples=48, max_concurrent=2,
              grace_period=10, reduction_factor=3, checkpoint_every=5)
