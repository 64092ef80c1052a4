"""Property-based layer over the malformed-input corpus (tests/test_bad_inputs.py).

Hypothesis builds experiment files, solver prototxts and net prototxts from their schemas (the
fields of olmp.config's dataclasses; the solver's numeric fields; the net's data layers and layer
names), changes ONE setting of a short valid LeNet-300-100 experiment to a value pushed to its edge
(0, negative, huge, NaN and inf spellings, wrong types, unicode, very long strings, empty lists,
deleted or unknown keys), and runs each through the real ``olmp prune`` in a subprocess. Every one
must end within a time limit with exit 0, or with exit 2 and exactly one stderr line
``olmp: error: ...``: never a traceback, a signal (a Caffe abort or segfault) or a hang.

An accepted file must finish in seconds, so that a slow run is never mistaken for a hang: the run
lengths (iterations, budgets, populations, batch sizes...) are drawn either invalid or small.

The same for the files olmp writes and reads back (olmp/schemas.py): a run record, a checkpoint's
state.json and masks.npz, a sparse npz, each damaged at one key its schema declares (at any depth:
deleted, or given a drawn JSON value) or, for the arrays, in one entry; an example the in-process
reader still accepts is not a damage and is skipped. Each must end with exit 2 and one line naming
the file, the inputs left byte for byte and no temporary left (``olmp report``, ``olmp prune
--resume``, ``olmp export --dense``).

The default budget (about 30 examples, derandomized) runs in ``make test``; set ``OLMP_SLOW=1`` for
the larger one (about 440 examples, marked ``slow``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pytest
from conftest import REPO, experiment_300100
from google.protobuf import text_encoding
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from olmp import checkpoint, config, schemas, sparse
from olmp.errors import OlmpError
from olmp.record import RunRecord

NET = REPO / "models/lenet300100/train_test.prototxt"
SOLVER = REPO / "solvers/lenet300100_solver.prototxt"
GOOD_WEIGHTS = REPO / "results/references/lenet300100/model.caffemodel"
TIMEOUT = 60  # seconds per run: an accepted file runs in a few
FAST = {"experiment": 14, "prototxt": 8}
SLOW = {"experiment": 150, "prototxt": 50}
slow = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("OLMP_SLOW") != "1",
                                             reason="the larger property budget: set OLMP_SLOW=1 to run it")]

BASE = tomllib.loads(experiment_300100(GOOD_WEIGHTS, name="prop", niter=21, prune_stop=10, every=10, population=4,
                                       budget=8, record_every=10, checkpoint_every=10))
SECTIONS = {"search": config.SearchConfig, "pipeline": config.PipelineConfig, "baseline": config.BaselineConfig}
TOP_KEYS = [f.name for f in dataclasses.fields(config.Experiment)]  # includes the sections and `source`
# settings whose size is the length of a run: drawn only invalid, or valid and small
RUN_LENGTH = {"niter", "prune_stop_iter", "budget", "population", "every", "record_every", "checkpoint_every",
              "validation_images", "chunks", "rounds"}
DELETE = object()  # the key is removed


# ---- TOML spelling -------------------------------------------------------------------------------

def toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def experiment_text(changes: dict[tuple[str | None, str], object]) -> str:
    """The base experiment with each (section or None, key) set to its TOML text, or deleted."""
    top = {k: toml_value(v) for k, v in BASE.items() if not isinstance(v, dict)}
    tables = {s: {k: toml_value(v) for k, v in BASE.get(s, {}).items()} for s in SECTIONS}
    for (section, key), value in changes.items():
        target = top if section is None else tables[section]
        if key in SECTIONS and section is None:  # the whole table replaced by a value
            tables.pop(key)
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    lines = [f"{toml_str(k)} = {v}" for k, v in top.items()]
    for s, body in tables.items():
        lines.append(f"\n[{s}]")
        lines += [f"{toml_str(k)} = {v}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


# ---- edge values, as TOML text -----------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
HUGE_INTS = [2**31 - 1, 2**31, -(2**31), 2**63, 10**30, -(10**30)]
FLOATS = ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e400", "-1e400", "0.0", "-0.0", "5e-324",
          "1.7976931348623157e308", "-1.5", "0.5", "1e-300", "1.0", "10.0"]
WORDS = ["", " ", "ip1", "loss", "mnist", "/dev/null", "/proc/olmp-x", "data/mnist", "..", "ncs", "cmaes", "sampling",
         "olmp", "dns", "deep-compression", "global-magnitude", "uniform", "released", "standard", "validation",
         "minibatch", "al", "penalty", "rewind", "continue", "Convolution", "InnerProduct", str(GOOD_WEIGHTS),
         str(SOLVER), str(NET), "solvers/lenet5_solver.prototxt", "models/lenet5/train_test.prototxt"]
LISTS = ["[]", "[[]]", "[0.0, 10.0]", "[10.0, 0.0]", "[0.0, nan]", "[-1e308, 1e308]", "[[0, 5.0]]", "[[0, 0.0]]",
         "[[5, 1.0]]", "[[0, 5.0], [-1, 2.0]]", '["ip1", "ip2"]', '["ip1", "ip1"]', '["ip3", "ip2", "ip1"]',
         '["ip1", "ip2", "ip3", "relu1"]', '["loss"]', '[""]', "[1, 2, 3]", '[1, "a", true]', "[0.25]",
         "[0.5, 0.25]"]
TABLES = ["{}", "{ InnerProduct = 1.0 }", "{ InnerProduct = 1e308, Convolution = 0 }", "{ Convolution = -1.0 }",
          "{ Pooling = 1.0 }", "{ InnerProduct = nan }", '{ InnerProduct = "x" }',
          "{ ip1 = 0.5, ip2 = 0.5, ip3 = 0.5 }",
          "{ ip9 = 1.0 }", "{ every = 1 }"]
OTHER = ["true", "false", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "0x7fffffff", "0o777", "0b101", "1_000"]
MALFORMED = ["", "[1,", '"unterminated', "nan nan", "'''"]


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(WORDS), TEXT,
                     st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "💥", "/"]),
                               st.sampled_from([255, 256, 4097, 100_000]))).map(toml_str)


def nested() -> st.SearchStrategy[str]:
    """A list or a table of drawn edge values."""
    leaf = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(FLOATS + OTHER[:2]), strings())
    return st.one_of(st.lists(leaf, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     st.lists(st.tuples(TEXT.map(toml_str), leaf), max_size=3, unique_by=lambda kv: kv[0]).map(
                         lambda kvs: "{ " + ", ".join(f"{k} = {v}" for k, v in kvs) + " }"))


def values(run_length: bool) -> st.SearchStrategy[object]:
    """Edge values for one key; for a run length only invalid ones, or small valid ones (<= 40).

    A run length is never deleted either: its default (30001 iterations, a budget of 1600) is long.
    """
    huge = [x for x in HUGE_INTS if not (run_length and 40 < x < 2**31)]  # 2**31 - 1 is a valid run length
    ints = st.one_of(st.integers(-3, 40), st.sampled_from(huge))
    return st.one_of(ints.map(str), st.sampled_from(FLOATS), strings(), st.sampled_from(LISTS + TABLES + OTHER),
                     nested(), st.sampled_from(MALFORMED), *([] if run_length else [st.just(DELETE)]))


@st.composite
def experiment_mutations(draw: st.DrawFn) -> tuple[str | None, str, object]:
    section = draw(st.sampled_from([None, *SECTIONS]))
    known = TOP_KEYS if section is None else [f.name for f in dataclasses.fields(SECTIONS[section])]
    key = draw(st.one_of(st.sampled_from(known), TEXT.filter(lambda k: k not in known)))
    if section is None and key in SECTIONS:  # a whole table deleted or replaced by a table: 30001 iterations
        return section, key, draw(values(True).filter(lambda v: not str(v).startswith("{")))
    return section, key, draw(values(key in RUN_LENGTH))


# ---- prototxt edits ----------------------------------------------------------------------------

PROTO_NUMBERS = ["0", "-0", "-1", "-0.0", "nan", "-nan", "inf", "-inf", "1e400", "-1e400", "3.4028235e38", "1e39",
                 "1e-45", "1e-320", "2147483647", "2147483648", "-2147483649", "4294967295", "4294967296",
                 "18446744073709551616", "100000000000000000000000000000", "0x10", "1.5", "0.999999", "1", "10",
                 '"high"', "true", "[0.1, 0.2]", "", "{ }", "0.9 0.8"]
SOLVER_FIELDS = {"base_lr": "0.01", "momentum": "0.9", "weight_decay": "0.0005", "gamma": "0.0001", "power": "0.75",
                 "max_iter": "10000", "test_iter": "100"}
BATCHES = ["0", "-1", "-0", "2147483647", "2000000000", "3000000000", "4294967295", "4294967296", "1e3", "64.0",
           '"64"', "nan", "true"]
SOURCES = ["", " ", "/dev/null", "/nonexistent/lmdb", "data/mnist", "data/mnist/mnist_test_lmdb",
           "data/mnist/mnist_train_lmdb", str(NET), str(REPO / "models"), "x" * 5000, "é" * 300, "mnist_\x00lmdb"]
NAMES = ["", " ", "ip1", "ip2", "loss", "mnist", "data", "é" * 200, "x" * 10_000, "a\nb", 'q"uote', "\x00"]


def proto_str(s: str) -> str:
    return '"' + text_encoding.CEscape(s.encode("utf-8"), as_utf8=True) + '"'


@st.composite
def prototxt_mutations(draw: st.DrawFn) -> tuple[str, str]:
    """(solver text, net text): the repository's files with one field of one of them changed."""
    solver, net = SOLVER.read_text(), NET.read_text()
    target = draw(st.sampled_from(["solver", "batch_size", "source", "name"]))
    if target == "solver":
        name = draw(st.sampled_from(sorted(SOLVER_FIELDS)))
        value = draw(st.one_of(st.sampled_from(PROTO_NUMBERS), st.integers(-3, 40).map(str),
                               st.floats(allow_nan=True, allow_infinity=True).map(repr)))
        solver = solver.replace(f"{name}: {SOLVER_FIELDS[name]}", f"{name}: {value}", 1)
    elif target == "batch_size":
        old = draw(st.sampled_from(["batch_size: 64 ", "batch_size: 100 "]))  # TRAIN, TEST
        value = draw(st.one_of(st.sampled_from(BATCHES), st.integers(1, 200).map(str)))
        net = net.replace(old, f"batch_size: {value} ")
    elif target == "source":
        old = draw(st.sampled_from(["data/mnist/mnist_train_lmdb", "data/mnist/mnist_test_lmdb"]))
        net = net.replace(f'"{old}"', proto_str(draw(st.one_of(st.sampled_from(SOURCES), TEXT))))
    else:
        spots = list(re.finditer(r'name: "[^"]*"', net))  # the net's name, then each layer's
        m = spots[draw(st.integers(0, len(spots) - 1))]
        net = net[: m.start()] + "name: " + proto_str(draw(st.one_of(st.sampled_from(NAMES), TEXT))) + net[m.end():]
    return solver, net


