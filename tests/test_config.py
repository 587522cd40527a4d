import pytest

from hscmae.config import Config, ConfigError, config_from_dict, load_config, parse_overrides


def test_defaults_and_shipped_config_are_valid():
    Config().validate()
    cfg = load_config("config/hsc_mae.yaml")
    assert cfg.data == "synthetic:ave" and cfg.batch_size == 64


@pytest.mark.parametrize("key,value,match", [
    ("mask_ratio", 1.0, "'mask_ratio'"), ("mask_ratio", -0.1, "'mask_ratio'"),
    ("ema_momentum", 1.0, "'ema_momentum'"), ("temperature", 0.0, "'temperature'"),
    ("top_k", 0, "'top_k'"), ("top_k", 300, "'top_k'.*batch_size"),
    ("cca_dim", 256, "'cca_dim'.*batch_size"), ("lr", 0.0, "'lr'"),
    ("test_cca", "maybe", "'test_cca'"), ("batch_size", 0, "'batch_size'"),
])
def test_out_of_range_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({key: value})


def test_cca_dim_cannot_exceed_embed_dim():
    with pytest.raises(ConfigError, match="'cca_dim'.*embed_dim"):
        config_from_dict({"embed_dim": 16, "cca_dim": 32})


def test_unknown_keys_and_wrong_types_are_refused():
    with pytest.raises(ConfigError, match="unknown config key.*'mask_ration'"):
        config_from_dict({"mask_ration": 0.5})
    with pytest.raises(ConfigError, match="'batch_size': expected int"):
        config_from_dict({"batch_size": "big"})
    with pytest.raises(ConfigError, match="'use_dcca': expected bool"):
        config_from_dict({"use_dcca": 1})
    with pytest.raises(ConfigError, match="'epochs': expected int"):
        config_from_dict({"epochs": True})
    assert config_from_dict({"batch_size": 128.0, "lr": 1}).batch_size == 128


def test_all_terms_off_is_refused():
    with pytest.raises(ConfigError, match="at least one loss term"):
        config_from_dict({"use_recon": False, "use_dcca": False, "use_infonce": False, "use_distill": False})


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mask_ratio: 0.3\nepochs: 5\n")
    cfg = load_config(str(p), ["epochs=7", "lr=1e-2", "use_ema=false"])
    assert (cfg.mask_ratio, cfg.epochs, cfg.lr, cfg.use_ema) == (0.3, 7, 0.01, False)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="c.yaml.*mapping"):
        load_config(str(p))
    p.write_text("top_k: 0\n")
    with pytest.raises(ConfigError, match="c.yaml.*'top_k'"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match=r"override 'lr=\[1': the value is not YAML"):  # not a traceback
        parse_overrides(["lr=[1"])
