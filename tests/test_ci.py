"""CI runs exactly the README's test commands: the fast suite, then the slow one."""
import os
import re

import pytest

from conftest import ROOT


def test_ci_runs_the_readme_test_commands_verbatim():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    tests = next(b for b in blocks if "pytest" in b).strip().splitlines()  # the first block with pytest
    assert tests == ["pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q",
                     "python -m pytest -q -m slow -n 2 --dist loadfile"], tests
    ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if line.strip() and not line.startswith("#")]
    assert [line for line in ci if line in tests] == tests, ci  # both, in the README's order


def test_the_default_run_is_the_fast_suite():
    """pyproject's addopts deselects the slow tests; `-m slow` on the command line overrides it."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    ini = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["pytest"]["ini_options"]
    assert '-m "not slow"' in ini["addopts"]
    assert any(m.startswith("slow:") for m in ini["markers"])
