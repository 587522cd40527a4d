"""Writing the report folder: tables, configs, figures and summary.md, each file atomically."""
from __future__ import annotations

import os

import yaml

from harness.stopping import summary_lines
from hscmae.io import atomic_write, atomic_write_text
from reporting.analysis import _fmt, budget_notes, hparam_table, param_importance, ranked
from reporting.experiment import STATUS_LABEL, Experiment
from reporting.figures import _plt, fig_curves, fig_importance, fig_params, figure_bytes
from reporting.frames import _present, _py, to_parquet_bytes
from reporting.tables import hparam_markdown_latex, markdown_table


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write(out: str, name: str, data: bytes | str, written: list[str]) -> None:
    path = os.path.join(out, name)
    if isinstance(data, str):
        atomic_write_text(path, data)
    else:
        atomic_write(path, lambda f: f.write(data))
    os.chmod(path, 0o666 & ~_UMASK)  # atomic_write's temp file is private (0600); a report is for sharing
    written.append(name)


def _yaml_header(exp: Experiment, what: str) -> str:
    return (f"# {what}\n# from experiment {exp.name}; chosen on validation (never on test)\n")


def write_report(exp: Experiment, out: str, top_n: int = 5, importance: str = "ped-anova") -> dict:
    """Everything but the component ablation and summary.md; returns facts for the summary."""
    os.makedirs(out, exist_ok=True)
    written: list[str] = []
    _write(out, "trials.parquet", to_parquet_bytes(exp.trials), written)
    _write(out, "curves.parquet", to_parquet_bytes(exp.curves), written)

    order, rule = ranked(exp)
    best = order.iloc[0] if len(order) else None
    if best is not None:
        cfg = exp.full_config(best)
        score = (f"val_map {best['val_map']:.4f}" + (f", test_map {best['test_map']:.4f}"
                                                     if _present(best["test_map"]) else ""))
        _write(out, "best_config.yaml", _yaml_header(exp, f"best trial {best['trial_id']}: {score}")
               + f"# rule: {rule}\n" + yaml.safe_dump(cfg, sort_keys=False), written)
        top = [{"rank": i + 1, "trial_id": r["trial_id"], "val_map": float(r["val_map"]),
                "test_map": float(r["test_map"]) if _present(r["test_map"]) else None,
                "config": exp.full_config(r)} for i, (_, r) in enumerate(order.head(top_n).iterrows())]
        _write(out, "top_configs.yaml", _yaml_header(exp, f"top {len(top)} trials by {rule}")
               + "# each item's `config` is a full config (as in best_config.yaml)\n"
               + yaml.safe_dump(top, sort_keys=False), written)

    table = hparam_table(exp)
    imp, how = param_importance(exp, importance)
    _write(out, "hparam_ablation.parquet", to_parquet_bytes(table), written)
    _write(out, "param_importance.parquet", to_parquet_bytes(imp), written)
    md, tex = hparam_markdown_latex(exp, table, imp, how)
    _write(out, "hparam_ablation.md", md, written)
    _write(out, "hparam_ablation.tex", tex, written)

    plt = _plt()
    best_id = best["trial_id"] if best is not None else None
    for stem, fig in (("fig_curves", fig_curves(exp, best_id)), ("fig_params", fig_params(exp, best_id)),
                      ("fig_importance", fig_importance(imp, how))):
        for ext, data in figure_bytes(fig).items():
            _write(out, f"{stem}.{ext}", data, written)
        plt.close(fig)
    return {"best": best, "rule": rule, "importance_how": how, "written": written}


def inherited_lines(path: str) -> list[str]:
    """A branched experiment (tune_main.py --from): which trials its study inherited (study.json's
    record), since the tables and figures hold only the trials this experiment ran."""
    import json

    rec_path = os.path.join(path, "study.json")
    try:
        with open(rec_path) as f:
            inh = json.load(f).get("inherited")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(inh, dict) or not inh.get("numbers"):
        return []
    numbers, old = ", ".join(map(str, inh["numbers"])), ", ".join(map(str, inh.get("old_numbers") or []))
    return [f"{len(inh['numbers'])} trials inherited from `{inh.get('from')}` (Optuna numbers {numbers}; {old} "
            "there), not rerun: they are in this experiment's Optuna study (the sampler saw them), not in the "
            "tables and figures below.", ""]


