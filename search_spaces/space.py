"""A search space: an Optuna define-by-run function, the fixed config overrides it runs with, its
search budget, and the checks every corner of it gets before Ray starts."""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from hscmae.config import Config, ConfigError, config_from_dict
from hscmae.protocol import ASHA_GRACE, ASHA_RF


def trial_config(base: dict, fixed: dict, params: dict) -> Config:
    """The full config of one trial: base YAML, then the space's fixed keys, then the sample.
    Search-only helper parameters (not Config keys, e.g. one_minus_ema_momentum) are dropped.
    The trainable and report.py (which has only space.json, not the Space) both build it here."""
    known = Config.__dataclass_fields__
    return config_from_dict({**base, **fixed, **{k: v for k, v in params.items() if k in known}})


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    sample: Callable[[Any], dict | None]  # optuna trial -> derived constants (suggestions are captured)
    fixed: dict = field(default_factory=dict)  # config overrides applied on top of --config
    num_samples: int = 24
    max_concurrent: int = 2
    grace_period: int = ASHA_GRACE  # ASHA: epochs before the first cut
    reduction_factor: int = ASHA_RF  # ASHA: keep the top 1/rf at every rung
    checkpoint_every: int = 5  # epochs between Tune checkpoints

    def to_config(self, base: dict, params: dict) -> Config:
        return trial_config(base, self.fixed, params)

    def describe(self) -> dict:
        """A JSON-able record of the space (what was searched and how), for the experiment folder."""
        rec = _Recorder()
        self.sample(rec)
        return {"name": self.name, "description": self.description, "fixed": self.fixed,
                "params": rec.params, "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
                "grace_period": self.grace_period, "reduction_factor": self.reduction_factor,
                "checkpoint_every": self.checkpoint_every}

    def example(self, base: dict) -> Config:
        """One valid trial config (every parameter at its low end / first choice)."""
        rec = _Recorder()
        derived = self.sample(rec) or {}
        return self.to_config(base, {**rec.values, **derived})

    def check(self, base: dict) -> None:
        """Raise ConfigError if any corner of the space (every combination of each parameter's
        extremes or choices) makes an impossible config, so it fails before Ray starts."""
        rec = _Recorder()
        self.sample(rec)
        options = {name: spec["corners"] for name, spec in rec.params.items()}
        for combo in _corner_combos(list(options.values())):
            fixed = dict(zip(options, combo))
            derived = self.sample(_Fixed(fixed)) or {}
            params = {**fixed, **derived}
            try:
                self.to_config(base, params)
            except ConfigError as e:
                raise ConfigError(f"search space '{self.name}' can sample an impossible config "
                                  f"{params}: {e}") from None


def _corner_combos(options: list[list], limit: int = 4096):
    """Every combination of the corners if there are at most `limit`; else (a big space such as
    `components`) every corner pair of every two parameters, each with the rest at their first and
    at their last corners, plus `limit` combinations drawn with a fixed seed: a plain prefix of the
    product would only ever vary the last few parameters."""
    total = math.prod(len(o) for o in options)
    if total <= limit:
        yield from itertools.product(*options)
        return
    for i, j in itertools.combinations(range(len(options)), 2):
        for a, b in itertools.product(options[i], options[j]):
            for rest in (0, -1):
                combo = [o[rest] for o in options]
                combo[i], combo[j] = a, b
                yield tuple(combo)
    rng = random.Random(0)
    for _ in range(limit):
        yield tuple(rng.choice(o) for o in options)


class _Recorder:
    """A stand-in optuna trial that records each suggestion's range and returns its low end."""

    def __init__(self):
        self.params: dict[str, dict] = {}
        self.values: dict[str, Any] = {}

    def suggest_float(self, name, low, high, *, log=False, step=None):
        self.params[name] = {"type": "float", "low": low, "high": high, "log": log, "corners": [low, high]}
        self.values[name] = low
        return low

    def suggest_int(self, name, low, high, *, log=False, step=1):
        self.params[name] = {"type": "int", "low": low, "high": high, "log": log, "corners": [low, high]}
        self.values[name] = low
        return low

    def suggest_categorical(self, name, choices):
        self.params[name] = {"type": "categorical", "choices": list(choices), "corners": list(choices)}
        self.values[name] = choices[0]
        return choices[0]


class _Fixed:
    """A stand-in optuna trial that returns given values."""

    def __init__(self, values: dict):
        self.values = values

    def suggest_float(self, name, *a, **k):
        return self.values[name]

    suggest_int = suggest_categorical = suggest_float
