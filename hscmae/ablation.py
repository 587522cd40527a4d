"""Component ablations of HSC-MAE: the runs that switch each part of the method off in turn, and
their summary. Pure library code (no Ray): `report.py --ablate` runs these configs as Ray tasks.

Each row changes one thing relative to a given config (normally a search's best config), so a row's
drop in mAP is that component's contribution with everything else held at the tuned values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from hscmae.config import Config, ConfigError, ablation_rows, config_from_dict

# (name, label for tables, config changes), from the fields' metadata (hscmae.config.knob). The
# full model comes first: tables compare against it.
COMPONENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (("full", "HSC-MAE (full model)", {}),
                                                            *ablation_rows(recipe=False))
# The official recipe's components (hscmae.schedule, the architecture and objective keys): a row only
# when the component is on in the given config, each switching it back to today's default.
RECIPE_COMPONENTS: tuple[tuple[str, str, dict[str, Any]], ...] = tuple(ablation_rows(recipe=True))
METRICS = ("test_map_a2v", "test_map_v2a", "test_map", "val_map")


@dataclass(frozen=True)
class AblationRun:
    component: str
    label: str
    changes: str  # "use_recon=false", or why the row is special ("same as the full model")
    seed: int
    config: Config | None  # None: the change is impossible for this config (see `changes`)


def _describe(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())


def ablation_runs(cfg: Config, seeds: int | Sequence[int] = 3, epochs: int | None = None) -> list[AblationRun]:
    """One run per (component, seed). `seeds`: a count n (seeds cfg.seed .. cfg.seed + n - 1, so
    the full model's first seed is the searched trial itself) or explicit seeds. `epochs`
    overrides every row's epochs (quick runs); rows stay comparable because all share it."""
    seed_list = [cfg.seed + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("ablation needs at least one seed")
    base = cfg.to_dict()
    if epochs is not None:
        base["epochs"] = epochs
    runs = []
    for name, label, changes in COMPONENTS + RECIPE_COMPONENTS:
        noop = bool(changes) and all(base[k] == v for k, v in changes.items())
        if noop and (name, label, changes) in RECIPE_COMPONENTS:
            continue  # that recipe component is off in this config: nothing to ablate
        desc = _describe(changes) + (" (same as the full model)" if noop else "") if changes else "best config"
        for seed in seed_list:
            try:
                c = config_from_dict({**base, **changes, "seed": seed})
            except ConfigError as e:  # e.g. the only remaining loss term switched off
                runs.append(AblationRun(name, label, f"{_describe(changes)}: impossible ({e})", seed, None))
                continue
            runs.append(AblationRun(name, label, desc, seed, c))
    return runs


def train_one(config: dict, data) -> dict:
    """Train one config and return its final scores; a divergence is a result, not a crash."""
    import torch

    from hscmae.train import TrainingDiverged, fit

    cfg = config_from_dict(config)
    if not cfg.threads:  # one core per task: parallel tasks must not oversubscribe the machine
        torch.set_num_threads(1)
    try:
        out = fit(cfg, data, log=None)
    except TrainingDiverged as e:
        return {"error": str(e)}
    return {k: float(out[k]) for k in (*METRICS, "test_cca")}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(runs: list[AblationRun], results: list[dict]) -> list[dict]:
    """Per component (in COMPONENTS order): seeds run, seeds that diverged, and mean / sample std
    (ddof 1) of each metric over the seeds that finished."""
    rows = []
    for name, label, _ in COMPONENTS + RECIPE_COMPONENTS:
        mine = [(r, res) for r, res in zip(runs, results) if r.component == name]
        if not mine:
            continue
        ok = [res for r, res in mine if r.config is not None and "error" not in res]
        errors = sorted({res["error"].splitlines()[0] for r, res in mine if "error" in res})
        row = {"component": name, "label": label, "changes": mine[0][0].changes,
               "epochs": next((r.config.epochs for r, _ in mine if r.config is not None), None),
               "n_seeds": len(mine), "n_ok": len(ok), "error": "; ".join(errors) or None}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([res[m] for res in ok])
        rows.append(row)
    return rows