# ---- the run -----------------------------------------------------------------------------------

def prune_ends_cleanly(exp: Path, what: str) -> None:
    """``olmp prune`` on ``exp``: exit 0 with its outputs, or exit 2 and one line, leaving no temporaries."""
    out = exp.parent / "run"
    try:
        r = subprocess.run([sys.executable, "-m", "olmp", "prune", "--experiment", str(exp), "--out", str(out),
                            "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: no exit within {TIMEOUT} s\n{what}")
    err = r.stderr.strip()
    assert r.returncode >= 0, f"killed by signal {-r.returncode}; stderr: {err[-1500:]}\n{what}"
    assert "Traceback" not in err, f"traceback: {err[-3000:]}\n{what}"
    if r.returncode == 0:
        assert (out / "record.json").is_file() and (out / "pruned.caffemodel").is_file(), what
        return
    assert r.returncode == 2, f"exit status {r.returncode}; stderr: {err[-1500:]}\n{what}"
    assert len(err.splitlines()) == 1 and err.startswith("olmp: error: "), f"not one line: {err[-1500:]}\n{what}"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp")
                  or p.name in (".lock", ".snapshot")) if out.exists() else []
    assert not left, f"left behind after the error {err[:300]}: {left}\n{what}"


def _shown(text: str) -> str:
    return text if len(text) < 3000 else text[:1500] + f"... ({len(text)} characters) ..." + text[-1500:]


