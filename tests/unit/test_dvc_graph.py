"""dvc.yaml's deps cannot drift from the code: each stage's deps cover every module it runs.

A stage runs the transitive import closure of its ``cmd``'s module (``python -m stages.X``),
computed here from the code with :mod:`ast`: ``import a.b``, ``from a import b`` (``b`` may be a
submodule), ``from a.b import c``, imports inside functions (lazy) included, ``if
TYPE_CHECKING:`` blocks excluded, the ``-m selfimprove.…`` modules that the code's subprocess
commands run included, and the ``__init__.py`` of every package on the way. A dep covers a file
when it is that file or a folder above it.

Also here: what an interrupted run leaves in data/rounds does not mark ``report`` changed
(.dvcignore), the package's import graph (lazy imports included) is acyclic among modules and
among subpackages, nothing in it imports ``stages``, and no module in ``src/`` is over 650 lines.
"""

from __future__ import annotations

import ast
import copy
import re
from functools import cache
from pathlib import Path

import yaml
from tinyproject import dvc, new_project, run, tiny_params

ROOT = Path(__file__).resolve().parents[2]
#: top-level package name -> the folder it lives in (relative to the project root)
PACKAGES = {"selfimprove": Path("src/selfimprove"), "stages": Path("stages")}
MAX_LINES = 650
CMD_MODULE = re.compile(r"python\s+-m\s+([\w.]+)")
#: ``-m selfimprove.x`` / ``-m stages.x`` inside a string of a subprocess command
M_IN_STRING = re.compile(r"-m\s+((?:selfimprove|stages)(?:\.\w+)+)")


# ------------------------------------------------------------------ modules and their imports


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file (relative to ``root``) of module ``name`` of this project, or None."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = PACKAGES[top].joinpath(*rest)
    for cand in (base / "__init__.py", base.with_suffix(".py") if rest else None):
        if cand is not None and (root / cand).is_file():
            return cand
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, lazy: bool):
    """The nodes of ``tree``, skipping ``if TYPE_CHECKING:`` bodies and (``lazy`` False) the
    bodies of functions (what runs later, not at import)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if not lazy and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _package_of(name: str, file: Path) -> str:
    return name if file.name == "__init__.py" else name.rpartition(".")[0]


@cache
def imports(name: str, lazy: bool = True, root: Path = ROOT) -> frozenset[str]:
    """Names of this project's modules that module ``name`` imports (or runs with ``-m``)."""
    file = module_file(name, root)
    if file is None:
        return frozenset()
    tree = ast.parse((root / file).read_text(), str(file))
    found: set[str] = set()

    def add(mod: str) -> None:
        if module_file(mod, root) is not None:
            found.add(mod)

    docs = _docstrings(tree)
    for node in _nodes(tree, lazy):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(name, file).split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            add(base)
            for alias in node.names:
                add(f"{base}.{alias.name}")  # a submodule: from selfimprove.core import answers
        elif lazy and isinstance(node, ast.List | ast.Tuple):  # [..., "-m", "selfimprove.x"]
            elts = node.elts
            for a, b in zip(elts, elts[1:], strict=False):
                if isinstance(a, ast.Constant) and a.value == "-m":
                    if isinstance(b, ast.Constant) and isinstance(b.value, str):
                        add(b.value)
        elif lazy and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docs:
                for mod in M_IN_STRING.findall(node.value):
                    add(mod)
    found.discard(name)
    return frozenset(found)


def with_packages(name: str) -> list[str]:
    """``name`` and every package above it (their ``__init__.py`` run first)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(start: str, root: Path = ROOT) -> set[Path]:
    """Files of every module that running ``python -m start`` may import, lazily or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        for mod in with_packages(name):
            if mod not in seen and module_file(mod, root) is not None:
                seen.add(mod)
                todo.extend(imports(mod, True, root))
    return {module_file(m, root) for m in seen}


# ------------------------------------------------------------------ dvc.yaml


def stage_bodies(dvc_yaml: dict) -> dict[str, dict]:
    """Each stage's definition (the ``do`` body for a ``foreach`` stage)."""
    return {name: st.get("do", st) for name, st in dvc_yaml["stages"].items()}


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(d) or Path(d) in file.parents for d in deps)


