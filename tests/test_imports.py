"""The import graph is a tree: no circle among the project's modules, and the core library never
imports the harness, Ray, reporting, the search spaces, the bench or the top-level scripts.

Checked statically, by an AST walk of every import statement (module-level and inside functions:
a lazy import is still an edge), so a circle hidden behind a function-local import is caught too."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("hscmae", "harness", "reporting", "search_spaces", "bench")
SCRIPTS = ("tune_main", "report")
CORE_MAY_NOT_IMPORT = ("ray", "harness", "reporting", "search_spaces", "bench", "tune_main", "report")


def project_modules() -> dict[str, str]:
    """module name -> file, for every .py file of the project (tests aside)."""
    mods = {s: os.path.join(ROOT, f"{s}.py") for s in SCRIPTS}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return mods


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
    """The project modules (and top-level external packages) a module imports."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import module` depends on the module (and runs pkg/__init__ first, which is
            # not an edge back); `from module import name` on the module
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        for t in targets:
            if t in known:
                out.add(t)
            elif t.split(".")[0] not in {k.split(".")[0] for k in known}:
                out.add(t.split(".")[0])  # external: keep the top-level package
            else:  # a name inside a project module: the module itself
                parts = t.split(".")
                while parts and ".".join(parts) not in known:
                    parts.pop()
                if parts:
                    out.add(".".join(parts))
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    g = {m: imports_of(m, p, known) for m, p in mods.items()}
    # importing a.b runs a/__init__.py first: a submodule depends on its package's __init__, but that
    # edge is not a circle unless the __init__ imports the submodule back, which the walk sees
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if n not in g:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    sys.setrecursionlimit(10_000)
    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_core_library_imports_no_ray_harness_reporting_or_bench():
    g = graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] in CORE_MAY_NOT_IMPORT)
           for m, deps in g.items() if m.split(".")[0] == "hscmae"}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_the_walk_sees_a_circle_and_a_lazy_import(tmp_path):
    """The checker itself: a circle made only through a function-local import is found."""
    g = {"hscmae.a": {"hscmae.b"}, "hscmae.b": {"hscmae.c"}, "hscmae.c": {"hscmae.a"}}
    assert find_cycle(g) == ["hscmae.a", "hscmae.b", "hscmae.c", "hscmae.a"]
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from hscmae.train import fit\n    import ray.tune\n")
    assert imports_of("hscmae.m", str(p), {"hscmae.train", "hscmae"}) == {"hscmae.train", "ray"}