def check_experiment(tmp: Path, mutation: tuple[str | None, str, object]) -> None:
    section, key, value = mutation
    d = Path(tempfile.mkdtemp(dir=tmp))
    text = experiment_text({(section, key): value})
    exp = d / "exp.toml"
    exp.write_text(text, encoding="utf-8")
    where = f"[{section}] " if section else ""
    prune_ends_cleanly(exp, f"{where}{key!r} = {'(deleted)' if value is DELETE else _shown(str(value))}\n"
                            f"--- {exp}\n{_shown(text)}")


def check_prototxts(tmp: Path, files: tuple[str, str]) -> None:
    solver_text, net_text = files
    d = Path(tempfile.mkdtemp(dir=tmp))
    net, solver = d / "net.prototxt", d / "solver.prototxt"
    net.write_text(net_text, encoding="utf-8")
    solver.write_text(solver_text.replace('net: "models/lenet300100/train_test.prototxt"', f'net: "{net}"'),
                      encoding="utf-8")
    exp = d / "exp.toml"
    exp.write_text(experiment_text({(None, "solver"): toml_str(str(solver)), (None, "net"): toml_str(str(net))}),
                   encoding="utf-8")
    diff = [f"- {a}\n+ {b}" for a, b in zip(SOLVER.read_text().splitlines() + NET.read_text().splitlines(),
                                             solver_text.splitlines() + net_text.splitlines()) if a != b]
    prune_ends_cleanly(exp, "changed: " + _shown("\n".join(diff)))


