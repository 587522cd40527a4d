"""What the best trial's model learned (`report.py --figures`): precision-recall curves against the
baselines, AP per class, a t-SNE map of the shared space, retrieval examples, the embeddings.

The model: the best trial's last Tune checkpoint (`checkpoint_*/checkpoint.pt`, read with
torch.load(weights_only=True) through hscmae.checkpoint.load_checkpoint; Tune's own pickles are never
opened), refused unless saved with the trial's config (the epoch it was saved at is stated); with
`--figures-from retrain`, or when the trial has no checkpoint, the config is retrained here (as long as
one trial took). Everything is scored on the test split, after the test-time CCA the final
evaluation chose on validation (the embeddings the retrieval protocol scores).
"""
from __future__ import annotations

import glob
import os
import re

import numpy as np
import pandas as pd

from reporting.experiment import Experiment, ReportError, load_search_data
from reporting.frames import _frame

TSNE_MAX_CLIPS = 1000  # test clips in the map (x 2 modalities); more are subsampled with seed 0
N_EXAMPLES = 3  # retrieval example queries per direction
TOP = 5


# ------------------------------------------------------------------------------------------------
# The model: the best trial's checkpoint, or a retrain
# ------------------------------------------------------------------------------------------------
def last_checkpoint(trial_folder: str) -> str | None:
    """The highest-numbered checkpoint_*/checkpoint.pt of a trial folder (Tune's own naming)."""
    found = []
    for d in glob.glob(os.path.join(glob.escape(trial_folder), "checkpoint_*")):
        m = re.fullmatch(r"checkpoint_(\d+)", os.path.basename(d))
        if m and os.path.isfile(os.path.join(d, "checkpoint.pt")):
            found.append((int(m.group(1)), os.path.join(d, "checkpoint.pt")))
    return max(found)[1] if found else None


def best_model(exp: Experiment, best: pd.Series, how: str = "checkpoint", log=print):
    """(cfg, data, model, where the model came from, its final evaluation's test-time CCA choice
    or None: `hscmae.checkpoint.final_choice`)."""
    from hscmae.checkpoint import CheckpointError, config_diff, final_choice, load_checkpoint, load_model
    from hscmae.config import config_from_dict
    from hscmae.export import require_classes
    from hscmae.train import fit

    cfg = config_from_dict(exp.full_config(best))
    data = load_search_data(exp, cfg, "its model cannot be evaluated on it")
    require_classes(data, cfg.data)
    ckpt = last_checkpoint(os.path.join(exp.path, best["trial_dir"])) if how == "checkpoint" else None
    if ckpt is None:
        why = "--figures-from retrain" if how == "retrain" else f"trial {best['trial_id']} has no checkpoint"
        log(f"[report] figures: retraining the best config ({why}; {cfg.epochs} epochs)")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hscmae-report-") as d:  # fit saves, we reload
            fit(cfg, data, out_dir=d, log=None)
            state = load_checkpoint(os.path.join(d, "checkpoint.pt"))
        source = f"retrained here from the best config ({why})"
    else:
        try:
            state = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise ReportError(str(e)) from None
        diff = config_diff(state, cfg)
        if diff:
            raise ReportError(f"{ckpt}: checkpoint does not match trial {best['trial_id']}'s config "
                              f"(keys {diff})")
        source = f"trial {best['trial_id']}'s last checkpoint ({os.path.relpath(ckpt, exp.path)})"
        if state["epoch"] != cfg.epochs:  # a provisional best of a running search: say so
            source += f", saved at epoch {state['epoch']} of {cfg.epochs}"
    try:
        model = load_model(cfg, data, ckpt or "the retrained model", state)
    except CheckpointError as e:
        raise ReportError(str(e)) from None
    return cfg, data, model, source, final_choice(state, cfg)


# ------------------------------------------------------------------------------------------------
# Numbers behind the figures
# ------------------------------------------------------------------------------------------------
def curves_of(pa: np.ndarray, pv: np.ndarray, data, split: str = "test") -> dict:
    """PR curves, per-query APs and mAP of both directions on a split."""
    from hscmae.metrics import pr_curve, retrieval_map

    idx = data.splits[split]
    a, v, lab = pa[idx], pv[idx], data.labels[idx]
    out = {}
    for d, (q, g) in (("a2v", (a, v)), ("v2a", (v, a))):
        levels, prec = pr_curve(q, g, lab, lab)
        m, ap = retrieval_map(q, g, lab, lab, return_per_query=True)
        out[d] = {"recall": levels, "precision": prec, "map": m, "ap": ap}
    return out


def learned_numbers(exp: Experiment, best: pd.Series, how: str, dcca_epochs: int | None, log=print) -> dict:
    """Everything the figures and tables show. dcca_epochs: also train the DCCA-only baseline
    (--ablate ran) for that many epochs."""
    from hscmae.baselines import dcca_config
    from hscmae.protocol import best_linear_cca
    from hscmae.checkpoint import final_choice, load_checkpoint, load_model
    from hscmae.export import protocol_embeddings
    from hscmae.train import fit

    cfg, data, model, source, choice = best_model(exp, best, how, log)
    emb = protocol_embeddings(model, data, cfg, choice)
    methods = {"HSC-MAE": curves_of(emb["audio_cca"], emb["visual_cca"], data)}
    _, reg, dim, la, lv = best_linear_cca(data.audio, data.visual, data)
    methods["linear CCA (raw features)"] = curves_of(la, lv, data)
    notes = {"linear CCA (raw features)": f"ridge {reg:g}, dim {dim}, chosen on val"}
    if dcca_epochs is not None:
        import tempfile


        dcfg = dcca_config(cfg, epochs=dcca_epochs)
        log(f"[report] figures: training the DCCA-only baseline ({dcca_epochs} epochs)")
        with tempfile.TemporaryDirectory(prefix="hscmae-report-") as d:
            fit(dcfg, data, out_dir=d, log=None)
            dstate = load_checkpoint(os.path.join(d, "checkpoint.pt"))
            dmodel = load_model(dcfg, data, "the DCCA-only baseline", dstate)
        demb = protocol_embeddings(dmodel, data, dcfg, final_choice(dstate, dcfg))
        methods["DCCA only"] = curves_of(demb["audio_cca"], demb["visual_cca"], data)
        notes["DCCA only"] = f"the best config with every term but DCCA off, {dcca_epochs} epochs"
    return {"cfg": cfg, "data": data, "emb": emb, "source": source, "methods": methods, "notes": notes}


def per_class_table(numbers: dict) -> pd.DataFrame:
    """AP per class on test, both directions, for HSC-MAE and linear CCA; sorted by HSC-MAE's mean."""
    from hscmae.metrics import per_class_map

    data = numbers["data"]
    lab = data.labels[data.splits["test"]]
    rows = {}
    for method, key in (("HSC-MAE", "hscmae"), ("linear CCA (raw features)", "linear_cca")):
        for d in ("a2v", "v2a"):
            for c, v in per_class_map(numbers["methods"][method][d]["ap"], lab).items():
                rows.setdefault(c, {"class": int(c), "n_test": int((lab == c).sum())})[f"{key}_ap_{d}"] = v
    for r in rows.values():
        for key in ("hscmae", "linear_cca"):
            r[f"{key}_ap"] = (r[f"{key}_ap_a2v"] + r[f"{key}_ap_v2a"]) / 2
    order = sorted(rows.values(), key=lambda r: (-r["hscmae_ap"], r["class"]))
    cols = {"class": "int", "n_test": "int", **{f"{k}_ap{s}": "float" for k in ("hscmae", "linear_cca")
                                                for s in ("_a2v", "_v2a", "")}}
    return _frame(order, cols)


def pr_table(numbers: dict) -> pd.DataFrame:
    """The PR curves behind fig_pr: one row per (method, direction, recall level)."""
    rows = [{"method": method, "direction": d, "recall": float(r), "precision": float(p), "map": float(c[d]["map"])}
            for method, c in numbers["methods"].items() for d in ("a2v", "v2a")
            for r, p in zip(c[d]["recall"], c[d]["precision"])]
    return _frame(rows, {"method": "str", "direction": "str", "recall": "float", "precision": "float", "map": "float"})


def per_class_markdown(table: pd.DataFrame) -> str:
    from reporting.tables import markdown_table

    rows = [[str(r.class_), str(r.n_test), f"{r.hscmae_ap_a2v:.3f}", f"{r.hscmae_ap_v2a:.3f}",
             f"**{r.hscmae_ap:.3f}**", f"{r.linear_cca_ap:.3f}"]
            for r in table.rename(columns={"class": "class_"}).itertuples(index=False)]
    return ("## AP per class (test split)\n\nMean AP of the test queries of each class, HSC-MAE after its "
            "test-time CCA; the last column is linear CCA on the raw features (mean of both directions). "
            "Sorted by HSC-MAE's mean.\n\n"
            + markdown_table(["Class", "Test clips", "A→V", "V→A", "mean", "linear CCA"], rows))


def retrieval_examples(numbers: dict, n: int = N_EXAMPLES, top: int = TOP) -> str:
    """Top-`top` retrieved test clips for `n` fixed test queries per direction (seed 0)."""
    from reporting.tables import markdown_table

    data, emb = numbers["data"], numbers["emb"]
    idx = data.splits["test"]
    lab = data.labels[idx]
    a = emb["audio_cca"][idx].astype(np.float64)
    v = emb["visual_cca"][idx].astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    picks = np.sort(np.random.default_rng(0).choice(len(idx), size=min(n, len(idx)), replace=False))
    lines = ["# Retrieval examples (test split)", "",
             f"{len(picks)} fixed test queries per direction (drawn with seed 0), the top {top} clips of the "
             "other modality by cosine similarity after the test-time CCA. Clip = row index in the data "
             "set (no media here, so ids and classes); ✓ = same class (relevant), ◆ = the query's own pair.", ""]
    for d, (q, g, qname, gname) in (("a2v", (a, v, "audio", "visual")), ("v2a", (v, a, "visual", "audio"))):
        ap = numbers["methods"]["HSC-MAE"][d]["ap"]
        lines += [f"## {qname} → {gname}", ""]
        for i in picks:
            s = g @ q[i]
            order = np.lexsort((np.arange(len(s)), -s))[:top]  # by score, ties by position
            rows = [[str(rank + 1), f"{int(idx[j])}", str(int(lab[j])), f"{s[j]:.3f}",
                     ("✓" if lab[j] == lab[i] else "") + (" ◆" if j == i else "")] for rank, j in enumerate(order)]
            lines += [f"Query: {qname} of clip {int(idx[i])}, class {int(lab[i])} (AP {ap[i]:.3f})", "",
                      markdown_table(["Rank", f"{gname} clip", "Class", "Score", ""], rows)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
STYLE = {"HSC-MAE": ("C1", "-", "o"), "linear CCA (raw features)": ("C0", "--", "s"), "DCCA only": ("C2", "-.", "^")}


def fig_pr(numbers: dict):
    from reporting.figures import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), sharey=True)
    for ax, (d, title) in zip(axes, (("a2v", "audio → visual"), ("v2a", "visual → audio"))):
        for method, curves in numbers["methods"].items():
            c = curves[d]
            color, ls, marker = STYLE.get(method, ("C3", ":", "x"))
            ax.plot(c["recall"], c["precision"], color=color, ls=ls, marker=marker, ms=3,
                    label=f"{method} (mAP {c['map']:.3f})")
        ax.set_title(f"{title} (test)")
        ax.set_xlabel("recall")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(loc="upper right", frameon=False)
    axes[0].set_ylabel("interpolated precision")
    fig.tight_layout()
    return fig


def fig_per_class(table: pd.DataFrame):
    from reporting.figures import _plt

    plt = _plt()
    n = len(table)
    fig, ax = plt.subplots(figsize=(7.0 if n > 12 else 3.5, 2.4))
    x = np.arange(n)
    w = 0.4
    ax.bar(x - w / 2, table["hscmae_ap_a2v"], w, color="C1", label="A→V")
    ax.bar(x + w / 2, table["hscmae_ap_v2a"], w, color="C4", label="V→A")
    ax.plot(x, table["linear_cca_ap"], ls="none", marker="_", ms=8, color="k", label="linear CCA (mean)")
    ax.set_xticks(x, [str(c) for c in table["class"]], fontsize=6 if n > 20 else 7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("class (sorted by HSC-MAE's mean AP)")
    ax.set_ylabel("AP (test)")
    ax.set_ylim(0, 1.0)
    ax.grid(axis="y", alpha=0.3, lw=0.5)
    ax.legend(loc="upper right", frameon=False, ncol=3)
    fig.tight_layout()
    return fig


def tsne_points(numbers: dict, max_clips: int = TSNE_MAX_CLIPS) -> dict:
    """2-D t-SNE (scikit-learn, seed 0) of the test clips' audio and visual embeddings together,
    L2-normalised so Euclidean neighbours are cosine neighbours; > max_clips clips: a seed-0 subsample."""
    from sklearn.manifold import TSNE

    data, emb = numbers["data"], numbers["emb"]
    idx = data.splits["test"]
    n_all = len(idx)
    if n_all > max_clips:
        idx = np.sort(np.random.default_rng(0).choice(idx, size=max_clips, replace=False))
    x = np.concatenate([emb["audio_cca"][idx], emb["visual_cca"][idx]]).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = min(30.0, (len(x) - 1) / 3)
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(x)
    return {"xy": xy, "labels": data.labels[idx], "n": len(idx), "n_all": n_all, "perplexity": perplexity}


def tsne_caption(t: dict) -> str:
    sub = (f"a random subsample (seed 0) of {t['n']} of the {t['n_all']} test clips" if t["n"] < t["n_all"]
           else f"all {t['n']} test clips")
    return (f"t-SNE (scikit-learn, seed 0, perplexity {t['perplexity']:.0f}) of the L2-normalised test embeddings "
            f"after the test-time CCA: {sub}, each as its audio (●) and its visual (▲) embedding; colour = class")


def fig_embedding_map(t: dict):
    from reporting.figures import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    n = t["n"]
    classes = np.unique(t["labels"])
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
    colour = {c: cmap(i / max(1, len(classes) - 1)) if len(classes) > 20 else cmap(i) for i, c in enumerate(classes)}
    cols = np.array([colour[c] for c in t["labels"]])
    size = 12 if n <= 300 else 5
    ax.scatter(t["xy"][:n, 0], t["xy"][:n, 1], c=cols, marker="o", s=size, lw=0, alpha=0.8, label="audio")
    ax.scatter(t["xy"][n:, 0], t["xy"][n:, 1], c=cols, marker="^", s=size * 1.4, lw=0, alpha=0.8, label="visual")
    leg = ax.legend(loc="upper right", frameon=True, framealpha=0.8, markerscale=1.5)
    for h in leg.legend_handles:
        h.set_color("0.3")
    if len(classes) <= 10:  # a class key fits; with more, colour only separates neighbours
        from matplotlib.patches import Patch

        ax.add_artist(leg)
        ax.legend(handles=[Patch(color=colour[c], label=str(c)) for c in classes], title="class",
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False, ncol=len(classes), fontsize=6,
                  title_fontsize=6, handlelength=0.8, columnspacing=0.8)  # below the map: covers no point
    ax.set_xticks([])
    ax.set_yticks([])
    sub = f"{n} of {t['n_all']} test clips (seed-0 subsample)" if n < t["n_all"] else f"all {n} test clips"
    ax.set_title(f"t-SNE of the shared space: {sub}", fontsize=7)
    fig.tight_layout()
    return fig


def write_learned(exp: Experiment, out: str, best: pd.Series | None, how: str = "checkpoint",
                  with_dcca: bool = False, epochs: int | None = None, log=print) -> dict:
    """Writes the figures, tables and the embeddings; returns {written, summary: lines for
    summary.md, maps}. with_dcca (--ablate): also the DCCA-only baseline, trained for `epochs`
    (--epochs) or the best config's."""
    from hscmae.export import write_embeddings
    from reporting.figures import _plt, figure_bytes
    from reporting.frames import to_parquet_bytes
    from reporting.writing import _write

    if best is None:
        raise ReportError(f"{exp.path}: no trial with a validation score, so no best config for --figures")
    dcca_epochs = (epochs or int(exp.full_config(best)["epochs"])) if with_dcca else None
    numbers = learned_numbers(exp, best, how, dcca_epochs, log)
    written: list[str] = []
    table = per_class_table(numbers)
    _write(out, "per_class_ap.parquet", to_parquet_bytes(table), written)
    _write(out, "per_class_ap.md", per_class_markdown(table), written)
    _write(out, "pr_curves.parquet", to_parquet_bytes(pr_table(numbers)), written)
    _write(out, "retrieval_examples.md", retrieval_examples(numbers), written)
    t = tsne_points(numbers)
    plt = _plt()
    for stem, fig in (("fig_pr", fig_pr(numbers)), ("fig_per_class", fig_per_class(table)),
                      ("fig_embedding_map", fig_embedding_map(t))):
        for ext, data in figure_bytes(fig).items():
            _write(out, f"{stem}.{ext}", data, written)
        plt.close(fig)
    for p in write_embeddings(numbers["emb"], numbers["data"], numbers["cfg"], out, "npz"):
        written.append(os.path.basename(p))
    m = numbers["methods"]
    legend = "; ".join(f"{k}: test mAP A→V {v['a2v']['map']:.4f}, V→A {v['v2a']['map']:.4f}"
                       + (f" ({numbers['notes'][k]})" if k in numbers["notes"] else "") for k, v in m.items())
    lines = ["## What the model learned", "",
             f"The best trial's model: {numbers['source']}; test split, after the test-time CCA chosen on "
             f"validation (ridge {numbers['emb']['scores']['test_cca_reg']:g}, dim "
             f"{int(numbers['emb']['scores']['test_cca_dim'])}; dim 0 = none).", "",
             f"Precision-recall curves (11-point interpolated precision averaged over the test queries; "
             f"[parquet](pr_curves.parquet)). {legend}.",
             "", "![precision-recall](fig_pr.png) ([PDF](fig_pr.pdf))", "",
             "AP per class, both directions, classes sorted by HSC-MAE's mean; black marks: linear CCA "
             "([Markdown](per_class_ap.md), [parquet](per_class_ap.parquet)):", "",
             "![AP per class](fig_per_class.png) ([PDF](fig_per_class.pdf))", "",
             f"{tsne_caption(t)}:", "", "![embedding map](fig_embedding_map.png) ([PDF](fig_embedding_map.pdf))", "",
             "Retrieval examples: [retrieval_examples.md](retrieval_examples.md). Every clip's embeddings "
             "before and after the test-time CCA, with labels and splits: [embeddings.npz](embeddings.npz) "
             "(`np.load(path, allow_pickle=False)`).", ""]
    return {"written": written, "summary": lines,
            "maps": {k: {d: v[d]["map"] for d in ("a2v", "v2a")} for k, v in m.items()}}

