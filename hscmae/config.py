"""The one typed config: every knob of HSC-MAE training and evaluation lives here.

A config is flat (no nesting) so that a search space, a YAML file and a `--set key=value` flag all
address a knob by the same name, and so that report tables get one column per knob.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range. The message names the key."""


def knob(default, *, lo=None, hi=None, lo_open=False, hi_open=True, why="", choices=None, arch=False,
         runtime=False, term=None, ablate=None, ablate_to=dataclasses.MISSING, recipe=False):
    """A Config field and the facts about it that every list of keys derives from:
    lo / hi (with lo_open / hi_open): its range, checked by validate() (`why` is said with it);
    choices: the values a string knob may take; arch: it decides the networks' modules and shapes
    (a checkpoint must agree on it); runtime: it says where and how fast a run executes, not what it
    computes (a checkpoint resumes across it); term: the loss term this switch turns on (LOSS_TERMS,
    in field order, which is the order of the loss sum); ablate: (row, label) of the component
    ablation row that sets it to `ablate_to` (default: the other bool, for a switch), or with
    recipe=True back to its default, a row only when the ablated config has it on."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "why": why, "choices": choices,
            "arch": arch, "runtime": runtime, "term": term, "ablate": ablate, "recipe": recipe,
            "ablate_to": default if recipe else (not default if ablate_to is dataclasses.MISSING else ablate_to)}
    return field(default=default, metadata=meta)


POSITIVE, AT_LEAST_0, AT_LEAST_1 = dict(lo=0, lo_open=True), dict(lo=0), dict(lo=1)
FRACTION = dict(lo=0, hi=1)  # [0, 1)


@dataclass
class Config:
    # data: a folder of features or "synthetic:ave" / "synthetic:vegas" (see hscmae.data)
    data: str = "synthetic:ave"
    split_seed: int = knob(0, **AT_LEAST_0)
    # 3-D features (clips x segments x dims) -> one vector
    temporal_pool: str = knob("mean", choices=("mean", "max"))
    # per-feature scaling fitted on train only: "standard" (z-score) | "minmax"
    normalize: str = knob("standard", choices=("standard", "minmax"))
    # per-class share of a train/test-only file's train part held out as val
    val_fraction: float = knob(0.15, lo=0, lo_open=True, hi=1)
    # the method's challenges made on any source at load time (hscmae.data.challenges; off by default,
    # seeded, in data.json's provenance and the data fingerprint). Weak pairing: this fraction of the
    # train split's pairs get another train item's visual vector (val/test untouched)
    pair_noise: float = knob(0.0, **FRACTION)
    pair_noise_seed: int = knob(0, **AT_LEAST_0)
    # multi-event clips: this fraction of every split's items get w x another class's item added to both views
    mix_events: float = knob(0.0, lo=0, hi=1, hi_open=False)
    mix_events_seed: int = knob(0, **AT_LEAST_0)
    # spurious co-occurrence: std of an 8-d per-item Gaussian nuisance added to both views (x each feature's std)
    shared_nuisance: float = knob(0.0, **AT_LEAST_0)
    shared_nuisance_seed: int = knob(0, **AT_LEAST_0)
    # the device everything runs on: "auto" (CUDA when torch sees it, else CPU) | "cpu" | "cuda" |
    # "cuda:N" (checked in validate: a pattern, not a list)
    device: str = knob("auto", runtime=True)
    deterministic: bool = knob(False, runtime=True)  # deterministic CUDA kernels (costs speed); CPU runs are deterministic anyway
    compile: bool = knob(False, runtime=True)  # torch.compile the training step
    # model: per-modality MLP encoder (in -> hidden -> embed) and decoder (embed -> hidden -> in)
    hidden_dim: int = knob(512, **AT_LEAST_1, arch=True)
    embed_dim: int = knob(128, **AT_LEAST_1, arch=True)
    mask_value: str = knob("zero", choices=("zero", "learned"))  # "zero" (the train mean, after standardisation) or "learned"
    # architecture (the official code: enc_layers 3, dec_layers 3, tanh, dropout 0.2 / 0.1, input
    # batch norm, a projection head)
    enc_layers: int = knob(2, lo=2, why=" (input -> hidden -> output)", arch=True)  # Linear layers per encoder: in -> hidden (-> hidden ...) -> embed
    dec_layers: int = knob(2, lo=2, why=" (input -> hidden -> output)", arch=True)  # Linear layers per decoder: embed -> hidden (-> hidden ...) -> in
    activation: str = knob("gelu", choices=("gelu", "tanh", "relu"), arch=True)
    enc_dropout: float = knob(0.0, **FRACTION, arch=True, ablate=("no_dropout", "no dropout"), recipe=True)
    dec_dropout: float = knob(0.0, **FRACTION, arch=True, ablate=("no_dropout", "no dropout"), recipe=True)
    input_batchnorm: bool = knob(False, arch=True, ablate=("no_input_batchnorm", "no input BatchNorm"), recipe=True)  # BatchNorm1d on each encoder's input
    # a linear projection embed -> proj_dim, L2-normalised, before the losses
    proj_head: bool = knob(False, arch=True, ablate=("no_proj_head", "no projection head"), recipe=True)
    proj_dim: int = knob(64, **AT_LEAST_1, arch=True)
    # the three levels of the method
    mask_ratio: float = knob(0.5, **FRACTION)  # fraction of input entries masked for the student (sample level)
    ema_momentum: float = knob(0.99, **FRACTION)  # teacher t <- m t + (1 - m) s after every step
    # positives per clip for soft InfoNCE, counting the clip's own pair
    top_k: int = knob(5, **AT_LEAST_1, ablate=("plain_infonce", "plain InfoNCE (k = 1)"), ablate_to=1)
    temperature: float = knob(0.1, **POSITIVE)  # student logits = cosine / temperature (teacher targets likewise)
    cca_dim: int = knob(32, **AT_LEAST_1)  # number of canonical correlations the DCCA loss maximises
    cca_reg: float = knob(1e-3, **AT_LEAST_0)  # ridge on the DCCA covariances, keeps them invertible for small batches
    # switches, one per component, for ablations; a loss term's switch names its term
    use_recon: bool = knob(True, term="recon", ablate=("no_recon", "no MAE reconstruction"))
    use_dcca: bool = knob(True, term="dcca", ablate=("no_dcca", "no DCCA"))
    use_infonce: bool = knob(True, term="infonce", ablate=("no_infonce", "no soft InfoNCE"))
    # False: the student mines its own neighbours (teacher = student)
    use_ema: bool = knob(True, arch=True, ablate=("no_ema", "no EMA teacher (student mines)"))
    use_distill: bool = knob(True, term="distill", ablate=("no_distill", "no distillation"))
    # decode each modality's input from the other's embedding
    use_cross_recon: bool = knob(False, arch=True, term="cross_recon",
                                 ablate=("no_cross_recon", "no cross-modal reconstruction"), recipe=True)
    # False: every active loss term has weight 1
    learned_weights: bool = knob(True, ablate=("fixed_weights", "fixed loss weights"))
    # fixed weights (<term>_weight), used only when learned_weights is False (and in warm-up)
    recon_weight: float = knob(1.0, **AT_LEAST_0)
    dcca_weight: float = knob(1.0, **AT_LEAST_0)
    infonce_weight: float = knob(1.0, **AT_LEAST_0)
    distill_weight: float = knob(1.0, **AT_LEAST_0)
    cross_recon_weight: float = knob(1.0, **AT_LEAST_0)
    # teacher neighbours from "cross" (a-v similarity) | "fused" ((a + v) / 2)
    affinity: str = knob("cross", choices=("cross", "fused"),
                         ablate=("cross_affinity", "teacher neighbours from cross-modal similarity"), recipe=True)
    # the clip's own pair is a positive (False: left out of both sets)
    pair_positive: bool = knob(True, ablate=("pair_positive", "the pair counted as a positive"), recipe=True)
    # DCCA on the student's "masked" | "clean" input embeddings
    dcca_input: str = knob("masked", choices=("masked", "clean"),
                           ablate=("masked_dcca", "DCCA on the masked-input embeddings"), recipe=True)
    # which encoders embed clips for retrieval: "teacher" | "student"
    eval_encoder: str = knob("teacher", choices=("teacher", "student"))
    # linear CCA on embeddings at test time: "auto" (chosen on val) | "on" | "off"
    test_cca: str = knob("auto", choices=("auto", "on", "off"), ablate=("no_test_cca", "no test-time CCA"),
                         ablate_to="off")
    # 0: chosen on val with the ridge at the final evaluation (hscmae.protocol)
    test_cca_dim: int = knob(0, **AT_LEAST_0)
    # the test-time CCA's (ridge, dim) grid: "exhaustive" (every point on every val query) |
    # "halving" (screened on a seeded quarter of the val queries, the best 4 scored exactly)
    grid_search: str = knob("exhaustive", choices=("exhaustive", "halving"))
    # validation scored every N epochs (1: every epoch); the choice epochs (epoch 1 with N = 1, a
    # search's ASHA rungs) and the last are always scored, the epochs between only at multiples of
    # N: the rest report no val_map (nothing reads it there: ASHA compares at its rungs)
    val_every: int = knob(1, **AT_LEAST_1)
    # optimisation
    lr: float = knob(1e-3, **POSITIVE)
    weight_decay: float = knob(1e-4, **AT_LEAST_0)
    batch_size: int = knob(256, **AT_LEAST_1)
    epochs: int = knob(30, **AT_LEAST_1)
    # epochs with the fixed weights before the learned weighting switches on
    warmup_epochs: int = knob(0, **AT_LEAST_0, ablate=("no_warmup", "no warm-up (learned weights from epoch 1)"),
                              recipe=True)
    # "constant" | "ramp" (official: 0.95 + 0.05 epoch / epochs, <= 0.999)
    ema_schedule: str = knob("constant", choices=("constant", "ramp"),
                             ablate=("constant_ema", "constant EMA momentum"), recipe=True)
    lr_schedule: str = knob("constant", choices=("constant", "cosine"),
                            ablate=("no_lr_schedule", "no LR schedule (constant)"), recipe=True)
    # max gradient norm; 0 = off
    grad_clip: float = knob(0.0, **AT_LEAST_0, ablate=("no_grad_clip", "no gradient clipping"), recipe=True)
    seed: int = 0
    threads: int = knob(0, **AT_LEAST_0, runtime=True)  # torch intra-op threads; 0 leaves torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, n_train: int | None = None) -> "Config":
        """Range and cross-key checks. Raises ConfigError naming the key; returns self."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {why}, got {getattr(self, key)!r}")

        for f in fields(self):  # NaN passes every `< 0` check and Inf every `> 0` one
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                raise bad(f.name, "must be a finite number")
        for key, meta in KNOBS.items():
            why = _range_error(getattr(self, key), meta)
            if why:
                raise bad(key, why)
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise bad("warmup_epochs", f"must be < epochs ({self.epochs})")
        if self.top_k > self.batch_size:
            raise bad("top_k", f"must be <= batch_size ({self.batch_size})")
        if not self.pair_positive and self.top_k >= self.batch_size:  # k positives among the b - 1 others
            raise bad("top_k", f"must be < batch_size ({self.batch_size}) when pair_positive is false")
        # A batch of b samples has sample covariances of rank <= b - 1: more canonical directions
        # than that are pure regulariser, so DCCA needs cca_dim < batch_size.
        if self.cca_dim >= self.batch_size:
            raise bad("cca_dim", f"must be < batch_size ({self.batch_size})")
        emb = self.proj_dim if self.proj_head else self.embed_dim  # what the losses see
        if self.cca_dim > emb:
            raise bad("cca_dim", f"must be <= {'proj_dim' if self.proj_head else 'embed_dim'} ({emb})")
        if self.test_cca_dim > emb:  # retrieval embeds what the losses see
            raise bad("test_cca_dim", f"must be <= {'proj_dim' if self.proj_head else 'embed_dim'} ({emb})")
        if not active_terms(self):
            raise ConfigError(f"config keys {', '.join(repr(SWITCHES[t]) for t in LOSS_TERMS)}: "
                              "at least one loss term must be on")
        if n_train is not None and n_train < self.batch_size:
            raise bad("batch_size", f"must be <= the number of training clips ({n_train})")
        return self


