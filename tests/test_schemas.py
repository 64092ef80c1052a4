"""Every file kind olmp writes and reads back, damaged one key at a time from its schema.

The damages are generated from the pydantic models in olmp/schemas.py, walked over a real file:
each key the model declares is deleted (where required) and given a value of the wrong type (a
number for a string, a string for a number, NaN for a number, a list for a table...). Every damaged
file must be refused in one line naming the file and the key, in process (all of them) and through
the real ``olmp`` command line (one per top-level key): exit 2, the inputs left byte for byte, no
temporaries, no output written. Then the outputs: strict JSON, no output over an input or an existing
file without --force, default run folders inside runs/, and ``olmp report`` checking before it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import pytest
from conftest import REPO, experiment_300100
from pydantic import BaseModel

from olmp import checkpoint, schemas, sparse
from olmp.errors import OlmpError
from olmp.record import RunRecord

GOOD_WEIGHTS = REPO / "results/references/lenet300100/model.caffemodel"
RECORD = REPO / "results/lenet300100/ncs-seed1/record.json"
TRAIN_JSON = REPO / "results/references/lenet300100/train.json"
TRANSPLANT = REPO / "results/diagnosis/transplant/lenet300100-authors-masks-on-our-weights/record.json"
DELETE = object()


def olmp(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "olmp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def one_line_error(r: subprocess.CompletedProcess, *needles: str | Path) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("olmp: error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path: what a failure must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- damages from a schema -----------------------------------------------------------------------

def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``Model``, ``Model | None``, ``list[Model]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _wrong(value: Any) -> list[Any]:
    """Values of another type than ``value``'s: what a damaged file holds instead."""
    if isinstance(value, bool):
        return ["yes"]
    if isinstance(value, (int, float)):
        return ["x", float("nan")]
    if isinstance(value, str):
        return [12]
    if isinstance(value, dict):
        return [[1, 2]]
    if isinstance(value, list):
        return [{"a": 1}]
    return ["x"]