def write_summary(exp: Experiment, out: str, facts: dict) -> None:
    t, best = exp.trials, facts["best"]
    counts = t["status"].value_counts()
    parts = [f"{int(counts[s])} {STATUS_LABEL.get(s, s)}" for s in STATUS_LABEL if s in counts]
    lines = [f"# Search report: {exp.name}", "",
             f"Experiment `{exp.path}`: {len(t)} trials ({', '.join(parts)}); at most {exp.max_epochs} epochs "
             f"per trial; space `{exp.space.get('name', '?')}`.", ""]
    lines += [f"> Note: {n}." for n in exp.notes] + ([""] if exp.notes else [])
    lines += inherited_lines(exp.path)
    errored = t[t["status"] == "errored"]
    if len(errored):  # the reason is what a reader needs first (a diverged lr, a bad checkpoint ...)
        lines += ["## Errored trials", "",
                  markdown_table(["Trial", "Error"], [[f"`{r.trial_id}`", str(r.error).replace("|", "\\|")]
                                                      for r in errored.itertuples()]), ""]
    lines += ["## Best configuration", ""]
    if best is None:
        lines += ["No trial has a validation score yet.", ""]
    else:
        test = (f"test mAP **{best['test_map']:.4f}** (A→V {best['test_map_a2v']:.4f}, V→A "
                f"{best['test_map_v2a']:.4f})" if _present(best["test_map"]) else "no test score yet")
        lines += [f"Trial `{best['trial_id']}`, chosen by the {facts['rule']} (test is never used to choose): "
                  f"validation mAP **{best['val_map']:.4f}** (A→V {best['val_map_a2v']:.4f}, V→A "
                  f"{best['val_map_v2a']:.4f}); {test}.", "",
                  markdown_table(["Searched parameter", "Value"],
                                 [[f"`{p}`", _fmt(_py(best[p])) if isinstance(_py(best[p]), float) else str(_py(best[p]))]
                                  for p in exp.searched if p in best.index]),
                  "Full config: [best_config.yaml](best_config.yaml) (`python -m hscmae.train --config "
                  "best_config.yaml`, or `python tune_main.py --config best_config.yaml`); the top configs: "
                  "[top_configs.yaml](top_configs.yaml).", ""]
    lines += summary_lines(exp.path)  # tune_main.py --stop-after / --time-budget ended it (stopped.json)
    budget = budget_notes(exp)
    if budget:  # what the search's budget may have hidden (issue 22)
        lines += ["## Budget", "", *[f"- {n[0].upper()}{n[1:]}." for n in budget], ""]
    conf = facts.get("confirmed")
    if conf is not None and len(conf):
        with open(os.path.join(out, "confirmed.md")) as f:
            lines += ["## Confirmed over seeds", "", f.read(), "best_config.yaml holds the confirmed choice; the "
                      "single-seed one is in best_config_single_seed.yaml.", ""]
    lines += ["## Tables", "",
              "- Every trial: [trials.parquet](trials.parquet); every (trial, epoch) report: "
              "[curves.parquet](curves.parquet).",
              "- Hyperparameter ablation and importance: [Markdown](hparam_ablation.md), "
              "[LaTeX](hparam_ablation.tex), [parquet](hparam_ablation.parquet), "
              f"[importance parquet](param_importance.parquet). Importance: {facts['importance_how']}."]
    comp = os.path.join(out, "component_ablation.md")
    if os.path.exists(comp):
        lines += ["- Component ablation: [Markdown](component_ablation.md), [LaTeX](component_ablation.tex), "
                  "[parquet](component_ablation.parquet), per seed: [component_runs.parquet](component_runs.parquet).",
                  ""]
        with open(comp) as f:
            lines += [f.read().replace("## ", "### ", 1)]
    else:
        lines += [f"- Component ablation: not run yet (`python report.py --ablate {exp.path}`).", ""]
    lines += ["## Figures", "",
              "Validation curves of every trial (× = stopped by ASHA, dotted lines = ASHA rungs). At the first "
              "epoch, the rungs and the last epoch each point is the final evaluation's protocol (the test-time "
              "CCA's ridge and dimension chosen on validation); the epochs between keep the latest choice, "
              "refitted on their own embeddings, so a point there is at most the protocol's score (the kept "
              "choice may no longer be the best) and a step at a rung is what choosing again gains:", "",
              "![validation curves](fig_curves.png) ([PDF](fig_curves.pdf))", "",
              "Final validation mAP against each searched parameter:", "",
              "![mAP by parameter](fig_params.png) ([PDF](fig_params.pdf))", "",
              "Parameter importance:", "", "![importance](fig_importance.png) ([PDF](fig_importance.pdf))", ""]
    # the best model's PR curves, per-class AP, embedding map, retrieval examples (--figures)
    lines += facts.get("learned") or ["PR curves, AP per class, the embedding map and retrieval examples of the "
                                      f"best model: not drawn (`python report.py --figures {exp.path}`).", ""]
    _write(out, "summary.md", "\n".join(lines), facts["written"])

