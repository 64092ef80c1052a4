"""The experiment configuration (olmp/config.py): what run records store, and how a bad value is told.

Run records (results/**/record.json) store ``Experiment.to_dict()`` and a resume compares it
(checkpoint.changed_settings), so every committed record is reloaded from the file and the ``--set``
overrides it names, and must agree with what it stored: byte for byte as JSON when it names every
setting of today. The allowed names come from the registries, and the method-specific rules from
the policy classes; a bad value is one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from olmp import checkpoint, config, paths
from olmp.errors import OlmpError

LENET5 = REPO / "scripts" / "experiments" / "lenet5.toml"
FROM_THE_COMMAND_LINE = ("seed", "optimizer", "weights")  # olmp prune --seed, --optimizer, --weights


def _records() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted((REPO / "results").rglob("record.json")):
        exp = json.loads(p.read_text()).get("experiment")
        if isinstance(exp, dict) and exp.get("source"):
            out.append((p, exp))
    return out


def _reload(source: str) -> config.Experiment:
    """The experiment a record's ``source`` ("FILE --set K=V ...") names, loaded today."""
    words = shlex.split(source)
    assert Path(words[0]).parent.parts[-2:] == ("scripts", "experiments"), source
    path = paths.EXPERIMENTS_DIR / Path(words[0]).name  # some were written with this checkout's absolute path
    return config.load(path, [w for i, w in enumerate(words[1:]) if words[i] == "--set"])


def test_committed_records_store_what_their_experiment_files_load() -> None:
    records = _records()
    assert len(records) >= 50
    agree: dict[str, list[Path]] = {}
    exact = 0
    for p, then in records:
        now = _reload(then["source"]).to_dict()
        changed = [k for k in checkpoint.changed_settings(now, then) if k not in FROM_THE_COMMAND_LINE]
        assert not changed, f"{p.relative_to(REPO)}: {changed}"
        agree.setdefault(then["source"].split()[0].rsplit("/", 1)[-1], []).append(p)
        drop = ("source", "variant", *FROM_THE_COMMAND_LINE)  # variant: a label, absent from older records
        if [k for k in now if k not in drop] == [k for k in then if k not in drop] and all(
                list(now[s]) == list(then[s]) for s in config.SECTIONS):
            text = json.dumps({k: v for k, v in now.items() if k not in drop})
            assert text == json.dumps({k: v for k, v in then.items() if k not in drop}), p
            exact += 1
    # the records made since the newest setting (every key the code has now): the whole dict, byte for byte
    assert exact >= 1
    shipped = {f.name for f in (REPO / "scripts" / "experiments").glob("*.toml")}
    assert len(shipped & set(agree)) >= 20  # all but the three files no committed run was made from


def test_to_dict_keeps_tuples_and_floats() -> None:
    d = config.load(LENET5, ["search.delta=0", "search.sigma=3", "baseline.grid=[1, 2]", "search.bounds=[0, 5]",
                             "pipeline.gamma={ InnerProduct = 1 }", "baseline.values={ ip1 = 2 }"]).to_dict()
    assert d["layers"] == ("conv1", "conv2", "ip1", "ip2")
    assert d["search"]["sigma"] == ((0, 3.0),) and type(d["search"]["sigma"][0][1]) is float
    assert d["search"]["bounds"] == (0.0, 5.0) and all(type(x) is float for x in d["search"]["bounds"])
    assert d["baseline"]["grid"] == (1.0, 2.0) and type(d["baseline"]["grid"][0]) is float
    assert type(d["search"]["delta"]) is float and type(d["search"]["population"]) is int
    assert d["pipeline"]["gamma"] == {"InnerProduct": 1.0} and type(d["pipeline"]["gamma"]["InnerProduct"]) is float
    assert type(d["baseline"]["values"]["ip1"]) is float
    assert list(d) == [f.name for f in dataclasses.fields(config.Experiment)]


def _toml(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)


