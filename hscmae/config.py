"""The one typed config: every knob of HSC-MAE training and evaluation lives here.

A config is flat (no nesting) so that a search space, a YAML file and a `--set key=value` flag all
address a knob by the same name, and so that report tables get one column per knob.
"""
from __future__ import annotations

import dataclasses
import math
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
    # model: per-modality MLP encoder (in -> hidden -> embed) and decoder (embed -> hidden -> in)
    hidden_dim: int = 512
    embed_dim: int = 128
    mask_value: str = "zero"  # "zero" (the train mean, after standardisation) or "learned"
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
    learned_weights: bool = True  # False: every active loss term has weight 1
    recon_weight: float = 1.0  # fixed weights, used only when learned_weights is False
    dcca_weight: float = 1.0
    infonce_weight: float = 1.0
    distill_weight: float = 1.0
    eval_encoder: str = "teacher"  # which encoders embed clips for retrieval: "teacher" | "student"
    test_cca: str = "auto"  # linear CCA on embeddings at test time: "auto" (chosen on val) | "on" | "off"
    test_cca_dim: int = 0  # 0: chosen on val with the ridge at the final evaluation (hscmae.evaluate)
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 30
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
        for key in ("hidden_dim", "embed_dim", "batch_size", "epochs", "top_k", "cca_dim"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        for key in ("lr",):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        for key in ("weight_decay", "cca_reg", "threads", "test_cca_dim", "split_seed",
                    "recon_weight", "dcca_weight", "infonce_weight", "distill_weight"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.mask_value not in ("zero", "learned"):
            raise bad("mask_value", "must be 'zero' or 'learned'")
        if self.test_cca not in ("auto", "on", "off"):
            raise bad("test_cca", "must be 'auto', 'on' or 'off'")
        if self.eval_encoder not in ("teacher", "student"):
            raise bad("eval_encoder", "must be 'teacher' or 'student'")
        if self.top_k > self.batch_size:
            raise bad("top_k", f"must be <= batch_size ({self.batch_size})")
        # A batch of b samples has sample covariances of rank <= b - 1: more canonical directions
        # than that are pure regulariser, so DCCA needs cca_dim < batch_size.
        if self.cca_dim >= self.batch_size:
            raise bad("cca_dim", f"must be < batch_size ({self.batch_size})")
        if self.cca_dim > self.embed_dim:
            raise bad("cca_dim", f"must be <= embed_dim ({self.embed_dim})")
        if self.test_cca_dim > self.embed_dim:
            raise bad("test_cca_dim", f"must be <= embed_dim ({self.embed_dim})")
        if not (self.use_recon or self.use_dcca or self.use_infonce or self.use_distill):
            raise ConfigError("config keys 'use_recon', 'use_dcca', 'use_infonce', 'use_distill': "
                              "at least one loss term must be on")
        if n_train is not None and n_train < self.batch_size:
            raise bad("batch_size", f"must be <= the number of training clips ({n_train})")
        return self


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