def damages(model: type[BaseModel], doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, new value or DELETE) for each key ``model`` declares that ``doc`` holds, depth first."""
    if not isinstance(doc, dict):
        return
    for name, info in model.model_fields.items():
        if name not in doc:
            continue
        path = (*prefix, name)
        if info.is_required():
            yield path, DELETE
        for bad in _wrong(doc[name]):
            yield path, bad
        inner = _models(info.annotation)
        if not inner:
            continue
        value, origin = doc[name], get_origin(info.annotation)
        if isinstance(value, list) and value and origin is list:
            yield from damages(inner[0], value[0], (*path, 0))
        elif isinstance(value, dict) and origin is dict and value:
            key = next(iter(value))
            yield from damages(inner[0], value[key], (*path, key))
        elif isinstance(value, dict):
            yield from damages(inner[0], value, path)


def damaged(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    where = doc
    for part in path[:-1]:
        where = where[part]
    if value is DELETE:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return doc


def key_named(path: tuple[Any, ...]) -> str:
    """The part of a damaged key the error must show: its last name."""
    return next(str(p) for p in reversed(path) if isinstance(p, str))


def by_top_key(cases: list[tuple[tuple[Any, ...], Any]]) -> list[tuple[tuple[Any, ...], Any]]:
    """One damage per top-level key, the deepest first: the command-line sample."""
    seen: dict[Any, tuple[tuple[Any, ...], Any]] = {}
    for path, value in sorted(cases, key=lambda c: -len(c[0])):
        seen.setdefault(path[0], (path, value))
    return list(seen.values())


def test_the_damages_cover_every_declared_key() -> None:
    """The generator reaches the nested keys the reports read (a schema change shows up here)."""
    paths = {p for p, _ in damages(schemas.FinishedRunRecord, json.loads(RECORD.read_text()))}
    for want in (("final", "test", "accuracy"), ("final", "layers", "ip1", "remaining"), ("progress", 0, "ratio"),
                 ("searches", 0, "trace"), ("experiment", "pipeline", "prune_stop_iter"), ("seconds", "sgd"),
                 ("reference", "test", "accuracy"), ("seed",), ("optimizer",)):
        assert want in paths, want


def test_every_committed_record_keeps_loading() -> None:
    """The records under results/ are read by olmp report: the schema accepts each of them as written."""
    n = 0
    for path in sorted((REPO / "results").rglob("record.json")):
        data = json.loads(path.read_text())
        if isinstance(data.get("experiment"), str):
            schemas.check(schemas.TransplantRecord, data, "transplant record", path)
        else:
            assert RunRecord.load(path).raw == data
            n += 1
    for path in sorted((REPO / "results").rglob("train.json")):
        schemas.check(schemas.TrainRecord, json.loads(path.read_text()), "training record", path)
    assert n >= 80


# ---- run records ---------------------------------------------------------------------------------

def test_damaged_run_records(tmp_path: Path) -> None:
    good = json.loads(RECORD.read_text())
    cases = list(damages(schemas.FinishedRunRecord, good))
    assert len(cases) > 60
    path = tmp_path / "in-process" / "record.json"
    path.parent.mkdir()
    for key, value in cases:
        path.write_text(json.dumps(damaged(good, key, value)))
        with pytest.raises(OlmpError) as err:
            RunRecord.load(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: malformed") and "\n" not in msg and key_named(key) in msg, (key, msg)

    def report(case: tuple[tuple[Any, ...], Any]) -> None:
        key, value = case
        model = tmp_path / ("model-" + "-".join(map(str, key)))
        (model / "run").mkdir(parents=True)
        (model / "run" / "record.json").write_text(json.dumps(damaged(good, key, value)))
        shutil.copy(RECORD.parent / "pruned.caffemodel", model / "run")
        before = snapshot(model)
        one_line_error(olmp("report", str(model)), model / "run" / "record.json", key_named(key))
        assert snapshot(model) == before, key  # no runs.csv, no figure, no temporary

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(report, by_top_key(cases)))


def test_a_damaged_record_in_a_run_folder_is_never_returned(tmp_path: Path, mnist_dir: Path) -> None:
    """``olmp prune`` into a folder whose finished record is damaged: one line, the record kept."""
    exp = tmp_path / "exp.toml"
    exp.write_text(experiment_300100(GOOD_WEIGHTS, niter=3, prune_stop=2, every=1, population=4, budget=8,
                                     record_every=1, checkpoint_every=1000, sigma="[[0, 5.0]]"))
    out = tmp_path / "run"
    out.mkdir()
    rec = json.loads(RECORD.read_text())
    (out / "record.json").write_text(json.dumps(damaged(rec, ("final", "test", "accuracy"), "x")))
    before = snapshot(out)
    one_line_error(olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet"), out / "record.json",
                   "accuracy")
    assert snapshot(out) == before


# ---- checkpoints ---------------------------------------------------------------------------------

def _resume_refused(exp: Path, out: Path, *needles: str | Path) -> None:
    before = snapshot(out)
    one_line_error(olmp("prune", "--experiment", str(exp), "--out", str(out), "--quiet", "--resume"), *needles)
    after = snapshot(out)
    after.pop(".lock", None)  # the run folder's lock file stays, as after any run
    before.pop(".lock", None)
    assert after == before


def test_damaged_checkpoint_state(killed_run: tuple[Path, Path], tmp_path: Path) -> None:
    exp, run = killed_run
    good = json.loads((run / "checkpoint" / "state.json").read_text())
    cases = list(damages(schemas.CheckpointState, good))
    cases += [(("rng",), {**good["rng"], "state": "x"}), (("rng",), {**good["rng"], "bit_generator": "MT19937x"}),
              (("rng",), {"legacy_mt19937": {"key": [1, 2], "pos": 0, "has_gauss": 0, "gauss": 0.0}})]
    assert len(cases) > 40
    folder = tmp_path / "in-process"
    (folder / "checkpoint").mkdir(parents=True)
    state = folder / "checkpoint" / "state.json"
    for key, value in cases:
        state.write_text(json.dumps(damaged(good, key, value)))
        with pytest.raises(OlmpError) as err:
            checkpoint.read_state(folder)
        msg = str(err.value)
        assert msg.startswith(f"{state}: malformed") and "\n" not in msg and key_named(key) in msg, (key, msg)

    def resume(case: tuple[tuple[Any, ...], Any]) -> None:
        key, value = case
        out = tmp_path / ("run-" + "-".join(map(str, key)))
        shutil.copytree(run, out)
        (out / "checkpoint" / "state.json").write_text(json.dumps(damaged(good, key, value)))
        _resume_refused(exp, out, out / "checkpoint" / "state.json", key_named(key))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(resume, by_top_key(cases)))


def test_damaged_checkpoint_masks_and_solver_state(killed_run: tuple[Path, Path], tmp_path: Path) -> None:
    exp, run = killed_run
    with np.load(run / "checkpoint" / "masks.npz") as z:
        good = {k: z[k] for k in z.files}
    first = next(iter(good))
    wrong = {
        "missing": {k: v for k, v in good.items() if k != first},
        "extra": {**good, "ip9/0": good[first]},
        "shape": {**good, first: good[first][:-1]},
        "values": {**good, first: good[first] * 2},
        "nan": {**good, first: good[first] * np.float32("nan")},
    }
    shapes = {k: v.shape for k, v in good.items()}
    with pytest.raises(OlmpError, match="lacks"):
        schemas.check_masks(wrong["missing"], shapes, "m.npz")
    cases: list[tuple[str, str, bytes | dict[str, np.ndarray]]] = [
        (f"masks-{k}", "masks.npz", v) for k, v in wrong.items()]
    cases += [("masks-garbage", "masks.npz", b"PK\x03\x04 not a zip"),
              ("masks-pickled", "masks.npz", {"ip1/0": np.array([object()], dtype=object)}),
              ("solverstate", "solver.solverstate", b"\xff" * 40),
              ("weights", "weights.caffemodel", (run / "checkpoint" / "weights.caffemodel").read_bytes()[:500])]

    def resume(case: tuple[str, str, bytes | dict[str, np.ndarray]]) -> None:
        label, name, body = case
        out = tmp_path / label
        shutil.copytree(run, out)
        target = out / "checkpoint" / name
        if isinstance(body, bytes):
            target.write_bytes(body)
        else:
            with open(target, "wb") as fh:
                np.savez(fh, **body)  # type: ignore[arg-type]
        _resume_refused(exp, out, target)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(resume, cases))


# ---- other files ---------------------------------------------------------------------------------

def test_damaged_sparse_npz_meta(tmp_path: Path) -> None:
    npz = tmp_path / "good.npz"
    sparse.export_sparse(GOOD_WEIGHTS, npz)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    cases = list(damages(schemas.SparseMeta, meta))
    assert len(cases) > 12

    def write(name: str, m: Any) -> Path:
        p = tmp_path / name
        with open(p, "wb") as fh:
            np.savez(fh, **{**arrays, "meta": np.array(json.dumps(m))})  # type: ignore[arg-type]
        return p

    for i, (key, value) in enumerate(cases):
        p = write(f"d{i}.npz", damaged(meta, key, value))
        with pytest.raises(OlmpError) as err:
            sparse.load_sparse(p)
        assert str(err.value).startswith(f"{p}: ") and "\n" not in str(err.value), (key, err.value)
    odd = {"list-meta": [1, 2], "extra-key": {**meta, "colour": 1}, "three-blobs": damaged(
        meta, ("layers", 0, "blobs"), meta["layers"][0]["blobs"] * 2)}
    for name, m in odd.items():
        p = write(f"{name}.npz", m)
        before = p.read_bytes()
        one_line_error(olmp("export", "--dense", str(p), str(tmp_path / f"{name}.caffemodel")), p)
        assert p.read_bytes() == before and not (tmp_path / f"{name}.caffemodel").exists()
    with open(tmp_path / "meta-number.npz", "wb") as fh:
        np.savez(fh, meta=np.arange(3))
    one_line_error(olmp("export", "--dense", str(tmp_path / "meta-number.npz"), str(tmp_path / "o.caffemodel")),
                   tmp_path / "meta-number.npz", "meta")


def test_damaged_training_and_transplant_records(tmp_path: Path) -> None:
    good = json.loads(TRAIN_JSON.read_text())
    cases = list(damages(schemas.TrainRecord, good))
    refs = tmp_path / "references"
    (refs / "lenet300100").mkdir(parents=True)
    for key, value in cases:
        (refs / "lenet300100" / "train.json").write_text(json.dumps(damaged(good, key, value)))
        with pytest.raises(OlmpError, match=key_named(key)):
            from olmp import reports

            reports.references_table(refs)
    (refs / "lenet300100" / "train.json").write_text(json.dumps(damaged(good, ("test", "loss"), "x")))
    one_line_error(olmp("report", "--references", str(refs)), refs / "lenet300100" / "train.json", "loss")
    assert not (tmp_path / "references.md").exists()

    tgood = json.loads(TRANSPLANT.read_text())
    tcases = list(damages(schemas.TransplantRecord, tgood))
    assert len(tcases) >= 14
    for i, (key, value) in enumerate(by_top_key(tcases)[:3]):
        diag = tmp_path / f"diag{i}"
        (diag / "transplant" / "pair").mkdir(parents=True)
        (diag / "transplant" / "pair" / "record.json").write_text(json.dumps(damaged(tgood, key, value)))
        one_line_error(olmp("transplant", "--table", str(diag)), diag / "transplant" / "pair" / "record.json",
                       key_named(key))
        assert sorted(p.name for p in diag.iterdir()) == ["transplant"]


# ---- outputs -----------------------------------------------------------------------------------

def _strict(line: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_json_output_is_strict_json(tmp_path: Path) -> None:
    """A model with no parameter left: its ratio is not a finite number, and --json says null."""
    from olmp import convert

    zeros = tmp_path / "zeros.caffemodel"
    convert.write_params_only([("ip1", "InnerProduct", [np.zeros((3, 4), np.float32), np.zeros(3, np.float32)])],
                              zeros)
    r = olmp("inspect", str(zeros), "--json")
    assert r.returncode == 0, r.stderr
    out = _strict(r.stdout.strip().splitlines()[-1])
    assert out["ratio"] is None and out["remaining"] == 0
    from olmp import atomic

    atomic.write_json(tmp_path / "x.json", {"a": float("inf"), "b": [float("nan"), 1.5]})
    assert _strict((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5]}


def test_no_output_over_an_input_or_an_existing_file(tmp_path: Path, mnist_dir: Path) -> None:
    model = tmp_path / "m.caffemodel"
    shutil.copy(GOOD_WEIGHTS, model)
    link = tmp_path / "link.caffemodel"
    link.symlink_to(model)
    hard = tmp_path / "hard.caffemodel"
    os.link(model, hard)
    npz = tmp_path / "m.npz"
    assert olmp("export", "--sparse", str(model), str(npz)).returncode == 0
    before = {p: p.read_bytes() for p in (model, npz)}
    for argv, named in ((["convert", str(model), str(model), "--force"], model),
                        (["convert", str(model), str(link), "--force"], link),
                        (["convert", str(model), str(hard), "--force"], hard),
                        (["export", "--sparse", str(model), str(model), "--force"], model),
                        (["export", "--dense", str(npz), str(npz), "--force"], npz)):
        one_line_error(olmp(*argv), named, "is also the input")
    for argv, named in ((["convert", str(model), str(npz)], npz),
                        (["export", "--sparse", str(model), str(npz)], npz),
                        (["export", "--dense", str(npz), str(tmp_path / "hard.caffemodel")], hard)):
        one_line_error(olmp(*argv), named, "exists; pass --force")
    assert {p: p.read_bytes() for p in (model, npz)} == before
    r = olmp("convert", str(model), str(tmp_path / "copy.caffemodel"))
    assert r.returncode == 0, r.stderr
    r = olmp("convert", str(model), str(tmp_path / "copy.caffemodel"), "--force")
    assert r.returncode == 0, r.stderr
    # export --onnx: the same rules
    net = tmp_path / "net.prototxt"
    shutil.copy(REPO / "models/lenet300100/train_test.prototxt", net)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"old")
    one_line_error(olmp("export", "--onnx", str(net), str(model), str(onnx)), onnx, "exists; pass --force")
    assert onnx.read_bytes() == b"old"
    one_line_error(olmp("export", "--onnx", str(net), str(model), str(net), "--force"), net, "is also the input")
    r = olmp("export", "--onnx", str(net), str(model), str(onnx), "--force")
    assert r.returncode == 0 and onnx.read_bytes()[:3] != b"old", r.stderr
    # init and train never write over the files they read, even with --force
    solver = tmp_path / "solver.prototxt"
    solver.write_text((REPO / "solvers/lenet300100_solver.prototxt").read_text().replace(
        '"models/lenet300100/train_test.prototxt"', f'"{net}"'))
    for target in (net, solver, model):
        one_line_error(olmp("init", "--net", str(net), "--weights", str(model), "--solver", str(solver), "--out",
                            str(target), "--force"), target, "is also the input")
    folder = tmp_path / "t"
    folder.mkdir()
    shutil.copy(net, folder / "model.caffemodel")  # a net file by that name: what train would write
    (folder / "solver.prototxt").write_text(solver.read_text().replace(str(net), str(folder / "model.caffemodel")))
    one_line_error(olmp("train", "--solver", str(folder / "solver.prototxt"), "--iters", "1", "--out", str(folder),
                        "--force", "--quiet"), folder / "model.caffemodel", "is also the input")
    assert (folder / "model.caffemodel").read_bytes() == net.read_bytes()
    assert {p: p.read_bytes() for p in (model, npz)} == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_train_refuses_an_existing_model_without_force(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "t"
    out.mkdir()
    (out / "model.caffemodel").write_bytes(b"old")
    one_line_error(olmp("train", "--solver", "solvers/lenet300100_solver.prototxt", "--iters", "2", "--out",
                        str(out), "--quiet"), out / "model.caffemodel", "--force")
    assert (out / "model.caffemodel").read_bytes() == b"old"


def test_default_run_folder_stays_inside_runs(tmp_path: Path) -> None:
    base = experiment_300100(GOOD_WEIGHTS, niter=3, prune_stop=2, every=1, population=4, budget=8, record_every=1,
                             checkpoint_every=1000, sigma="[[0, 5.0]]")
    for label, name in (("empty", ""), ("blank", "  "), ("up", ".."), ("escape", "../../etc"), ("slash", "a/b"),
                        ("control", "a\\u0007b"), ("long", "x" * 300)):
        exp = tmp_path / f"{label}.toml"
        exp.write_text(base.replace('name = "small300100"', f'name = "{name}"'))
        one_line_error(olmp("prune", "--experiment", str(exp), "--quiet", cwd=tmp_path), exp, "name")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []


def test_report_checks_everything_before_writing(tmp_path: Path) -> None:
    """The best run's model is missing: nothing is written (before, runs.csv and runs.md were)."""
    model = tmp_path / "model"
    (model / "a").mkdir(parents=True)
    shutil.copy(RECORD, model / "a" / "record.json")
    before = snapshot(model)
    one_line_error(olmp("report", str(model)), model / "a", "pruned.caffemodel")
    assert snapshot(model) == before
