"""The Ray Tune glue of the search: the trainable, Ray start-up, experiment storage, progress
callbacks. `tune_main.py` (the command line) and `report.py` import it; the core library `hscmae`
never imports Ray or this package.
"""
from hscmae.protocol import asha_rungs  # noqa: F401  (one source of the rungs; harness users import it here)

METRIC, MODE = "val_map", "max"  # what every trial reports each epoch, and which way is better


class UsageError(ValueError):
    """A flag or the storage is unusable; printed as one `error:` line, exit code 2."""
