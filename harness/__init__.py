"""The Ray Tune glue of the search: the trainable, Ray start-up, experiment storage, progress
callbacks. `tune_main.py` (the command line) and `report.py` import it; the core library `hscmae`
never imports Ray or this package.
"""
import math

METRIC, MODE = "val_map", "max"  # what every trial reports each epoch, and which way is better


class UsageError(ValueError):
    """A flag or the storage is unusable; printed as one `error:` line, exit code 2."""


def asha_rungs(grace: int, rf: int, max_epochs: int) -> list[int]:
    """The epochs where ASHA can stop a trial (Tune's bracket s = 0: grace * rf^k below max_t);
    its scheduler records a trial's val_map at the first report at or past each."""
    if not grace or not rf or rf < 2:
        return []
    grace = min(grace, max_epochs)
    k_max = int(math.log(max_epochs / grace) / math.log(rf) + 1)
    return [r for r in (grace * rf ** k for k in range(k_max)) if r < max_epochs]