def run_property(strategy: st.SearchStrategy, check, n: int, tmp: Path) -> None:
    """``check`` on ``n`` derandomized examples (no shrinking: each example is a real CLI run)."""
    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(strategy)
    def prop(example: object) -> None:
        check(tmp, example)

    prop()


@pytest.mark.parametrize("n", [pytest.param(FAST["experiment"], id="fast"),
                               pytest.param(SLOW["experiment"], id="slow", marks=slow)])
def test_edge_valued_experiment_files_end_cleanly(tmp_path: Path, mnist_dir: Path, n: int) -> None:
    run_property(experiment_mutations(), check_experiment, n, tmp_path)


@pytest.mark.parametrize("n", [pytest.param(FAST["prototxt"], id="fast"),
                               pytest.param(SLOW["prototxt"], id="slow", marks=slow)])
def test_edge_valued_solver_and_net_prototxts_end_cleanly(tmp_path: Path, mnist_dir: Path, n: int) -> None:
    run_property(prototxt_mutations(), check_prototxts, n, tmp_path)


def test_the_unmutated_base_runs_short(tmp_path: Path, mnist_dir: Path) -> None:
    """The file every example starts from is accepted and ends in seconds (so a timeout means a hang)."""
    exp = tmp_path / "exp.toml"
    exp.write_text(experiment_text({}), encoding="utf-8")
    assert tomllib.loads(exp.read_text()) == {**BASE, "baseline": {}}
    prune_ends_cleanly(exp, "the base experiment")
    assert (tmp_path / "run" / "record.json").is_file()


# ---- damaged files, from their schemas -----------------------------------------------------------

RECORD = REPO / "results/lenet300100/ncs-seed1/record.json"
FILES_FAST = {"record": 3, "state": 2, "masks": 2, "sparse": 3}
FILES_SLOW = {"record": 80, "state": 40, "masks": 40, "sparse": 80}
DAMAGE_DELETE = "<deleted>"  # a JSON value never drawn: the key is removed
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT,
                      st.sampled_from([-1, 0, 1, 2**31, 2**63, "", "x", "nan", "1.0", "true"]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``Model``, ``Model | None``, ``list[Model]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _wrong_type(value: Any) -> st.SearchStrategy[Any]:
    """Values of another JSON type than ``value``'s."""
    if isinstance(value, bool):
        return st.one_of(TEXT, st.integers(), st.none())
    if isinstance(value, (int, float)):
        return st.one_of(TEXT, st.booleans(), st.none(), st.sampled_from([float("nan"), float("inf"), [1], {"a": 1}]))
    if isinstance(value, str):
        return st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(TEXT, max_size=2))
    if isinstance(value, dict):
        return st.one_of(st.lists(JSON_LEAF, max_size=3), TEXT, st.integers())
    return st.one_of(st.dictionaries(TEXT, JSON_LEAF, max_size=2), TEXT, st.integers())


