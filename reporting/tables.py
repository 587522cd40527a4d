"""Tables: Markdown and LaTeX (booktabs)."""
from __future__ import annotations

import re

import pandas as pd

from reporting.experiment import Experiment
from reporting.frames import _present


def _pm(mean, std, digits: int = 3) -> tuple[str, str]:
    """('0.412 ± 0.010', LaTeX) or '-' when missing; std left out when undefined (one value)."""
    if not _present(mean):
        return "–", "--"
    if not _present(std):
        return f"{mean:.{digits}f}", f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}", f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _tex_escape(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def latex_table(headers: list[str], rows: list[list[str]], align: str, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); cells are already LaTeX."""
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def hparam_markdown_latex(exp: Experiment, table: pd.DataFrame, imp: pd.DataFrame, how: str) -> tuple[str, str]:
    order = list(imp["param"]) + [p for p in exp.searched if p not in set(imp["param"])]
    table = table.assign(_o=table["param"].map({p: i for i, p in enumerate(order)})).sort_values(["_o"], kind="stable")
    md_rows, tex_rows = [], []
    for _, r in table.iterrows():
        md, tex = _pm(r["val_map_mean"], r["val_map_std"])
        n = f"{r['n']} ({r['n_full']})"
        md_rows.append([f"`{r['param']}`", r["bin"], n, md, f"{r['val_map_max']:.3f}"])
        tex_rows.append([f"\\texttt{{{_tex_escape(r['param'])}}}", _tex_escape(r["bin"]), n, tex, f"{r['val_map_max']:.3f}"])
    headers = ["Parameter", "Value", "Trials (full)", "val mAP", "best"]
    caption = (f"Validation mAP by searched value ({exp.name}): mean $\\pm$ std over trials of the final "
               f"val\\_map (ASHA-stopped trials at their last epoch); in brackets the trials that ran all "
               f"{exp.max_epochs} epochs.")
    md = (f"## Validation mAP by searched value\n\nFinal `val_map` per trial (ASHA-stopped trials at the epoch "
          f"they were stopped), mean ± std over trials; *Trials (full)*: trials (of which ran all "
          f"{exp.max_epochs} epochs). Parameters in order of importance.\n\n"
          + markdown_table(headers, md_rows))
    tex = latex_table(headers, tex_rows, "llrcc", caption, "tab:hparam-ablation")
    if len(imp):
        irows = [[str(r["rank"]), f"`{r['param']}`", f"{r['importance']:.3f}"] for _, r in imp.iterrows()]
        md += f"\n## Parameter importance\n\n{how}.\n\n" + markdown_table(["Rank", "Parameter", "Importance"], irows)
        tex += "\n" + latex_table(
            ["Rank", "Parameter", "Importance"],
            [[str(r["rank"]), f"\\texttt{{{_tex_escape(r['param'])}}}", f"{r['importance']:.3f}"]
             for _, r in imp.iterrows()], "rlr",
            f"Importance of the searched parameters for val\\_map ({_tex_escape(imp['evaluator'].iloc[0])}, "
            "normalised to sum to 1).", "tab:param-importance")
    else:
        md += f"\n## Parameter importance\n\n{how}.\n"
    return md, tex


def component_markdown_latex(rows: pd.DataFrame, seeds: int, trial_id: str) -> tuple[str, str]:
    headers_md = ["Model", "A→V", "V→A", "mean", "seeds"]
    headers_tex = ["Model", "A$\\to$V", "V$\\to$A", "Mean", "Seeds"]
    md_rows, tex_rows = [], []
    for _, r in rows.iterrows():
        cells = [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in ("test_map_a2v", "test_map_v2a", "test_map")]
        seeds_cell = f"{r['n_ok']}/{r['n_seeds']}"
        md_rows.append([r["label"] + ("" if r["component"] == "full" else f" (`{r['changes']}`)"),
                        *[c[0] for c in cells], seeds_cell])
        tex_rows.append([_tex_escape(r["label"]), *[c[1] for c in cells], seeds_cell])
    epochs = rows["epochs"].dropna()
    ep = f", {int(epochs.iloc[0])} epochs" if len(epochs) else ""
    md = (f"## Component ablation (test mAP, mean ± std over {seeds} seed(s){ep})\n\n"
          f"Each row retrains the best config (trial `{trial_id}`) with one component switched off.\n\n"
          + markdown_table(headers_md, md_rows))
    tex = latex_table(headers_tex, tex_rows, "lcccc",
                      f"Component ablation: test retrieval mAP, mean $\\pm$ std over {seeds} seed(s){ep}; each "
                      f"row switches one component of the best configuration (trial {_tex_escape(trial_id)}) off.",
                      "tab:component-ablation")
    return md, tex

