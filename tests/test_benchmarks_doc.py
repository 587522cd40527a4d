"""BENCHMARKS.md has one fixed reading order, owned by bench/common.py's SECTIONS: the section writer
puts a section at its place (not at the end), replaces it in place, numbers the headings from the
order, and refuses an id the order does not list. Checked against hand-written expected files, and
on the shipped BENCHMARKS.md itself (already in order, numbered once, referring to sections by name)."""
import ast
import glob
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "BENCHMARKS.md")


def _common():
    spec = importlib.util.spec_from_file_location("bench_common_doc", os.path.join(REPO, "bench", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _common()

ORDER = (("summary", "", "Summary"),
         ("alpha", "Speed", "Alpha"),
         ("beta", "Speed", "Beta"),
         ("gamma", "Quality", "Gamma"))

HEAD = "# Test file\n\nIntro line.\n"

# gamma, then alpha (its own number 7b is replaced), then the summary: alpha 1, gamma 2 (beta absent)
EXPECTED_3 = """# Test file

Intro line.

<!-- contents:start -->
Sections (their order is `SECTIONS` in bench/common.py):

- [Summary](#summary-of-it)
- Speed:
  - [1. Alpha](#1-alpha-benchalphapy)
- Quality:
  - [2. Gamma](#2-gamma)
<!-- contents:end -->

<!-- summary:start -->
## Summary of it

All good.
<!-- summary:end -->

<!-- alpha:start -->
## 1. Alpha (`bench/alpha.py`)

| a |
| --- |
| 1 |
<!-- alpha:end -->

<!-- gamma:start -->
## 2. Gamma

gamma text
<!-- gamma:end -->
"""

# then alpha again (replaced where it is) and beta (between alpha and gamma; gamma becomes 3)
EXPECTED_5 = """# Test file

Intro line.

<!-- contents:start -->
Sections (their order is `SECTIONS` in bench/common.py):

- [Summary](#summary-of-it)
- Speed:
  - [1. Alpha](#1-alpha-benchalphapy)
  - [2. Beta](#2-beta)
- Quality:
  - [3. Gamma](#3-gamma)
<!-- contents:end -->

<!-- summary:start -->
## Summary of it

All good.
<!-- summary:end -->

<!-- alpha:start -->
## 1. Alpha (`bench/alpha.py`)

alpha, second run
<!-- alpha:end -->

<!-- beta:start -->
## 2. Beta

beta text
<!-- beta:end -->

<!-- gamma:start -->
## 3. Gamma

gamma text
<!-- gamma:end -->
"""


def _write(path, name, text):
    common.write_section(name, text, str(path), sections=ORDER)


def test_sections_land_in_order_numbered_and_replaced_in_place(tmp_path):
    path = tmp_path / "B.md"
    path.write_text(HEAD)
    _write(path, "gamma", "## 4. Gamma\n\ngamma text\n")
    _write(path, "alpha", "## 7b. Alpha (`bench/alpha.py`)\n\n| a |\n| --- |\n| 1 |")
    _write(path, "summary", "\n## Summary of it\n\nAll good.\n\n")
    assert path.read_text() == EXPECTED_3
    _write(path, "alpha", "## Alpha (`bench/alpha.py`)\n\nalpha, second run")
    _write(path, "beta", "## Beta\n\nbeta text")
    assert path.read_text() == EXPECTED_5
    common.reorder(str(path), sections=ORDER)  # already in order: nothing changes
    assert path.read_text() == EXPECTED_5


def test_a_file_in_another_order_is_put_in_order_text_unchanged(tmp_path):
    path = tmp_path / "B.md"
    path.write_text(HEAD + "\n<!-- gamma:start -->\n## 9. Gamma\n\ngamma text\n<!-- gamma:end -->\n\n"
                    "<!-- beta:start -->\n## Beta\n\nbeta text\n<!-- beta:end -->\n"
                    "<!-- alpha:start -->\n## 1c. Alpha (`bench/alpha.py`)\n\nalpha, second run\n<!-- alpha:end -->\n"
                    "<!-- summary:start -->\n## 3. Summary of it\n\nAll good.\n<!-- summary:end -->\n")
    common.reorder(str(path), sections=ORDER)
    assert path.read_text() == EXPECTED_5


def test_an_unknown_id_is_an_error_not_an_append(tmp_path, capsys):
    path = tmp_path / "B.md"
    path.write_text(EXPECTED_5)
    with pytest.raises(ValueError, match="'delta' is not in bench/common.py's SECTIONS"):
        _write(path, "delta", "## Delta\n\nx")
    with pytest.raises(ValueError, match="not in bench/common.py's SECTIONS"):
        common.publish("no_such_section", "## X\n", no_write=True)  # caught by the --quick runs too
    assert capsys.readouterr().out == ""
    path.write_text(EXPECTED_5 + "\n<!-- delta:start -->\n## Delta\n<!-- delta:end -->\n")
    with pytest.raises(ValueError, match=r"\['delta'\] are not in bench/common.py's SECTIONS"):
        _write(path, "beta", "## Beta\n\nnew")
    assert path.read_text().endswith("<!-- delta:end -->\n")  # untouched


@pytest.mark.parametrize("bad, why", [
    (EXPECTED_5.replace("<!-- beta:end -->\n", "<!-- beta:end -->\nloose text\n"), "text outside any section"),
    (EXPECTED_5.replace("<!-- beta:end -->\n", ""), "starts inside section 'beta'"),
    (EXPECTED_5.replace("<!-- gamma:start -->\n", ""), "unbalanced markers for section 'gamma'"),
    (EXPECTED_5 + "<!-- beta:start -->\n## Beta\n<!-- beta:end -->\n", "section 'beta' appears twice"),
    (EXPECTED_5.replace("## 2. Beta", "Beta"), "section 'beta' must begin with a '## ' heading"),
])
def test_a_file_the_writer_would_damage_is_refused(tmp_path, bad, why):
    path = tmp_path / "B.md"
    path.write_text(bad)
    with pytest.raises(ValueError, match=re.escape(why)):
        _write(path, "alpha", "## Alpha\n\nx")
    assert path.read_text() == bad


def test_the_order_reserves_the_planned_sections():
    ids = [s[0] for s in common.SECTIONS]
    assert len(ids) == len(set(ids)) and ids[0] == "summary"
    assert ids.index("bench_noise") == ids.index("bench_quality_real") + 1
    assert ids.index("bench_quality") < ids.index("bench_quality_real") < ids.index("bench_search")


def _published_ids():
    """Every section id a bench script can write: string constants named *SECTION* and literal
    first arguments of publish()/write_section()."""
    found = {}
    for path in glob.glob(os.path.join(REPO, "bench", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                values = [node.value]
                if len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple):
                    names = [t.id for t in node.targets[0].elts if isinstance(t, ast.Name)]
                    values = node.value.elts if isinstance(node.value, ast.Tuple) else []
                for n, v in zip(names, values):
                    if "SECTION" in n and isinstance(v, ast.Constant) and isinstance(v.value, str):
                        found[v.value] = path
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    in ("publish", "write_section") and node.args and isinstance(node.args[0], ast.Constant)):
                found[node.args[0].value] = path
    return found


def test_every_section_a_script_writes_has_its_place():
    found = _published_ids()
    assert {"bench_train", "bench_quality_real", "bench_report", "gpu_check"} <= set(found)
    ids = {s[0] for s in common.SECTIONS}
    assert {k: v for k, v in found.items() if k not in ids} == {}


def test_the_shipped_file_is_in_order_and_numbered_once(tmp_path):
    text = open(BENCHMARKS).read()
    copy = tmp_path / "B.md"
    copy.write_text(text)
    common.reorder(str(copy))
    assert copy.read_text() == text, "BENCHMARKS.md is not in SECTIONS order: run python bench/common.py"
    numbers = re.findall(r"^## (\d+)\. ", text, flags=re.M)
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)]
    assert re.findall(r"^## ", text, flags=re.M).__len__() == len(numbers) + 1  # + the unnumbered summary


@pytest.mark.parametrize("doc", ["BENCHMARKS.md", "README.md", "RELIABILITY.md"])
def test_documents_name_benchmark_sections_not_their_old_numbers(doc):
    """Numbers move when a section is added; names do not."""
    text = open(os.path.join(REPO, doc)).read()
    old = re.findall(r"\b[Ss]ections? \d+[a-z]?\b|BENCHMARKS(?:\.md)? (?:sections? )?\d+[a-z]?\b", text)
    assert old == []


def test_machine_info_names_the_machine():
    assert "machine:" in common.machine_info()