def _range_error(value, meta: dict) -> str | None:
    """Why `value` is outside its knob's range or choices (validate's message), or None."""
    if meta["choices"] is not None:
        return None if value in meta["choices"] else "must be " + " or ".join(repr(c) for c in meta["choices"])
    lo, hi = meta["lo"], meta["hi"]
    if lo is None:
        return None
    below = value <= lo if meta["lo_open"] else value < lo
    above = hi is not None and (value >= hi if meta["hi_open"] else value > hi)
    if not (below or above):
        return None
    if hi is None:
        return f"must be {'>' if meta['lo_open'] else '>='} {lo:g}{meta['why']}"
    return f"must be in {'(' if meta['lo_open'] else '['}{lo:g}, {hi:g}{')' if meta['hi_open'] else ']'}{meta['why']}"


# Every list of keys below derives from the fields' metadata (knob): add a knob in one place.
KNOBS: dict[str, dict] = {f.name: dict(f.metadata) or knob(f.default).metadata for f in fields(Config)}
CHOICES = {k: m["choices"] for k, m in KNOBS.items() if m["choices"] is not None}
LOSS_TERMS = tuple(m["term"] for m in KNOBS.values() if m["term"])  # the loss sum's order
SWITCHES = {m["term"]: k for k, m in KNOBS.items() if m["term"]}  # loss term -> its config switch
# the keys that decide the networks' modules and shapes: a checkpoint must agree on all of them
ARCH_KEYS = tuple(k for k, m in KNOBS.items() if m["arch"])
# keys that say where and how fast a run executes, not what it computes: a checkpoint resumes
# across them (written on a GPU, continued on a CPU), and they are not part of a run's identity
RUNTIME_KEYS = tuple(k for k, m in KNOBS.items() if m["runtime"])


