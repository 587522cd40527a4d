"""The README's report.py command lines, as written there, parse (argparse) to what they say: the
experiment is the experiment (`python report.py --figures <experiment>` once took it for --figures'
value), --figures and --ablate are on where the line has them. And the files the README and
BENCHMARKS.md name exist (the configs moved from bench/ to config/, the cca-zoo runner to hscmae/),
the runner importable without cca-zoo."""
import importlib
import os
import re
import shlex
import sys

import pytest

import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()


def _report_lines(text: str) -> list[str]:
    """Every `python report.py ...` of the README: lines of its code blocks (comment cut off) and
    inline code spans."""
    lines, in_block = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block and line.startswith("python report.py"):
            lines.append(line.split("  #")[0].strip())
    lines += [m.strip() for m in re.findall(r"`(python report\.py[^`]*)`", text)]
    return lines


def _argv(line: str) -> list[str]:
    """The line's arguments with its placeholders filled in and its [optional] parts included; a
    fragment naming no experiment (`python report.py --ablate --gpus-per-task G` in a sentence)
    gets one at the end."""
    rest = line[len("python report.py"):]
    line = re.sub(r"<[^>]+>", "EXP", rest) + ("" if "<" in rest else " EXP")
    line = line.replace("[", " ").replace("]", " ")
    words = shlex.split(line)
    fill = {"N": "2", "DIR": "report-out", "G": "0.5"}
    return [fill.get(w, w) for w in words]


LINES = _report_lines(README)


def test_the_readme_has_its_report_commands():
    assert "python report.py --figures <experiment>" in LINES
    assert any(line.startswith("python report.py --ablate") for line in LINES)
    assert len(LINES) >= 4


@pytest.mark.parametrize("line", LINES)
def test_each_readme_report_command_parses_as_written(line):
    argv = _argv(line)
    args = report.parse_args(argv)
    assert args.experiment == "EXP"
    assert args.figures == ("--figures" in argv or "--figures-from" in argv)
    assert args.ablate == ("--ablate" in argv)
    if "--figures-from" in argv:
        assert args.figures_from == argv[argv.index("--figures-from") + 1]


def _named_paths():
    found = set()
    for doc in ("README.md", "BENCHMARKS.md"):
        text = open(os.path.join(REPO, doc)).read()
        found |= {(doc, m) for m in re.findall(
            r"(?<![\w/.])((?:config|bench|hscmae|reporting|harness|search_spaces|tests|docs)/[\w/.-]*\w\.(?:py|yaml|sh|png))",
            text)}
    return sorted(found)


def test_the_files_the_docs_name_exist():
    paths = _named_paths()
    assert ("README.md", "config/best_components_search_digits.yaml") in paths
    missing = [(doc, p) for doc, p in paths if not os.path.exists(os.path.join(REPO, p))]
    assert missing == []


def test_the_ccazoo_runner_imports_without_ccazoo(monkeypatch):
    monkeypatch.setitem(sys.modules, "cca_zoo", None)  # `import cca_zoo` now fails, as where it is absent
    monkeypatch.delitem(sys.modules, "hscmae.dccae_ccazoo", raising=False)
    module = importlib.import_module("hscmae.dccae_ccazoo")
    with pytest.raises(ImportError):
        module.main({"data": "synthetic:tiny"})


def _tune_lines(text: str) -> list[str]:
    lines = [m.strip() for m in re.findall(r"`(python tune_main\.py[^`]*)`", text)]
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.startswith("python tune_main.py"):
            lines.append(line.split("  #")[0].strip())
    return lines


TUNE_LINES = _tune_lines(README)


def test_the_readme_shows_the_confirm_and_set_flags_of_tune_main():
    assert any("--confirm" in line for line in TUNE_LINES) and any("--set" in line for line in TUNE_LINES)


@pytest.mark.parametrize("line", TUNE_LINES)
def test_each_readme_tune_main_command_parses_as_written(line):
    """Every `python tune_main.py ...` the README shows is a command line tune_main accepts (its
    flags, their values; placeholders filled in), so a renamed flag cannot leave the README behind."""
    import tune_main

    rest = re.sub(r"<[^>]+>", "EXP", line[len("python tune_main.py"):]).replace("[", " ").replace("]", " ")
    words = [{"N": "2", "S": "2", "K": "2", "G": "0.5", "URL": "sqlite:///s.db", "URI": "file:./mlruns"}.get(w, w)
             for w in shlex.split(rest)]
    args = tune_main.parse_args(words)
    for w in words:
        if w.startswith("--") and "=" not in w:
            dest = w[2:].replace("-", "_")
            assert hasattr(args, dest), (line, w)