def test_set_accepts_every_field_and_nothing_else() -> None:
    exp = config.load(LENET5)
    top = [f.name for f in dataclasses.fields(exp) if f.name not in ("source", *config.SECTIONS)]
    settings = [(name, getattr(exp, name)) for name in top]
    for section in config.SECTIONS:
        part = getattr(exp, section)
        settings += [(f"{section}.{f.name}", getattr(part, f.name)) for f in dataclasses.fields(part)]
    for key, value in settings:
        again = config.load(LENET5, [f"{key}={_toml(value)}"])
        assert again.replace(source=exp.source) == exp, key
    with pytest.raises(OlmpError, match=r"unknown key\(s\) colour, search.x$"):
        config.load(LENET5, ["search.x=1", "colour=2"])


BAD = [  # (--set, the message after "FILE: ")
    ("search.delta=-0.1", "search.delta must be in [0, 1], got -0.1"),
    ("search.delta=2", "search.delta must be in [0, 1], got 2.0"),
    ("search.every=0", "search.every must be >= 1, got 0"),
    ("pipeline.niter=2147483647", "pipeline.niter must be < 2147483647, got 2147483647"),
    ("pipeline.prune_stop_iter=-1", "pipeline.prune_stop_iter must be >= 0, got -1"),
    ("baseline.scale=0", "baseline.scale must be > 0, got 0.0"),
    ("seed=-1", "seed must be in [0, 2147483647], got -1"),
    ("seed=1.5", "seed must be an integer, got 1.5"),
    ("search.population=2147483648", "search.population must be an integer of at most 2147483647, got 2147483648"),
    ('search.population="four"', "search.population must be an integer, got 'four'"),
    ("search.population=true", "search.population must be an integer, got True"),
    ("search.population=4.0", "search.population must be an integer, got 4.0"),
    ("search.delta=true", "search.delta must be a finite number, got True"),
    ("search.delta=nan", "search.delta must be a finite number, got nan"),
    ('search.delta="0.1"', "search.delta must be a finite number, got '0.1'"),
    ("search.bounds=[0.0, 5.0, 10.0]",
     "search.bounds must be [lower, upper], two finite numbers, got [0.0, 5.0, 10.0]"),
    ("search.bounds=[0.0, inf]", "search.bounds must be [lower, upper], two finite numbers, got [0.0, inf]"),
    ("search.sigma=[[0, 5.0], [1.5, 2.0]]",
     "search.sigma must be a number or a list of [from_iteration, step_size] pairs, got [[0, 5.0], [1.5, 2.0]]"),
    ("search.sigma=[]", "search.sigma must be a number or a list of [from_iteration, step_size] pairs, got []"),
    ("search.sigma=0", "search.sigma: step sizes must be > 0 and the first entry must start at iteration 0"),
    ("baseline.grid=[]", "baseline.grid must be a non-empty list of finite numbers, got []"),
    ("baseline.grid=[2.0, 1.0]", "baseline.grid must be strictly increasing"),
    ("pipeline.gamma={ Pooling = 1.0 }",
     "pipeline.gamma must be a table mapping Convolution/InnerProduct to numbers >= 0, got {'Pooling': 1.0}"),
    ('baseline.values={ ip1 = "x" }', "baseline.values must be a table of finite numbers, got {'ip1': 'x'}"),
    ("search.accuracy_on=sometimes", "search.accuracy_on must be 'minibatch' or 'validation', got 'sometimes'"),
    ("pipeline.retrain_lr=3", "pipeline.retrain_lr must be 'continue' or 'rewind', got 3"),
    ("name=3", "name must be a string, got 3"),
    ("layers=conv1", "layers must be a list of layer names, got 'conv1'"),
    ("layers=[]", "layers must be a non-empty list of distinct layer names"),
    ("search=3", "[search] must be a table"),
    ("source=x", "unknown key(s) source"),
    ("search.constraint=al", "search.chunks > 1 stops infeasible candidates early with a bound on their accuracy; "
                             "constraint = 'al' needs exact margins, use search.chunks = 1"),
    ("search.constraint=lagrange", "search.constraint must be one of penalty, al, got 'lagrange'"),
]


