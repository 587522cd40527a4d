"""A standalone training's per-epoch log: OUT/history.jsonl (one JSON object per epoch, appended as
the epoch ends) and OUT/fig_training.png drawn from it at the end.

The log and the checkpoint are two files, so a kill can fall between their writes. `python -m
hscmae.train` appends an epoch's line *before* saving that epoch's checkpoint, and a resumed run
first cuts the log back to the checkpoint's epoch (`truncate_history`): lines of epochs the resumed
run will train again go, and so does a partial last line. Either way every epoch ends up exactly
once. matplotlib is imported only when the figure is drawn.
"""
from __future__ import annotations

import json
import os

HISTORY = "history.jsonl"
FIG_TRAINING = "fig_training.png"


def read_history(path: str) -> list[dict]:
    """The complete lines of a history file (a partial last line, from a kill mid-write, is skipped)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    out = []
    for line in raw.split(b"\n")[:-1]:  # the text after the last newline is not a complete line
        if line.strip():
            out.append(json.loads(line))
    return out


def truncate_history(path: str, last_epoch: int) -> int:
    """Keep the complete lines of epochs <= last_epoch (the checkpoint a run resumes from); drop the
    rest, a partial last line included. Returns the number of lines kept."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        raw = f.read()
    keep, size = 0, 0
    for line in raw.split(b"\n")[:-1]:
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            break  # a corrupt line: nothing after it is trusted
        if epoch > last_epoch:
            break
        keep, size = keep + 1, size + len(line) + 1
    if size != len(raw):
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    return keep


def append_history(path: str, metrics: dict) -> None:
    """One line, written with a single write and fsynced, so a kill leaves at most a partial last
    line (which the next resume cuts)."""
    line = (json.dumps(metrics, sort_keys=True) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def fig_training(history: list[dict]):
    """Loss terms, learned loss weights and validation mAP against epoch (three panels, 7 in wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                         "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0})
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.2))
    keys = sorted({k for h in history for k in h})
    for ax, prefix, title in ((axes[0], "loss_", "loss terms"), (axes[1], "w_", "loss weights")):
        for k in [k for k in keys if k.startswith(prefix)]:
            ax.plot(epochs, [h.get(k, float("nan")) for h in history], label=k[len(prefix):])
        ax.set_title(title)
        if ax.has_data():
            ax.legend(frameon=False)
    if any("loss" in h for h in history):
        axes[0].plot(epochs, [h.get("loss", float("nan")) for h in history], color="k", ls="--", label="total")
        axes[0].legend(frameon=False)
    for k, label in (("val_map", "mean"), ("val_map_a2v", "A→V"), ("val_map_v2a", "V→A")):
        scored = [(e, h[k]) for e, h in zip(epochs, history) if k in h]  # val_every skips some epochs
        axes[2].plot([e for e, _ in scored], [v for _, v in scored], label=label, lw=1.6 if k == "val_map" else 0.8)
    axes[2].set_title("validation mAP")
    axes[2].legend(frameon=False)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig


def write_fig_training(out_dir: str) -> str | None:
    """Draw OUT/fig_training.png from OUT/history.jsonl (atomically); None when there is no history."""
    from hscmae.io import atomic_write

    history = read_history(os.path.join(out_dir, HISTORY))
    if not history:
        return None
    fig = fig_training(history)
    path = os.path.join(out_dir, FIG_TRAINING)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=200, bbox_inches="tight",
                                             metadata={"Software": None}))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
