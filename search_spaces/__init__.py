"""Named search spaces for `tune_main.py --space NAME` (list them with --list-spaces).

A space is an Optuna define-by-run function (so priors can be log-scaled on derived quantities,
e.g. 1 - momentum, and choices can depend on each other), the fixed config overrides it runs with,
and its search budget. Adding a space = adding a module here and a line in SPACES.
"""
from __future__ import annotations

from search_spaces import components, default, smoke, wide  # each module defines one Space
from search_spaces.space import Space, trial_config  # noqa: F401  (the package's API)


SPACES: dict[str, Space] = {s.name: s for s in (default.SPACE, smoke.SPACE, wide.SPACE, components.SPACE)}


def get_space(name: str) -> Space:
    if name not in SPACES:
        raise KeyError(f"unknown search space {name!r}; known: {', '.join(sorted(SPACES))}")
    return SPACES[name]
