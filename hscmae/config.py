"""The one typed config: every knob of HSC-MAE training and evaluation lives here.

A config is flat (no nesting) so that a search space, a YAML file and a `--set key=value` flag all
address a knob by the same name, and so that report tables get one column per knob.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range. The message names the key."""


@dataclass
class Config:
    # data: a folder of features or "synthetic:ave" / "synthetic:vegas" (see hscmae.data)
    data: str = "synthetic:ave"
    split_seed: int = 0
    temporal_pool: str = "mean"  # 3-D features (clips x segments x dims) -> one vector: "mean" | "max"
    normalize: str = "standard"  # per-feature scaling fitted on train only: "standard" (z-score) | "minmax"
    val_fraction: float = 0.15  # per-class share of a train/test-only file's train part held out as val
    # the device everything runs on: "auto" (CUDA when torch sees it, else CPU) | "cpu" | "cuda" | "cuda:N"
    device: str = "auto"
    deterministic: bool = False  # deterministic CUDA kernels (costs speed); CPU runs are deterministic anyway
    compile: bool = False  # torch.compile the training step
    # model: per-modality MLP encoder (in -> hidden -> embed) and decoder (embed -> hidden -> in)
    hidden_dim: int = 512
    embed_dim: int = 128
    mask_value: str = "zero"  # "zero" (the train mean, after standardisation) or "learned"
    # architecture (the official code: enc_layers 3, dec_layers 3, tanh, dropout 0.2 / 0.1, input
    # batch norm, a projection head)
    enc_layers: int = 2  # Linear layers per encoder: in -> hidden (-> hidden ...) -> embed
    dec_layers: int = 2  # Linear layers per decoder: embed -> hidden (-> hidden ...) -> in
    activation: str = "gelu"  # "gelu" | "tanh" | "relu"
    enc_dropout: float = 0.0
    dec_dropout: float = 0.0
    input_batchnorm: bool = False  # BatchNorm1d on each encoder's input
    proj_head: bool = False  # a linear projection embed -> proj_dim, L2-normalised, before the losses
    proj_dim: int = 64
    # the three levels of the method
    mask_ratio: float = 0.5  # fraction of input entries masked for the student (sample level)
    ema_momentum: float = 0.99  # teacher t <- m t + (1 - m) s after every step
    top_k: int = 5  # positives per clip for soft InfoNCE, counting the clip's own pair
    temperature: float = 0.1  # student logits = cosine / temperature (teacher targets likewise)
    cca_dim: int = 32  # number of canonical correlations the DCCA loss maximises
    cca_reg: float = 1e-3  # ridge on the DCCA covariances, keeps them invertible for small batches
    # switches, one per component, for ablations
    use_recon: bool = True
    use_dcca: bool = True
    use_infonce: bool = True
    use_ema: bool = True  # False: the student mines its own neighbours (teacher = student)
    use_distill: bool = True
    use_cross_recon: bool = False  # decode each modality's input from the other's embedding
    learned_weights: bool = True  # False: every active loss term has weight 1
    recon_weight: float = 1.0  # fixed weights, used only when learned_weights is False (and in warm-up)
    dcca_weight: float = 1.0
    infonce_weight: float = 1.0
    distill_weight: float = 1.0
    cross_recon_weight: float = 1.0
    affinity: str = "cross"  # teacher neighbours from "cross" (a-v similarity) | "fused" ((a + v) / 2)
    pair_positive: bool = True  # the clip's own pair is a positive (False: left out of both sets)
    dcca_input: str = "masked"  # DCCA on the student's "masked" | "clean" input embeddings
    eval_encoder: str = "teacher"  # which encoders embed clips for retrieval: "teacher" | "student"
    test_cca: str = "auto"  # linear CCA on embeddings at test time: "auto" (chosen on val) | "on" | "off"
    test_cca_dim: int = 0  # 0: chosen on val with the ridge at the final evaluation (hscmae.evaluate)
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 30
    warmup_epochs: int = 0  # epochs with the fixed weights before the learned weighting switches on
    ema_schedule: str = "constant"  # "constant" | "ramp" (official: 0.95 + 0.05 epoch / epochs, <= 0.999)
    lr_schedule: str = "constant"  # "constant" | "cosine"
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, n_train: int | None = None) -> "Config":
        """Range and cross-key checks. Raises ConfigError naming the key; returns self."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {why}, got {getattr(self, key)!r}")

        for f in fields(self):  # NaN passes every `< 0` check and Inf every `> 0` one
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                raise bad(f.name, "must be a finite number")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise bad("mask_ratio", "must be in [0, 1)")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise bad("ema_momentum", "must be in [0, 1)")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        for key in ("hidden_dim", "embed_dim", "batch_size", "epochs", "top_k", "cca_dim", "proj_dim"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        for key in ("lr",):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        for key in ("weight_decay", "cca_reg", "threads", "test_cca_dim", "split_seed",
                    "recon_weight", "dcca_weight", "infonce_weight", "distill_weight", "cross_recon_weight",
                    "warmup_epochs", "grad_clip"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise bad(key, "must be " + " or ".join(repr(c) for c in choices))
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        for key in ("enc_layers", "dec_layers"):
            if getattr(self, key) < 2:
                raise bad(key, "must be >= 2 (input -> hidden -> output)")
        for key in ("enc_dropout", "dec_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "must be in [0, 1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in (0, 1)")
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
        if not (self.use_recon or self.use_dcca or self.use_infonce or self.use_distill or self.use_cross_recon):
            raise ConfigError("config keys 'use_recon', 'use_dcca', 'use_infonce', 'use_distill', "
                              "'use_cross_recon': at least one loss term must be on")
        if n_train is not None and n_train < self.batch_size:
            raise bad("batch_size", f"must be <= the number of training clips ({n_train})")
        return self


# the string knobs and the values each may take
_CHOICES = {
    "temporal_pool": ("mean", "max"), "normalize": ("standard", "minmax"),
    "mask_value": ("zero", "learned"), "activation": ("gelu", "tanh", "relu"),
    "affinity": ("cross", "fused"), "dcca_input": ("masked", "clean"),
    "ema_schedule": ("constant", "ramp"), "lr_schedule": ("constant", "cosine"),
    "test_cca": ("auto", "on", "off"), "eval_encoder": ("teacher", "student"),
}
# keys that say where and how fast a run executes, not what it computes: a checkpoint resumes
# across them (written on a GPU, continued on a CPU), and they are not part of a run's identity
RUNTIME_KEYS = ("device", "threads", "compile", "deterministic")
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
        out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
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
