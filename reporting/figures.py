"""Figures of a search (matplotlib, sized for a paper column: 3.5 in single, 7 in double)."""
from __future__ import annotations

import io
import math

import pandas as pd

from harness import asha_rungs as _asha_rungs
from reporting.analysis import finished
from reporting.experiment import METRIC, STATUS_LABEL, Experiment


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                         "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.0,
                         "svg.hashsalt": "hscmae", "pdf.fonttype": 42})
    return plt


def figure_bytes(fig) -> dict[str, bytes]:
    """PNG and PDF without a creation date, so the same report gives the same files."""
    out = {}
    for ext, kw in (("png", {"dpi": 300, "metadata": {"Software": None}}),
                    ("pdf", {"metadata": {"CreationDate": None, "Producer": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kw)
        out[ext] = buf.getvalue()
    return out


def asha_rungs(space: dict, max_epochs: int) -> list[int]:
    """The epochs where ASHA can stop a trial (where the trials' val_map also chose the CCA ridge)."""
    return _asha_rungs(space.get("grace_period"), space.get("reduction_factor"), max_epochs)


def fig_curves(exp: Experiment, best_id: str | None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.5, 2.5))
    for r in asha_rungs(exp.space, exp.max_epochs):
        ax.axvline(r, color="0.8", ls=":", lw=0.8, zorder=0)
    style = {"terminated": ("C0", "-", "o"), "stopped_early": ("0.55", "-", "x"), "errored": ("C3", "--", "X")}
    status = dict(zip(exp.trials["trial_id"], exp.trials["status"]))
    seen = set()
    # only the scored epochs: with val_every > 1 the others report no val_map (NaN here), which
    # would break every line into single points
    scored = exp.curves.dropna(subset=[METRIC]) if METRIC in exp.curves else exp.curves.iloc[:0]
    for tid, c in scored.groupby("trial_id", sort=False):
        st = status.get(tid, "running")
        color, ls, marker = style.get(st, ("C2", "--", ">"))
        label = None if st in seen else STATUS_LABEL.get(st, st)
        seen.add(st)
        ax.plot(c["epoch"], c[METRIC], color=color, ls=ls, alpha=0.85, label=label)
        ax.plot(c["epoch"].iloc[-1], c[METRIC].iloc[-1], marker=marker, color=color, ms=4, ls="none")
    if best_id is not None and best_id in set(scored["trial_id"]):
        c = scored[scored["trial_id"] == best_id]
        ax.plot(c["epoch"], c[METRIC], color="C1", lw=1.8, label="best (selected on val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mAP")
    ax.set_xlim(0.5, exp.max_epochs + 0.5)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="lower right", frameon=False)
    # at epoch 1, the rungs and the last epoch val_map chooses the test-time CCA afresh, elsewhere it
    # keeps that choice (hscmae.protocol's docstring)
    ax.set_title("Validation curves (dotted: ASHA rungs, test-time CCA chosen)")
    return fig


def fig_params(exp: Experiment, best_id: str | None):
    plt = _plt()
    ok = finished(exp)
    names = [p for p in exp.searched if p in ok]
    ncol = min(3, max(1, len(names)))
    nrow = max(1, math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(7.0, 2.0 * nrow), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        spec = exp.searched[name]
        x = ok[name]
        if spec.get("type") == "categorical":  # positions, so non-numeric choices plot too
            choices = spec["choices"]
            x = x.map({c: i for i, c in enumerate(choices)})
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        elif spec.get("log"):  # the whole searched range, so every panel spans a labelled decade
            ax.set_xscale("log")
            ax.set_xlim(spec["low"] / 1.2, spec["high"] * 1.2)
            ax.xaxis.set_minor_formatter(plt.NullFormatter())  # labelled minor ticks overlap at this size
        else:
            pad = 0.04 * (spec["high"] - spec["low"])
            ax.set_xlim(spec["low"] - pad, spec["high"] + pad)
        for st, marker, color in (("terminated", "o", "C0"), ("stopped_early", "x", "0.55")):
            m = (ok["status"] == st).to_numpy()
            ax.scatter(x[m], ok[METRIC][m], marker=marker, s=14, color=color, lw=0.8, label=STATUS_LABEL[st])
        m = (ok["trial_id"] == best_id).to_numpy()
        ax.scatter(x[m], ok[METRIC][m], marker="*", s=60, color="C1", zorder=3, label="best")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("final val mAP")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def fig_importance(imp: pd.DataFrame, how: str):
    plt = _plt()
    n = max(1, len(imp))
    fig, ax = plt.subplots(figsize=(3.5, 0.3 * n + 0.9))
    if len(imp):
        ax.barh(range(len(imp))[::-1], imp["importance"], color="C0")
        ax.set_yticks(range(len(imp))[::-1], list(imp["param"]))
        ax.set_xlabel(f"importance for val mAP ({imp['evaluator'].iloc[0]})")
    else:
        ax.text(0.5, 0.5, "importance " + how, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig

