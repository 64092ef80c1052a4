"""Run records (olmp/record.py): one type names every run; committed records read as before, never rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_olmp

from olmp import config, record, reports
from olmp.errors import OlmpError
from olmp.record import RunRecord

RESULTS = REPO / "results"

# committed record -> (label, series, group, variant, own reference, paper setting, seed); none of them
# records its variant. Every value is written out: a name derived wrongly fails here, whichever property derives it.
COMMITTED = {
    "lenet300100/ncs-seed1": ("olmp-ncs", "olmp-ncs", "ncs", "", True, True, 1),  # from before records named their method
    "lenet300100/validation-cmaes-seed1":
        ("olmp-cmaes", "olmp-cmaes (validation)", "cmaes (validation)", "validation", True, False, 1),
    "lenet300100/one-layer-searches-validation-ncs-seed1":
        ("olmp-ncs", "olmp-ncs (one-layer-searches-validation)", "ncs (one-layer-searches-validation)",
         "one-layer-searches-validation", True, False, 1),
    "lenet300100/dns-published-seed1-dns-reference":
        ("dns", "dns (published)", "dns (published, authors' reference)", "published", False, False, 1),
    "lenet300100/deep-compression-seed1":
        ("deep-compression", "deep-compression", "deep-compression", "", True, True, 1),
    "lenet300100/tradeoff/dns-scale2": ("dns", "dns", "dns", "", True, True, 1),
    "lenet5/released-authors-seed78011":
        ("olmp-sampling", "olmp-sampling (released)", "sampling (released, authors' reference)", "released", False,
         False, 78011),
    "lenet5/ncs-seed1-authors-reference": ("olmp-ncs", "olmp-ncs", "ncs (authors' reference)", "", False, False, 1),
    "lenet5/rewind-ncs-seed2": ("olmp-ncs", "olmp-ncs (rewind)", "ncs (rewind)", "rewind", True, False, 2),
    "lenet5/global-magnitude-seed1": ("global-magnitude", "global-magnitude", "global-magnitude", "", True, True, 1),
}


@pytest.mark.parametrize("run", sorted(COMMITTED))
def test_committed_records_keep_their_names(run: str) -> None:
    path = RESULTS / run / "record.json"
    raw = path.read_bytes()
    rec = RunRecord.load(path)
    assert (rec.label, rec.series, rec.group, rec.variant, rec.own_reference, rec.paper_setting, rec.seed) == \
        COMMITTED[run]
    assert rec.name == Path(run).name and rec.finished
    assert path.read_bytes() == raw  # reading never rewrites


def test_provenance_is_read_where_recorded() -> None:
    newer = RunRecord.load(RESULTS / "lenet5" / "released-authors-seed78011" / "record.json")
    assert newer.provenance and "git_commit" in newer.provenance
    assert RunRecord.load(RESULTS / "lenet300100" / "ncs-seed1" / "record.json").provenance is None  # before it


def test_recorded_variant_wins_over_the_name(tmp_path: Path) -> None:
    exp = config.load("lenet5").to_dict()
    ref = {"weights": exp["weights"], "test": {"accuracy": 0.99, "loss": 0.03}}
    for name, variant, expected, group in (("lenet5-rewind", "", "", "ncs"), ("lenet5", "rewind", "rewind", "ncs (rewind)"),
                                           ("lenet5-x", "long-retrain", "long-retrain", "ncs (long-retrain)")):
        data = record.new_record({**exp, "name": name, "variant": variant}, ref, searches=True, provenance={})
        assert list(data)[:4] == ["experiment", "seed", "method", "optimizer"]
        record.write(tmp_path / name / "record.json", data)
        rec = RunRecord.load(tmp_path / name / "record.json")
        assert rec.variant == expected and not rec.finished
        assert rec.group == group
        assert rec.to_dict() == json.loads(json.dumps(data))  # as written (tuples become lists)
    dns = record.new_record({**exp, "method": "dns", "name": "lenet5-dns-published"}, ref, searches=False,
                            provenance={})
    assert dns["optimizer"] == "dns" and RunRecord.from_dict(dns).label == "dns"
    assert RunRecord.from_dict(dns).variant == ""  # the name is never parsed: "published" is not read from it
    unlabelled = {**dns, "experiment": {k: v for k, v in dns["experiment"].items() if k != "variant"}}
    with pytest.raises(OlmpError, match=r"^x\.json: .*variant"):  # a record without its variant is refused
        RunRecord.from_dict(unlabelled, "x.json")
    assert record.run_name("dns", "ncs", 3, False) == "dns-seed3"
    assert record.run_name("olmp", "cmaes", 2, True) == "cmaes-seed2"


def test_bad_records_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    good = json.loads((RESULTS / "lenet5" / "ncs-seed2" / "record.json").read_text())
    cases = {"notjson": "{", "list": "[1]", "nofinal": json.dumps({**good, "final": None}),
             "noname": json.dumps({**good, "experiment": {"weights": "w"}})}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(text)
        with pytest.raises(OlmpError) as err:
            RunRecord.load(tmp_path / name / "record.json")
        msg = str(err.value)
        assert str(tmp_path / name / "record.json") in msg and "\n" not in msg
    with pytest.raises(OlmpError, match="not found"):
        RunRecord.load(tmp_path / "absent" / "record.json")
    r = run_olmp("report", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "record.json" in r.stderr


def test_references_table_is_the_committed_one(tmp_path: Path) -> None:
    assert reports.references_table(RESULTS / "references") == (RESULTS / "references.md").read_text()
    refs = tmp_path / "references"
    for m in reports.REFERENCE_MODELS:
        (refs / m).mkdir(parents=True)
        (refs / m / "train.json").write_bytes((RESULTS / "references" / m / "train.json").read_bytes())
    r = run_olmp("report", "--references", str(refs))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "references.md").read_bytes() == (RESULTS / "references.md").read_bytes()


def test_a_variant_label_never_blocks_a_resume_or_a_finished_run() -> None:
    """The variant is a label: a toml that names another changes no result."""
    from olmp import checkpoint

    then = json.loads((RESULTS / "lenet5" / "rewind-ncs-seed1" / "record.json").read_text())["experiment"]
    assert then["variant"] == "rewind" and checkpoint.changed_settings({**then, "variant": ""}, then) == []