@st.composite
def schema_damages(draw: st.DrawFn, model: type[BaseModel], doc: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
    """(path, value or DAMAGE_DELETE): a key ``model`` declares, found in ``doc`` at any depth, damaged."""
    path: list[Any] = []
    while True:
        name = draw(st.sampled_from([n for n in model.model_fields if n in doc]))
        path.append(name)
        info, value = model.model_fields[name], doc[name]
        inner = _models(info.annotation)
        if inner and draw(st.booleans()):  # deeper
            if isinstance(value, list) and value and get_origin(info.annotation) is list:
                i = draw(st.integers(0, len(value) - 1))
                nxt, value = inner[0], value[i]
                path.append(i)
            elif isinstance(value, dict) and value and get_origin(info.annotation) is dict:
                key = draw(st.sampled_from(sorted(value)))
                nxt, value = inner[0], value[key]
                path.append(key)
            else:
                nxt = inner[0]
            if isinstance(value, dict) and any(n in value for n in nxt.model_fields):
                model, doc = nxt, value
                continue
        new = draw(st.one_of(st.just(DAMAGE_DELETE), _wrong_type(value), JSON_VALUE))
        return tuple(path), new


def with_damage(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    where = doc
    for part in path[:-1]:
        where = where[part]
    if value == DAMAGE_DELETE:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return doc


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) but a run folder's lock file, which stays after any run."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def refused_cleanly(argv: list[str], folder: Path, named: Path, what: str) -> None:
    """``olmp ARGV`` ends with exit 2 and one line naming ``named``; ``folder`` is left byte for byte."""
    before = _files(folder)
    try:
        r = subprocess.run([sys.executable, "-m", "olmp", *argv], cwd=REPO, capture_output=True, text=True,
                           timeout=TIMEOUT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: no exit within {TIMEOUT} s\n{what}")
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit status {r.returncode}; stderr: {err[-1500:]}\n{what}"
    assert len(err.splitlines()) == 1 and err.startswith("olmp: error: ") and str(named) in err, f"{err}\n{what}"
    after = _files(folder)
    assert after == before, f"changed or left: {sorted(set(after) ^ set(before)) or 'contents'}\n{err}\n{what}"


def _refused_in_process(read: Any, what: str) -> None:
    """The in-process reader must refuse the damage in one line; a damage it accepts is no damage (skipped)."""
    try:
        read()
    except OlmpError as exc:
        assert "\n" not in str(exc), f"{exc}\n{what}"
        return
    reject()


def check_record(tmp: Path, damage: tuple[tuple[Any, ...], Any]) -> None:
    path, value = damage
    model = Path(tempfile.mkdtemp(dir=tmp)) / "model"
    (model / "run").mkdir(parents=True)
    rec = model / "run" / "record.json"
    rec.write_text(json.dumps(with_damage(json.loads(RECORD.read_text()), path, value)))
    shutil.copy(RECORD.parent / "pruned.caffemodel", model / "run")
    what = f"record.json {list(path)} = {_shown(repr(value))}"
    _refused_in_process(lambda: RunRecord.load(rec), what)
    refused_cleanly(["report", str(model)], model, rec, what)


def _resumed(tmp: Path, killed: tuple[Path, Path], write: Any, name: str, what: str) -> None:
    exp, run = killed
    out = Path(tempfile.mkdtemp(dir=tmp)) / "run"
    shutil.copytree(run, out)
    write(out / "checkpoint" / name)
    refused_cleanly(["prune", "--experiment", str(exp), "--out", str(out), "--quiet", "--resume"], out,
                    out / "checkpoint" / name, what)


def check_state(tmp: Path, killed: tuple[Path, Path], damage: tuple[tuple[Any, ...], Any]) -> None:
    path, value = damage
    good = json.loads((killed[1] / "checkpoint" / "state.json").read_text())
    text = json.dumps(with_damage(good, path, value))
    what = f"state.json {list(path)} = {_shown(repr(value))}"
    probe = Path(tempfile.mkdtemp(dir=tmp))
    (probe / "checkpoint").mkdir()
    (probe / "checkpoint" / "state.json").write_text(text)
    _refused_in_process(lambda: checkpoint.read_state(probe), what)
    _resumed(tmp, killed, lambda p: p.write_text(text), "state.json", what)


@st.composite
def mask_damages(draw: st.DrawFn, good: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray] | bytes]:
    """A masks.npz against its schema (schemas.check_masks: the run's keys and shapes, values 0 or 1), broken once."""
    key = draw(st.sampled_from(sorted(good)))
    m = good[key]
    op = draw(st.sampled_from(["drop", "unknown", "shape", "value", "dtype", "bytes"]))
    if op == "drop":
        return f"{key} removed", {k: v for k, v in good.items() if k != key}
    if op == "unknown":
        return "an unknown key", {**good, draw(st.from_regex(r"[a-z0-9_/]{1,12}", fullmatch=True).filter(lambda k: k not in good)): m}
    if op == "shape":
        new = draw(st.sampled_from([m.reshape(-1)[:-1], m[..., None], np.zeros((0,), m.dtype), m.reshape(-1)]))
        if new.shape == m.shape:
            new = new[:-1]
        return f"{key} shaped {new.shape}", {**good, key: new}
    if op == "value":
        bad = draw(st.one_of(st.floats().filter(lambda x: x not in (0.0, 1.0)), st.sampled_from([-1.0, 2.0, 0.5])))
        new = m.astype(np.float32 if np.isfinite(bad) and abs(bad) < 3e38 else np.float64).copy()
        new.reshape(-1)[draw(st.integers(0, new.size - 1))] = bad
        return f"{key} holding {bad!r}", {**good, key: new}
    if op == "dtype":
        return f"{key} as text", {**good, key: m.astype(str)}
    return "garbage", draw(st.sampled_from([b"", b"PK\x03\x04 no zip", b"\x00" * 64])) + draw(st.binary(max_size=16))


def check_masks(tmp: Path, killed: tuple[Path, Path], damage: tuple[str, dict[str, np.ndarray] | bytes]) -> None:
    label, body = damage

    def write(p: Path) -> None:
        if isinstance(body, bytes):
            p.write_bytes(body)
        else:
            with open(p, "wb") as fh:
                np.savez(fh, **body)  # type: ignore[arg-type]

    _resumed(tmp, killed, write, "masks.npz", f"masks.npz: {label}")


@st.composite
def sparse_damages(draw: st.DrawFn, arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, np.ndarray]]:
    """A sparse npz damaged in its meta (from schemas.SparseMeta) or in one of its arrays."""
    meta = json.loads(str(arrays["meta"]))
    if draw(st.booleans()):
        path, value = draw(schema_damages(schemas.SparseMeta, meta))
        return f"meta {list(path)} = {_shown(repr(value))}", {
            **arrays, "meta": np.array(json.dumps(with_damage(meta, path, value)))}
    key = draw(st.sampled_from(sorted(k for k in arrays if k != "meta")))
    a = arrays[key]
    op = draw(st.sampled_from(["drop", "truncate", "grow", "float", "negative", "text"]))
    new = {"drop": None, "truncate": a[:-1], "grow": np.concatenate([a, a[-1:]]), "float": a.astype(np.float64) + 0.5,
           "negative": -a.astype(np.int64) - 1, "text": a.astype(str)}[op]
    out = {k: v for k, v in arrays.items() if k != key}
    if new is not None:
        out[key] = new
    return f"{key}: {op}", out