@pytest.mark.parametrize(("setting", "message"), BAD, ids=[s for s, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_file_and_the_key(setting: str, message: str) -> None:
    with pytest.raises(OlmpError) as info:
        config.load(LENET5, [setting])
    assert str(info.value) == f"{LENET5}: {message}"


def test_missing_keys_are_listed(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    p.write_text("\n".join(line for line in LENET5.read_text().splitlines() if not line.startswith(("weights", "net"))))
    with pytest.raises(OlmpError, match=r"m.toml: missing key\(s\) net, weights$"):
        config.load(p)


def test_replace_validates_and_never_lets_pydantic_out() -> None:
    exp = config.load(LENET5, ["search.delta=0.04"])
    assert exp.replace(seed=7).seed == 7 and exp.seed == 1
    for changes, message in (({"seed": -3}, "seed must be in [0, 2147483647], got -3"),
                             ({"seed": "7"}, "seed must be an integer, got '7'"),
                             ({"colour": 1}, "unknown key(s) colour")):
        with pytest.raises(OlmpError) as info:
            exp.replace(**changes)
        assert str(info.value) == f"{exp.source}: {message}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.seed = 2  # type: ignore[misc]


def test_names_come_from_the_registries() -> None:
    from olmp.modes import MODES
    from olmp.policies import POLICIES
    from olmp.search import OPTIMIZERS

    for key, registry in (("optimizer", OPTIMIZERS), ("method", POLICIES), ("mode", MODES)):
        with pytest.raises(OlmpError) as info:
            config.load(LENET5, [f"{key}=nothing"])
        assert str(info.value) == f"{LENET5}: unknown {key} 'nothing' (choose from {', '.join(registry)})"
    from olmp.cli import build_parser

    for name in OPTIMIZERS:  # olmp prune --optimizer takes exactly the registered ones
        assert build_parser().parse_args(["prune", "--experiment", "x", "--optimizer", name]).optimizer == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--experiment", "x", "--optimizer", "nothing"])


def test_the_least_population_is_the_optimizers_own() -> None:
    from olmp.search import OPTIMIZERS

    exp = config.load(LENET5)
    for name, cls in OPTIMIZERS.items():
        config.check(exp.replace(optimizer=name, search=config.SearchConfig(population=cls.min_popsize)))
        if cls.min_popsize > 1:
            with pytest.raises(OlmpError, match=f"search.population must be >= {cls.min_popsize} for {name}"):
                config.check(exp.replace(optimizer=name, search=config.SearchConfig(population=cls.min_popsize - 1)))


def test_method_rules_read_the_policy_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new method gets the checks its class asks for, without a list of names in config."""
    from olmp import policies

    class Shrink(policies.Policy):
        name = "shrink"
        in_rounds = True
        needs_sparsity = True

    monkeypatch.setitem(policies.POLICIES, "shrink", Shrink)
    exp = config.load(LENET5).replace(method="shrink")
    with pytest.raises(OlmpError, match=r"baseline.sparsity must be in \(0, 1\) for shrink, got 0.0"):
        config.check(exp)
    ok = exp.replace(baseline=config.BaselineConfig(sparsity=0.5))
    assert config.check(ok) is ok
    with pytest.raises(OlmpError, match="pipeline.prune_stop_iter must be >= baseline.rounds for shrink"):
        config.check(ok.replace(pipeline=config.PipelineConfig(prune_stop_iter=2)))
    config.check(ok.replace(search=config.SearchConfig(min_layers=9)))  # only a searching policy reads [search]


def test_importing_the_config_loads_neither_caffe_nor_the_registries() -> None:
    code = ("import sys, olmp.config; assert not {'caffe', 'cma', 'olmp.policies', 'olmp.search'} & set(sys.modules);"
            "import olmp.policies; assert 'caffe' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
