"""Security properties that can be checked without a cluster: nothing deserialises code.

- a static scan (AST, not grep) of every non-test .py file for pickle/yaml.load/eval/exec and for
  torch.load / np.load calls that do not pass weights_only=True / allow_pickle=False;
- a YAML config carrying a python object tag is refused and runs nothing;
- a splits.npz holding a pickled object that would run code on load is refused and runs nothing.
(Malicious checkpoints and pickled .npy feature files are in tests/test_train.py and test_data.py.)
"""
import ast
import os
import pickle
import zipfile

import numpy as np
import pytest

from hscmae.config import ConfigError, load_config
from hscmae.data import DataError, load_data

from conftest import ROOT  # noqa: E402
SKIP_DIRS = {"tests", ".git", ".hypothesis", ".pytest_cache", ".benchmarks", "__pycache__", "results", "runs"}


def _sources():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".venv")
                       and not d.endswith(".egg-info")]
        for f in filenames:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def _problems(path: str) -> list[str]:
    tree = ast.parse(open(path).read(), path)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        where = f"{os.path.relpath(path, ROOT)}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__"):
            out.append(f"{where}: {f.id}()")
        if not isinstance(f, ast.Attribute):
            continue
        owner = f.value.id if isinstance(f.value, ast.Name) else getattr(f.value, "attr", "")
        if owner in ("pickle", "cloudpickle", "dill", "marshal", "shelve") and f.attr in ("load", "loads", "open"):
            out.append(f"{where}: {owner}.{f.attr}()")
        if owner == "yaml" and f.attr in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"):
            out.append(f"{where}: yaml.{f.attr}() (use yaml.safe_load)")
        if owner == "torch" and f.attr == "load" and _kw(node, "weights_only") is not True:
            out.append(f"{where}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and f.attr == "load" and _kw(node, "allow_pickle") is not False:
            out.append(f"{where}: np.load without allow_pickle=False")
        if owner in ("pd", "pandas") and f.attr == "read_pickle":
            out.append(f"{where}: pandas.read_pickle")
    return out


def test_the_scan_sees_the_project_and_catches_what_it_should(tmp_path):
    files = {os.path.relpath(p, ROOT) for p in _sources()}
    assert {"tune_main.py", os.path.join("hscmae", "train.py"), os.path.join("hscmae", "data", "folder.py"),
            os.path.join("hscmae", "data", "hdf5.py")} <= files
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, numpy as np, yaml, pickle\n"
                   "torch.load('x')\nnp.load('y', allow_pickle=True)\nyaml.load('z')\n"
                   "pickle.loads(b'')\neval('1')\ntorch.load('x', weights_only=True)\n"
                   "np.load('y', allow_pickle=False)\n")
    found = _problems(str(bad))
    assert len(found) == 5, found


def test_no_code_executing_deserialisation_in_the_project():
    problems = [p for path in _sources() for p in _problems(path)]
    assert not problems, "\n".join(problems)


def test_yaml_config_with_a_python_tag_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        load_config(str(cfg))
    cfg.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(str(cfg))
    assert not marker.exists()


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_splits_npz_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "audio_features.npy", rng.normal(size=(30, 3)))
    np.save(folder / "visual_features.npy", rng.normal(size=(30, 4)))
    np.save(folder / "labels.npy", np.arange(30) % 3)
    np.savez(folder / "splits.npz", train=np.arange(20), val=np.arange(20, 25),
             test=np.array([_Boom(marker)] * 5, dtype=object))
    with zipfile.ZipFile(folder / "splits.npz") as z:  # the crafted member really is a pickle
        assert b"system" in z.read("test.npy")
    with pytest.raises(DataError, match="splits.npz"):
        load_data(str(folder))
    assert not marker.exists()
    # and the same object straight in a feature file
    with open(folder / "visual_features.npy", "wb") as f:
        np.save(f, np.array([_Boom(marker)] * 30, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="visual_features.npy: cannot load without pickle"):
        load_data(str(folder))
    assert not marker.exists()
    assert pickle  # (pickle is what np.save used above; imported to make that explicit)