def check_sparse(tmp: Path, arrays_and_label: tuple[str, dict[str, np.ndarray]]) -> None:
    label, arrays = arrays_and_label
    d = Path(tempfile.mkdtemp(dir=tmp))
    npz = d / "m.npz"
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    _refused_in_process(lambda: sparse.load_sparse(npz), label)
    refused_cleanly(["export", "--dense", str(npz), str(d / "m.caffemodel")], d, npz, label)


def _budget(kind: str) -> list[Any]:
    return [pytest.param(FILES_FAST[kind], id="fast"), pytest.param(FILES_SLOW[kind], id="slow", marks=slow)]


@pytest.mark.parametrize("n", _budget("record"))
def test_damaged_run_records_end_cleanly(tmp_path: Path, n: int) -> None:
    good = json.loads(RECORD.read_text())
    run_property(schema_damages(schemas.FinishedRunRecord, good), check_record, n, tmp_path)


@pytest.mark.parametrize("n", _budget("state"))
def test_damaged_checkpoint_states_end_cleanly(tmp_path: Path, killed_run: tuple[Path, Path], n: int) -> None:
    good = json.loads((killed_run[1] / "checkpoint" / "state.json").read_text())
    run_property(schema_damages(schemas.CheckpointState, good),
                 lambda tmp, damage: check_state(tmp, killed_run, damage), n, tmp_path)


@pytest.mark.parametrize("n", _budget("masks"))
def test_damaged_checkpoint_masks_end_cleanly(tmp_path: Path, killed_run: tuple[Path, Path], n: int) -> None:
    with np.load(killed_run[1] / "checkpoint" / "masks.npz") as z:
        good = {k: z[k] for k in z.files}
    run_property(mask_damages(good), lambda tmp, damage: check_masks(tmp, killed_run, damage), n, tmp_path)


@pytest.mark.parametrize("n", _budget("sparse"))
def test_damaged_sparse_npz_end_cleanly(tmp_path: Path, n: int) -> None:
    sparse.export_sparse(GOOD_WEIGHTS, tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as z:
        arrays = {k: z[k] for k in z.files}
    run_property(sparse_damages(arrays), check_sparse, n, tmp_path)