def missing_deps(dvc_yaml: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """stage -> module files that stage runs but its deps do not cover (only stages that miss
    some)."""
    missing = {}
    for name, body in stage_bodies(dvc_yaml).items():
        m = CMD_MODULE.search(body["cmd"])
        assert m, f"stage {name}: cmd {body['cmd']!r} is not `python -m <module>`"
        deps = [d for d in body.get("deps", []) if isinstance(d, str)]
        files = sorted(str(f) for f in closure(m.group(1), root) if not covered(f, deps))
        if files:
            missing[name] = files
    return missing


def load_dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_depends_on_every_module_it_runs():
    missing = missing_deps(load_dvc_yaml())
    lines = [f"  {stage}: {', '.join(files)}" for stage, files in missing.items()]
    assert not missing, (
        "dvc.yaml: these stages run modules their deps do not cover (edit one and `dvc repro` "
        "keeps the stale result); add each file, or a folder above it, to the stage's deps in "
        "dvc.in.yaml (dvc.yaml is generated from it: then run `make dvc.yaml`):\n"
        + "\n".join(lines)
    )


def test_checker_catches_a_planted_missing_dep():
    spec = load_dvc_yaml()
    planted = copy.deepcopy(spec)
    deps = stage_bodies(planted)["evaluate"]["deps"]
    deps.remove("src/selfimprove/evaluation/evaluate.py")
    assert missing_deps(planted) == {"evaluate": ["src/selfimprove/evaluation/evaluate.py"]}
    # and a folder dep: dropping core/ uncovers core modules for every stage
    planted = copy.deepcopy(spec)
    stage_bodies(planted)["filter"]["deps"].remove("src/selfimprove/core")
    missing = missing_deps(planted)
    assert list(missing) == ["filter"]
    assert "src/selfimprove/core/voting.py" in missing["filter"]
    assert all(f.startswith("src/selfimprove/core/") for f in missing["filter"])


def test_closure_follows_every_import_form(tmp_path):
    """The AST walk sees lazy imports, `from pkg import submodule`, `-m` subprocess modules and
    packages' __init__, and skips TYPE_CHECKING blocks."""
    pkg = tmp_path / "src/selfimprove"
    for sub in ("", "a", "b"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/__init__.py").write_text("")
    files = {
        "stages/s.py": "from selfimprove.a import one\n",
        "src/selfimprove/a/one.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from selfimprove.b import typed\n"
            "def f():\n    import selfimprove.b.lazy\n"
            "    return [sys.executable, '-m', 'selfimprove.b.child']\n"
        ),
        "src/selfimprove/b/lazy.py": "from .rel import x\n",
        "src/selfimprove/b/rel.py": "x = 1\n",
        "src/selfimprove/b/typed.py": "",
        "src/selfimprove/b/child.py": "",
    }
    for path, text in files.items():
        (tmp_path / path).write_text(text)
    got = {f.as_posix() for f in closure("stages.s", tmp_path)}
    assert got == {
        "stages/__init__.py",
        "stages/s.py",
        "src/selfimprove/__init__.py",
        "src/selfimprove/a/__init__.py",
        "src/selfimprove/a/one.py",
        "src/selfimprove/b/__init__.py",
        "src/selfimprove/b/lazy.py",
        "src/selfimprove/b/rel.py",
        "src/selfimprove/b/child.py",
    }


def test_report_logic_does_not_rerun_training_and_filter_not_evaluate():
    """The over-approximation stays narrow where it matters (issue 10's bar)."""
    bodies = stage_bodies(load_dvc_yaml())
    assert not covered(Path("src/selfimprove/evaluation/report.py"), bodies["finetune"]["deps"])
    assert not covered(Path("src/selfimprove/methods/filter.py"), bodies["evaluate"]["deps"])
    # evaluate runs no refine-step code and no data/ code: inference-time refinement is the
    # evaluate_refine stage's, DROP prompts are in core/ (the feedback prompts too: config reads
    # their exemplar count, so every stage imports them)
    for stage in ("evaluate", "evaluate_r0"):
        for code in ("methods/refine.py", "data/drop.py"):
            assert not covered(Path(f"src/selfimprove/{code}"), bodies[stage]["deps"]), code


def test_leftovers_of_an_interrupted_run_do_not_change_report(tmp_path):
    """`report` depends on all of data/rounds; generate's samples.shards/, finetune's
    model.ckpt/ and an atomic write's .*.tmp (left by a killed run) are .dvcignore'd, while a
    real new file there still changes it. A tiny project with report's lock recorded by
    `dvc commit` (nothing runs)."""
    proj, env = new_project(tmp_path / "proj", tiny_params(tmp_path / "unused-model"))
    r1 = proj / "data/rounds/r1"
    for path, text in {
        r1 / "metrics.json": "{}\n",
        proj / "data/prepared/train_labels.jsonl": "",
        proj / "data/report/accuracy.csv": "round,accuracy\n",
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    run(dvc("commit", "-f", "report"), proj, env)
    assert "up to date" in run(dvc("status", "report"), proj, env).stdout
    for leftover in ("samples.shards/shard-00000.jsonl", "model.ckpt/checkpoint-2/x.bin"):
        (r1 / leftover).parent.mkdir(parents=True)
        (r1 / leftover).write_text("partial")
    (r1 / ".eval.k2j4.tmp").mkdir()
    (r1 / ".eval.k2j4.tmp/arith.jsonl").write_text("partial")
    status = run(dvc("status", "report"), proj, env).stdout
    assert "up to date" in status, f"leftovers of an interrupted run changed report:\n{status}"
    pyc = "src/selfimprove/core/__pycache__/io.cpython-311.pyc"  # in every stage's deps
    assert run(dvc("check-ignore", pyc), proj, env).stdout.strip() == pyc
    (r1 / "vote.json").write_text("{}\n")  # the control: a real output does change it
    assert re.search(r"modified:\s+data/rounds\n", run(dvc("status", "report"), proj, env).stdout)


# ------------------------------------------------------------------ the package's shape


def package_modules() -> list[str]:
    names = []
    for f in sorted((ROOT / PACKAGES["selfimprove"]).rglob("*.py")):
        rel = f.relative_to(ROOT / "src").with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return names


def _find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


#: the package's subpackages; a cycle between two of them is a cycle too (data -> evaluation ->
#: data), even when no two modules import each other
SUBPACKAGES = tuple(
    f"selfimprove.{p.name}"
    for p in sorted((ROOT / PACKAGES["selfimprove"]).iterdir())
    if (p / "__init__.py").is_file()
)


def subpackage(module: str) -> str:
    """The subpackage (``selfimprove.data``) a module belongs to, or the module itself when it
    sits at the top of the package (``selfimprove.cli``)."""
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")), module)


def subpackage_graph(graph: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """``graph`` with each module replaced by its subpackage (edges within one dropped)."""
    out: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        out.setdefault(subpackage(mod), set()).update(
            subpackage(d) for d in deps if subpackage(d) != subpackage(mod)
        )
    return {k: frozenset(v) for k, v in out.items()}


_MOVE_DOWN = (
    "break it by moving the shared code down (into core/, or the lower of the two) so that "
    "imports point one way; an import inside a function is still an import (it counts here)"
)


#: module edges the subpackage check does not count yet, each with the work that removes it: the
#: test fails once an edge is gone, so that its entry is deleted with it
PENDING_EDGES: set[tuple[str, str]] = set()


def test_package_import_graph_is_acyclic_and_never_imports_stages():
    """Imports inside functions (lazy) count: they hide a cycle, they do not remove it."""
    graph = {m: imports(m, lazy=True) for m in package_modules()}
    gone = {(a, b) for a, b in PENDING_EDGES if b not in graph.get(a, ())}
    assert not gone, f"{gone} no longer exist: delete them from PENDING_EDGES"
    pending = {a: graph[a] - {b for x, b in PENDING_EDGES if x == a} for a, _ in PENDING_EDGES}
    bad = sorted(m for m in package_modules() if any(i.startswith("stages") for i in imports(m)))
    assert not bad, f"{bad} import stages/; move what they need into src/selfimprove"
    cycle = _find_cycle(graph)
    assert cycle is None, f"module import cycle {' -> '.join(cycle)}; {_MOVE_DOWN}"
    cycle = _find_cycle(subpackage_graph(graph | pending))
    assert cycle is None, f"subpackage import cycle {' -> '.join(cycle)}; {_MOVE_DOWN}"


def test_subpackage_graph_sees_a_cycle_no_module_pair_has():
    graph = {
        "selfimprove.data.drop": frozenset({"selfimprove.evaluation.metrics.drop"}),
        "selfimprove.evaluation.metrics.drop": frozenset(),
        "selfimprove.evaluation.evaluate": frozenset({"selfimprove.data.sources"}),
        "selfimprove.data.sources": frozenset(),
        "selfimprove.cli": frozenset({"selfimprove.data.drop"}),
    }
    assert _find_cycle(graph) is None
    assert _find_cycle(subpackage_graph(graph)) == [
        "selfimprove.data",
        "selfimprove.evaluation",
        "selfimprove.data",
    ]
    assert subpackage("selfimprove.cli") == "selfimprove.cli"
    assert {"selfimprove.core", "selfimprove.data", "selfimprove.evaluation"} <= set(SUBPACKAGES)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": frozenset({"b"}), "b": frozenset({"a"})}) == ["a", "b", "a"]
    assert _find_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


def test_no_module_over_the_line_limit():
    long = {
        str(f.relative_to(ROOT)): n
        for f in sorted((ROOT / "src").rglob("*.py"))
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_every_code_dep_exists():
    """A renamed or split module leaves no dep behind (DVC would fail on it at `dvc repro`)."""
    stale = sorted(
        f"{name}: {dep}"
        for name, body in stage_bodies(load_dvc_yaml()).items()
        for dep in body.get("deps", [])
        if dep.startswith(("src/", "stages/")) and not (ROOT / dep).exists()
    )
    assert not stale, (
        f"dvc.yaml deps that do not exist (rename or drop them in dvc.in.yaml, then run "
        f"`make dvc.yaml`): {stale}"
    )