def active_terms(cfg: Config) -> list[str]:
    """The loss terms cfg switches on, in the sum's order."""
    return [t for t in LOSS_TERMS if getattr(cfg, SWITCHES[t])]


def ablation_rows(recipe: bool) -> list[tuple[str, str, dict]]:
    """(row, label, changes) of the component ablation, in field order: the method's components
    (recipe=False), or the official recipe's (recipe=True: a row only where a config has it on)."""
    rows: dict[str, tuple[str, dict]] = {}
    for k, m in KNOBS.items():
        if m["ablate"] and m["recipe"] == recipe:
            name, label = m["ablate"]
            rows.setdefault(name, (label, {}))[1][k] = m["ablate_to"]
    return [(name, label, changes) for name, (label, changes) in rows.items()]


_FIELDS = {f.name: f for f in fields(Config)}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(key: str, value: Any) -> Any:
    want = _TYPES[_FIELDS[key].type]
    # bool is a subclass of int: refuse True for an int knob and 1 for a bool knob.
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # e.g. 256.0 from a search space
            return int(value)
    elif isinstance(value, str):
        return value
    # numpy scalars from search spaces
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _coerce(key, value.item())
    raise ConfigError(f"config key '{key}': expected {want.__name__}, got {type(value).__name__} {value!r}")


def config_from_dict(d: dict[str, Any] | None) -> Config:
    """Build and validate a Config; unknown keys and wrong types raise ConfigError naming the key."""
    d = dict(d or {})
    unknown = sorted(set(d) - set(_FIELDS), key=repr)  # YAML keys may be null, ints, bools ...
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(_FIELDS)}")
    return Config(**{k: _coerce(k, v) for k, v in d.items()}).validate()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["key=value", ...] -> {key: value}; values are parsed as YAML scalars (so 1e-3, true, 64 work)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not YAML ({' '.join(str(e).split())[:200]})") from None
    return out


def load_config(path: str | None = None, overrides: dict | list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `overrides`, validated together."""
    d: dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML ({' '.join(str(e).split())})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of key: value, got {type(loaded).__name__}")
        d.update(loaded or {})
    if overrides:
        d.update(parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    try:
        return config_from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(cfg: Config, path: str) -> None:
    from hscmae.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
