"""The structure docs/architecture.md promises: plug-in points that work, no cycles, no names in the loop.

The worked examples of docs/architecture.md (a threshold policy, an optimizer) are read from the
document itself and run, so the document cannot drift from the code.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPO, experiment_300100

from olmp import config, pipeline, policies, search

DOC = REPO / "docs" / "architecture.md"


def example(path: str, tmp_path: Path) -> ModuleType:
    """The code block that follows ``path`` in docs/architecture.md, imported as a module."""
    text = DOC.read_text()
    m = re.search(rf"`{re.escape(path)}`:\n\n```python\n(.*?)```", text, re.S)
    assert m, f"docs/architecture.md has no worked example for {path}"
    file = tmp_path / Path(path).name
    file.write_text(m.group(1))
    spec = importlib.util.spec_from_file_location(f"example_{file.stem}", file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_policy_is_one_file_and_one_registry_line(tmp_path: Path, lenet300100_model: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    one_shot = example("olmp/policies/one_shot.py", tmp_path)
    monkeypatch.setitem(policies.POLICIES, "one-shot", one_shot.OneShot)
    text = experiment_300100(lenet300100_model, name="lenet300100-one-shot", niter=120, prune_stop=100,
                             record_every=50, checkpoint_every=1000)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(text.replace('optimizer = "ncs"', 'method = "one-shot"') + "\n[baseline]\nsparsity = 0.9\n")
    rec = pipeline.prune(config.load(exp_file), tmp_path / "run", progress=False)
    assert rec["method"] == "one-shot" and rec["optimizer"] == "one-shot"
    assert rec["final"]["ratio"] == pytest.approx(10.0, rel=0.01)  # 90% of every layer pruned at iteration 0
    assert rec["final"]["sparsity"] == 0.9 and rec["searches"] == []
    with pytest.raises(Exception, match="sparsity"):  # the config checks what the class declares it needs
        config.load(exp_file, ["baseline.sparsity=0.0"])


def test_a_new_optimizer_is_one_file_and_one_registry_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    random_search = example("olmp/search/random_search.py", tmp_path)
    monkeypatch.setitem(search.OPTIMIZERS, "random", random_search.RandomSearch)
    opt = search.make_optimizer("random", [5.0, 5.0], 1.0, (0.0, 10.0), 8, 400, seed=3)
    while not opt.stop():
        xs = opt.ask()
        opt.tell(xs, [float(np.sum((x - 2.0) ** 2)) for x in xs])
    assert opt.result.evaluations == 400 and opt.result.fbest < 1.0  # 400 uniform draws land near (2, 2)


def _imports(path: Path) -> set[str]:
    """olmp modules a module imports anywhere (inside functions too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for sub in ast.walk(node)}
    out: set[str] = set()
    for sub in ast.walk(tree):
        if id(sub) in typing_only:
            continue
        if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("olmp"):
            out.add(sub.module)
            out.update(f"{sub.module}.{a.name}" for a in sub.names)
        elif isinstance(sub, ast.Import):
            out.update(a.name for a in sub.names if a.name.startswith("olmp"))
    return out


def test_imports_inside_functions_count() -> None:
    assert "olmp.policies" in _imports(REPO / "olmp" / "config.py")  # imported inside _registries only
    assert "olmp.config" not in _imports(REPO / "olmp" / "policies" / "base.py")  # under TYPE_CHECKING only


def test_no_import_cycles() -> None:
    modules = {}
    for f in (REPO / "olmp").rglob("*.py"):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = f
    graph = {m: {d for d in _imports(f) if d in modules and d != m} for m, f in modules.items()}
    for m in list(graph):  # importing a package's submodule runs the package first
        graph[m] |= {".".join(d.split(".")[:i]) for d in graph[m] for i in range(2, d.count(".") + 1)} & set(modules)
        graph[m].discard(m)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package's __init__ importing its parts is fine
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


REGISTRIES = ("olmp/policies/", "olmp/search/", "olmp/modes.py")  # the names' own modules


def _registered_names() -> set[str]:
    from olmp.modes import MODES

    return {*policies.POLICIES, *search.OPTIMIZERS, *MODES}


def test_no_module_tests_a_method_optimizer_or_mode_by_name() -> None:
    """``r.method == "olmp"`` outside the registries: what the name stands for is asked of its class."""
    names = _registered_names()
    for f in sorted((REPO / "olmp").rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith(REGISTRIES):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare):
                named = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in names}
                assert not named, f"{rel}:{node.lineno} compares with {sorted(named)}"


def test_config_names_no_mode_beyond_its_default() -> None:
    """config.py checks what a mode declares it requires; the only mode it names is the field's default."""
    from olmp.modes import MODES

    tree = ast.parse((REPO / "olmp" / "config.py").read_text())
    defaults = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.value is not None}
    named = [n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in defaults
             and any(f"'{m}'" in n.value or n.value == m for m in MODES)]
    assert not named, f"olmp/config.py names a mode on line(s) {named}"


def test_a_mode_s_declared_requirement_is_checked(tmp_path: Path, lenet300100_model: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from olmp import modes

    strict = modes.Mode("strict", modes.StandardDraws, modes.CandidateEvaluator,
                        requires=lambda exp, _: [(exp.search.chunks == 1, "search.chunks = 1")])
    monkeypatch.setitem(modes.MODES, "strict", strict)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(experiment_300100(lenet300100_model).replace("seed = ", 'mode = "strict"\nseed = '))
    assert config.load(exp_file).mode == "strict"
    with pytest.raises(Exception, match=r"mode = 'strict' needs search.chunks = 1"):
        config.load(exp_file, ["search.chunks=2"])


def test_the_loop_names_no_method_or_optimizer() -> None:
    tree = ast.parse((REPO / "olmp" / "pipeline.py").read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}
    for name in [*policies.POLICIES, *search.OPTIMIZERS]:
        assert name not in strings, f"pipeline.py tests for {name!r} by name"


def test_nothing_in_the_package_exists_for_tests() -> None:
    for f in (REPO / "olmp").rglob("*.py"):
        text = f.read_text()
        assert "OLMP_TEST" not in text and "kill_at" not in text, f"{f.relative_to(REPO)} holds a test hook"
    assert "olmp.testhook" not in sys.modules
