"""A corpus of malformed inputs, each through the real ``olmp`` command line.

Every case must end with exit status 2 and one stderr line ``olmp: error: FILE: problem``
naming the bad file: never a Caffe abort or segfault (negative status), a traceback or a
hang. The corpus (136 cases: net and solver prototxts, caffemodels, experiment files and
--set overrides, MNIST folders, run records, checkpoints and outputs) is generated here from
the repository's own good files. All cases run through the CLI, a few at a time (most pay the
pycaffe import: about a minute in all on two cores). Hypothesis adds random byte mutations,
fed to the in-process checkers only (never to Caffe, whose CHECK failures would kill pytest).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, experiment_300100
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmp import caffe_bridge, config, mnist, prototxt, weights
from olmp.errors import OlmpError

NET = REPO / "models/lenet300100/train_test.prototxt"
SOLVER = REPO / "solvers/lenet300100_solver.prototxt"
GOOD_WEIGHTS = REPO / "results/references/lenet300100/model.caffemodel"
LENET5_WEIGHTS = REPO / "results/references/lenet5/model.caffemodel"
WORKERS = 3  # subprocesses at a time: each mostly waits on imports


@dataclass
class Case:
    name: str  # the bad file's name, which the message must contain
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _write(d: Path, name: str, body: str | bytes) -> Path:
    p = d / name
    p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return p


# ---- prototxt --------------------------------------------------------------------------------

def _net_cases(d: Path) -> list[Case]:
    text = NET.read_text()
    ip2_start = text.index('layer {\n  name: "ip2"')
    ip2_end = text.index("layer { name: \"relu2\"")
    bodies: dict[str, str | bytes] = {
        "net_empty.prototxt": "",
        "net_truncated_half.prototxt": text[: len(text) // 2],
        "net_truncated_midstring.prototxt": text[: text.index("InnerProduct") + 5],
        "net_wrong_type.prototxt": text.replace("num_output: 300", 'num_output: "many"'),
        "net_negative_output.prototxt": text.replace("num_output: 300", "num_output: -300"),
        "net_zero_output.prototxt": text.replace("num_output: 300", "num_output: 0"),
        "net_huge_output.prototxt": text.replace("num_output: 300", "num_output: 4000000000"),
        "net_unknown_type.prototxt": text.replace('type: "ReLU"', 'type: "Frobnicate"', 1),
        "net_no_type.prototxt": text.replace('type: "ReLU" ', "", 1),
        "net_unknown_field.prototxt": text.replace("num_output: 300", "num_output: 300 frobnicate: 3"),
        "net_dangling_bottom.prototxt": text.replace('bottom: "ip1"\n  top: "ip2"', 'bottom: "ip9"\n  top: "ip2"'),
        "net_missing_layer.prototxt": text[:ip2_start] + text[ip2_end:],
        "net_missing_source.prototxt": text.replace("data/mnist/mnist_test_lmdb", "data/mnist/nowhere_lmdb"),
        "net_source_is_file.prototxt": text.replace("data/mnist/mnist_test_lmdb", str(NET)),
        "net_source_empty_dir.prototxt": text.replace("data/mnist/mnist_test_lmdb", str(d / "emptydir")),
        "net_zero_batch.prototxt": text.replace("batch_size: 100", "batch_size: 0"),
        "net_binary_garbage.prototxt": bytes(range(256)) * 4,
        "net_not_utf8.prototxt": text.replace("LeNet", "LeNet \xe9").encode("latin-1"),
        "net_v1_layers.prototxt": 'name: "x"\nlayers { name: "d" type: DATA top: "data" }\n',
        "net_duplicate_name.prototxt": text.replace('name: "ip2"', 'name: "ip1"'),
        "net_loss_one_bottom.prototxt": text.replace('bottom: "ip3"\n  bottom: "label"\n  top: "loss"',
                                                     'bottom: "ip3"\n  top: "loss"'),
        "net_relu_no_top.prototxt": text.replace('layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }',
                                                 'layer { name: "relu1" type: "ReLU" bottom: "ip1" }'),
        "net_conv_no_kernel.prototxt": text.replace(
            'layer { name: "relu1"',
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 } }\n'
            'layer { name: "relu1"'),
        "net_pool_no_kernel.prototxt": text.replace(
            'layer { name: "relu1"',
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" }\nlayer { name: "relu1"'),
        "net_no_loss.prototxt": text[: text.index('layer {\n  name: "accuracy"')],
    }
    (d / "emptydir").mkdir(exist_ok=True)
    cases = [Case(n, ["evaluate", "--net", str(_write(d, n, b)), "--weights", str(GOOD_WEIGHTS)])
             for n, b in bodies.items()]
    cases.append(Case("net_is_a_dir", ["evaluate", "--net", str(_dir(d, "net_is_a_dir")), "--weights",
                                       str(GOOD_WEIGHTS)]))
    cases.append(Case("net_does_not_exist.prototxt", ["evaluate", "--net", str(d / "net_does_not_exist.prototxt"),
                                                       "--weights", str(GOOD_WEIGHTS)]))
    return cases


def _dir(d: Path, name: str) -> Path:
    (d / name).mkdir(exist_ok=True)
    return d / name


def _solver_cases(d: Path) -> list[Case]:
    text = SOLVER.read_text().replace('net: "models', f'net: "{REPO}/models')
    bodies = {
        "solver_zero_lr.prototxt": text.replace("base_lr: 0.01", "base_lr: 0"),
        "solver_bad_policy.prototxt": text.replace('lr_policy: "inv"', 'lr_policy: "bogus"'),
        "solver_bad_type.prototxt": text + 'type: "Frobnicate"\n',
        "solver_no_net.prototxt": text.replace(f'net: "{REPO}/models/lenet300100/train_test.prototxt"', ""),
        "solver_missing_net.prototxt": text.replace("train_test.prototxt", "nowhere.prototxt"),
        "solver_no_test_iter.prototxt": text.replace("test_iter: 100", ""),
        "solver_string_momentum.prototxt": text.replace("momentum: 0.9", 'momentum: "high"'),
        "solver_nan_lr.prototxt": text.replace("base_lr: 0.01", "base_lr: nan"),
        "solver_negative_momentum.prototxt": text.replace("momentum: 0.9", "momentum: -1"),
        "solver_step_no_stepsize.prototxt": text.replace('lr_policy: "inv"', 'lr_policy: "step"'),
    }
    return [Case(n, ["train", "--solver", str(_write(d, n, b)), "--iters", "2", "--out", str(d / f"o-{n}"),
                     "--quiet"]) for n, b in bodies.items()]


def _odd_net_cases(d: Path) -> list[Case]:
    """Nets and solvers Caffe accepts at build time and aborts on (or hangs with) once data flows,
    each through ``olmp train``: the message names the net or the solver that holds the setting."""
    net = NET.read_text()
    relu1 = 'layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }'
    assert relu1 in net and "num_output: 10\n" in net and "batch_size: 64 " in net
    nets = {
        "odd_dropout_above_one.prototxt": net.replace(relu1, relu1 + '\nlayer { name: "drop" type: "Dropout" '
                                                      'bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 1.5 } }'),
        "odd_labels_beyond_outputs.prototxt": net.replace("num_output: 10\n", "num_output: 5\n"),
        "odd_python_layer_missing.prototxt": net.replace(relu1, relu1 + '\nlayer { name: "py" type: "Python" '
                                                         'bottom: "ip1" top: "ipx" python_param { module: '
                                                         '"olmp_no_such_module" layer: "X" } }'),
        "odd_prefetch_zero.prototxt": net.replace("batch_size: 64 ", "batch_size: 64 prefetch: 0 "),
        "odd_control_in_name.prototxt": net.replace('name: "ip2"', 'name: "ip\\0072"'),
    }
    solver = SOLVER.read_text()
    cases = []
    for name, body in nets.items():
        n = _write(d, name, body)
        s = _write(d, f"s_{name}", solver.replace("models/lenet300100/train_test.prototxt", str(n)))
        cases.append(Case(name, ["train", "--solver", str(s), "--iters", "2", "--out", str(d / f"o-{name}"),
                                 "--quiet"]))
    full = solver.replace("models/lenet300100", f"{REPO}/models/lenet300100")
    solvers = {
        "odd_regularization.prototxt": full + 'regularization_type: "L3"\n',
        "odd_max_iter_zero.prototxt": full.replace("max_iter: 10000", "max_iter: 0"),
        "odd_iter_size_zero.prototxt": full + "iter_size: 0\n",
    }
    for name, body in solvers.items():
        iters = [] if "max_iter" in name else ["--iters", "2"]
        cases.append(Case(name, ["train", "--solver", str(_write(d, name, body)), *iters, "--out",
                                 str(d / f"o-{name}"), "--quiet"]))
    return cases


# ---- caffemodel ------------------------------------------------------------------------------

def _weights_cases(d: Path) -> list[Case]:
    pb = caffe_bridge.caffe_pb2()
    good = GOOD_WEIGHTS.read_bytes()

    def edit(fn) -> bytes:
        m = pb.NetParameter()
        m.ParseFromString(good)
        fn({layer.name: layer for layer in m.layer}, m)
        return m.SerializeToString()

    def dims(name: str, i: int, value: list[int]):
        return lambda ls, m: ls[name].blobs[i].shape.dim.__setitem__(slice(None), value)

    def setval(name: str, i: int, value: float):
        return lambda ls, m: ls[name].blobs[i].data.__setitem__(3, value)

    def drop_blob(ls, m) -> None:
        del ls["ip2"].blobs[1]

    def duplicate(ls, m) -> None:
        m.layer.add().CopyFrom(ls["ip3"])

    def legacy(ls, m) -> None:
        b = ls["ip3"].blobs[1]
        b.ClearField("shape")
        b.num, b.channels, b.height, b.width = 1, 1, 1, 11

    def fork_mask(ls, m) -> None:
        lay = ls["ip3"]
        lay.type = "CInnerProduct"
        lay.blobs.add().CopyFrom(lay.blobs[0])
        mask = lay.blobs.add()
        mask.CopyFrom(lay.blobs[1])
        mask.shape.dim[:] = [5, 2]

    def renamed(ls, m) -> None:
        ls["ip2"].name = "ipX"

    def zero_blob(ls, m) -> None:
        b = ls["ip3"].blobs[1]
        b.shape.dim[:] = [0]
        b.ClearField("data")

    # a length-delimited field 100 (`layer`) declaring 2**62 bytes that are not there
    huge_len = b"\xa2\x06" + bytes([0xFF] * 8) + b"\x3f" + b"\x00" * 16
    bodies = {
        "w_empty.caffemodel": b"",
        "w_truncated_third.caffemodel": good[: len(good) // 3],
        "w_truncated_one_byte.caffemodel": good[:-1],
        "w_random.caffemodel": bytes((i * 7919 + 13) % 256 for i in range(4096)),
        "w_text_garbage.caffemodel": b"\xff\xfe not a protobuf " * 10,
        "w_renamed.caffemodel": edit(renamed),
        "w_reshaped.caffemodel": edit(dims("ip3", 0, [5, 200])),
        "w_huge_dims.caffemodel": edit(dims("ip1", 0, [1 << 40, 1 << 20])),
        "w_overflow_dims.caffemodel": edit(dims("ip1", 0, [1 << 62] * 20)),
        "w_negative_dim.caffemodel": edit(dims("ip3", 1, [-10])),
        "w_nan.caffemodel": edit(setval("ip2", 1, float("nan"))),
        "w_inf.caffemodel": edit(setval("ip1", 0, float("inf"))),
        "w_neg_inf.caffemodel": edit(setval("ip3", 0, float("-inf"))),
        "w_missing_blob.caffemodel": edit(drop_blob),
        "w_duplicate_layer.caffemodel": edit(duplicate),
        "w_legacy_header_wrong.caffemodel": edit(legacy),
        "w_fork_mask_shape.caffemodel": edit(fork_mask),
        "w_zero_sized_blob.caffemodel": edit(zero_blob),
        "w_huge_declared_length.caffemodel": huge_len,
        "w_prototxt_as_weights.caffemodel": NET.read_bytes(),
    }
    cases = [Case(n, ["evaluate", "--net", str(NET), "--weights", str(_write(d, n, b))]) for n, b in bodies.items()]
    cases += [
        Case("w_inspect_truncated.caffemodel", ["inspect", str(_write(d, "w_inspect_truncated.caffemodel",
                                                                      good[:999]))]),
        Case("w_inspect_zero.caffemodel", ["inspect", str(_write(d, "w_inspect_zero.caffemodel", edit(zero_blob)))]),
        Case("w_convert_nan.caffemodel", ["convert", str(_write(d, "w_convert_nan.caffemodel",
                                                                edit(setval("ip2", 0, float("nan"))))),
                                          str(d / "out.caffemodel")]),
        Case("w_export_garbage.caffemodel", ["export", "--sparse", str(_write(d, "w_export_garbage.caffemodel",
                                                                              b"\x08" * 50)), str(d / "o.npz")]),
        Case("w_dense_garbage.npz", ["export", "--dense", str(_write(d, "w_dense_garbage.npz", good[:500])),
                                     str(d / "o.caffemodel")]),
        Case("w_dense_not_ours.npz", ["export", "--dense", str(_npz(d, "w_dense_not_ours.npz")),
                                      str(d / "o2.caffemodel")]),
        Case("w_lenet5_for_300100", ["evaluate", "--net", str(NET), "--weights", str(_lenet5_copy(d))]),
        Case("w_is_a_dir", ["evaluate", "--net", str(NET), "--weights", str(_dir(d, "w_is_a_dir"))]),
    ]
    return cases


def _lenet5_copy(d: Path) -> Path:
    return _write(d, "w_lenet5_for_300100.caffemodel", LENET5_WEIGHTS.read_bytes())


def _npz(d: Path, name: str) -> Path:
    import numpy as np

    p = d / name
    with open(p, "wb") as fh:
        np.savez(fh, something=np.arange(3))
    return p


# ---- experiment TOML -------------------------------------------------------------------------

BASE_TOML = experiment_300100(GOOD_WEIGHTS, name="bad", niter=3, prune_stop=2, record_every=1,
                              checkpoint_every=1000, every=1, population=4, budget=8, sigma="[[0, 5.0]]")


def _toml_cases(d: Path) -> list[Case]:
    b = BASE_TOML
    bad_weights = _write(d, "x_nan_weights.caffemodel", b"")
    bad_solver = _write(d, "x_bad_solver.prototxt", "base_lr: 0.01\n")
    bodies = {
        "t_malformed.toml": b.replace("[search]", "[search"),
        "t_empty.toml": "",
        "t_not_utf8.toml": b.replace('"bad"', '"b\xe9d"').encode("latin-1"),
        "t_missing_weights.toml": b.replace(f'weights = "{GOOD_WEIGHTS}"', ""),
        "t_unknown_top_key.toml": b.replace("seed = 1", "seed = 1\ncolour = 3"),
        "t_source_key.toml": b.replace("seed = 1", "seed = 1\nsource = 16"),  # olmp's own field: a TypeError
        "t_unknown_search_key.toml": b.replace("population = 4", "populaton = 4"),
        "t_string_population.toml": b.replace("population = 4", 'population = "four"'),
        "t_string_layers.toml": b.replace('["ip1", "ip2", "ip3"]', '"ip1"'),
        "t_float_seed.toml": b.replace("seed = 1", "seed = 1.5"),
        "t_negative_seed.toml": b.replace("seed = 1", "seed = -1"),
        "t_huge_seed.toml": b.replace("seed = 1", "seed = 99999999999999999999"),
        "t_search_not_table.toml": b.replace("[search]\n", "search = 3\n[searchx]\n"),
        "t_delta_negative.toml": b.replace("delta = 0.08", "delta = -0.1"),
        "t_delta_nan.toml": b.replace("delta = 0.08", "delta = nan"),
        "t_bounds_reversed.toml": b.replace("[0.0, 10.0]", "[10.0, 0.0]"),
        "t_bounds_three.toml": b.replace("[0.0, 10.0]", "[0.0, 5.0, 10.0]"),
        "t_bounds_inf.toml": b.replace("[0.0, 10.0]", "[0.0, inf]"),
        "t_population_zero.toml": b.replace("population = 4", "population = 0"),
        "t_budget_below_population.toml": b.replace("budget = 8", "budget = 2"),
        "t_cmaes_population_one.toml": b.replace("population = 4", "population = 1").replace('"ncs"', '"cmaes"'),
        "t_sigma_zero.toml": b.replace("[[0, 5.0]]", "0"),
        "t_sigma_inf.toml": b.replace("[[0, 5.0]]", "inf"),
        "t_initial_crate_out_of_bounds.toml": b.replace("niter = 3", "niter = 3\ninitial_crate = 50.0"),
        "t_unknown_layer.toml": b.replace('"ip3"]', '"ip4"]'),
        "t_relu_layer.toml": b.replace('"ip3"]', '"relu1"]'),
        "t_no_layers.toml": b.replace('["ip1", "ip2", "ip3"]', "[]"),
        "t_unknown_optimizer.toml": b.replace('"ncs"', '"adam"'),
        "t_unknown_method.toml": b.replace("seed = 1", 'seed = 1\nmethod = "magic"'),
        "t_niter_negative.toml": b.replace("niter = 3", "niter = -5"),
        "t_niter_huge.toml": b.replace("niter = 3", "niter = 10000000000000"),
        "t_checkpoint_every_zero.toml": b.replace("checkpoint_every = 1000", "checkpoint_every = 0"),
        "t_gamma_unknown_type.toml": b.replace("niter = 3", "niter = 3\ngamma = { Pooling = 1.0 }"),
        "t_validation_without_images.toml": b.replace("delta = 0.08", 'delta = 0.08\naccuracy_on = "validation"'),
        "t_missing_solver.toml": b.replace("solvers/lenet300100_solver", "solvers/nowhere"),
        "t_bad_solver.toml": b.replace("solvers/lenet300100_solver.prototxt", str(bad_solver)),
        "t_bad_weights.toml": b.replace(str(GOOD_WEIGHTS), str(bad_weights)),
        "t_missing_net.toml": b.replace("models/lenet300100/train_test", "models/lenet300100/nowhere"),
        "t_other_net.toml": b.replace("models/lenet300100/train_test", "models/lenet5/train_test"),
    }
    cases = []
    for n, body in bodies.items():
        needle = {"t_bad_solver.toml": bad_solver.name, "t_bad_weights.toml": bad_weights.name}.get(n, n)
        cases.append(Case(needle, ["prune", "--experiment", str(_write(d, n, body)), "--out", str(d / f"run-{n}"),
                                   "--quiet"]))
    cases.append(Case("t_is_a_dir.toml", ["prune", "--experiment", str(_dir(d, "t_is_a_dir.toml")), "--quiet"]))
    return cases


# ---- MNIST -----------------------------------------------------------------------------------

def _mnist_cases(d: Path, mnist_dir: Path) -> list[Case]:
    labels = (mnist_dir / mnist.TEST_LABELS).read_bytes()
    bad = {
        "wrong_checksum": labels[:100] + bytes([(labels[100] + 1) % 10]) + labels[101:],
        "short": labels[:5000],
        "trailing": labels + b"\x00",
        "bad_magic": b"\x00\x00\x08\x03" + labels[4:],
        "wrong_dims": labels[:4] + struct.pack(">I", 9999) + labels[8:],
        "empty": b"",
        "header_only_two_bytes": b"\x00\x00",
        "corrupt_gzip": gzip.compress(labels)[:200] + b"\x00" * 64,
        "gzip_of_short": gzip.compress(labels[:300]),
    }
    cases = []
    for tag, body in bad.items():
        src = _dir(d, f"mnist_src_{tag}")
        for name in mnist.FILES:
            if name != mnist.TEST_LABELS:
                link = src / name
                if not link.exists():
                    link.symlink_to(mnist_dir / name)
        fname = mnist.TEST_LABELS + (".gz" if "gzip" in tag else "")
        _write(src, fname, body)
        cases.append(Case(f"mnist_src_{tag}", ["data", "mnist", "--from", str(src), "--quiet"],
                          env={"OLMP_DATA_DIR": str(_dir(d, f"data_{tag}"))}))
    missing = _dir(d, "mnist_src_missing_file")
    cases.append(Case("mnist_src_missing_file", ["data", "mnist", "--from", str(missing), "--quiet"],
                      env={"OLMP_DATA_DIR": str(_dir(d, "data_missing"))}))
    cases.append(Case("mnist_src_nowhere", ["data", "mnist", "--from", str(d / "mnist_src_nowhere"), "--quiet"],
                      env={"OLMP_DATA_DIR": str(_dir(d, "data_nowhere"))}))
    dest_file = _dir(d, "data_dest_file")
    _write(dest_file, "mnist", b"a file, not a folder")
    cases.append(Case("mnist", ["data", "mnist", "--from", str(d / "mnist_src_short"), "--quiet"],
                      env={"OLMP_DATA_DIR": str(dest_file)}))
    return cases


# ---- outputs, records, checkpoints -------------------------------------------------------------

def _misc_cases(d: Path) -> list[Case]:
    def record(name: str, body: str) -> Path:
        _dir(d, name)
        run = _dir(d / name, "run")
        _write(run, "record.json", body)
        return d / name

    exp = _write(d, "m_exp.toml", BASE_TOML)
    bad_record = _dir(d, "m_out_bad_record")
    _write(bad_record, "record.json", '{"finished": tr')
    bad_ck = _dir(d / _dir(d, "m_out_bad_checkpoint").name, "checkpoint")
    _write(bad_ck, "state.json", "{not json")
    out_dir = _dir(d, "m_output_is_a_dir")
    fifo = d / "m_output_fifo"  # stands for /dev/full: a rename over it would replace it
    os.mkfifo(fifo)
    return [
        Case("r_truncated", ["report", str(record("r_truncated", '{"finished": tru'))]),
        Case("r_not_an_object", ["report", str(record("r_not_an_object", "[1, 2, 3]"))]),
        Case("r_no_final", ["report", str(record("r_no_final", '{"finished": true, "experiment": {}}'))]),
        Case("r_nowhere", ["report", str(d / "r_nowhere")]),
        Case("m_output_is_a_dir", ["convert", str(GOOD_WEIGHTS), str(out_dir)]),
        Case("m_output_is_a_dir", ["export", "--sparse", str(GOOD_WEIGHTS), str(out_dir)]),
        Case("--iters", ["train", "--solver", str(SOLVER), "--iters", "99999999999", "--out", str(d / "m_t")]),
        Case("m_out_bad_record", ["prune", "--experiment", str(exp), "--out", str(bad_record), "--quiet"]),
        Case("m_out_bad_checkpoint", ["prune", "--experiment", str(exp), "--out", str(bad_ck.parent), "--quiet",
                                      "--resume"]),
        Case("m_weights_flag.caffemodel", ["prune", "--experiment", str(exp), "--weights",
                                           str(_write(d, "m_weights_flag.caffemodel", b"\x0a\x01")), "--out",
                                           str(d / "m_run_w"), "--quiet"]),
        Case("m_exp.toml", ["prune", "--experiment", str(exp), "--set", "nonsense", "--out", str(d / "m_r1")]),
        Case("m_exp.toml", ["prune", "--experiment", str(exp), "--set", "search.delta=nan", "--out", str(d / "m_r2")]),
        Case("m_exp.toml", ["prune", "--experiment", str(exp), "--set", "search.workers=1000", "--out",
                            str(d / "m_r3")]),
        Case("seed must be", ["prune", "--experiment", str(exp), "--seed", "-3", "--out", str(d / "m_run_s"),
                              "--quiet"]),
        Case("--seed must be", ["train", "--solver", str(SOLVER), "--seed", "99999999999999", "--out",
                                str(d / "m_t_seed")]),
        Case(str(fifo), ["convert", str(GOOD_WEIGHTS), str(fifo)]),
        Case(str(fifo), ["export", "--sparse", str(GOOD_WEIGHTS), str(fifo)]),
        Case("/proc/olmp-m", ["train", "--solver", str(SOLVER), "--iters", "3000", "--out", "/proc/olmp-m"]),
        Case("net_huge_batch.prototxt", ["evaluate", "--net", str(_write(d, "net_huge_batch.prototxt", NET.read_text(
            ).replace("batch_size: 100 ", "batch_size: 2000000000 "))), "--weights", str(GOOD_WEIGHTS)]),
    ]


# ---- the run ---------------------------------------------------------------------------------

def _run(case: Case) -> tuple[Case, subprocess.CompletedProcess | str]:
    env = {**os.environ, **case.env}
    try:
        r = subprocess.run([sys.executable, "-m", "olmp", *case.argv], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return case, "hang: no exit within 120 s"
    return case, r


def _problem(case: Case, r: subprocess.CompletedProcess | str) -> str | None:
    if isinstance(r, str):
        return r
    err = r.stderr.strip()
    if r.returncode < 0:
        return f"killed by signal {-r.returncode} (abort/segfault); stderr: {err[-500:]}"
    if r.returncode != 2:
        return f"exit status {r.returncode}; stderr: {err[-500:]}"
    if "Traceback" in err or len(err.splitlines()) != 1:
        return f"not one line: {err[-800:]}"
    if not err.startswith("olmp: error: ") or case.name not in err:
        return f"does not name {case.name}: {err}"
    return None


def test_malformed_inputs_through_the_cli(tmp_path: Path, mnist_dir: Path) -> None:
    cases = (_net_cases(tmp_path) + _solver_cases(tmp_path) + _odd_net_cases(tmp_path) + _weights_cases(tmp_path)
             + _toml_cases(tmp_path)
             + _mnist_cases(tmp_path, mnist_dir) + _misc_cases(tmp_path))
    assert len(cases) >= 50
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(_run, cases))
    problems = [f"{c.name}: {p}" for c, r in results if (p := _problem(c, r))]
    assert not problems, f"{len(problems)}/{len(cases)} cases failed:\n" + "\n".join(problems)


# ---- hypothesis: random mutations into the in-process checkers -------------------------------

MUTATE = settings(max_examples=150, derandomize=True, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tiny_caffemodel() -> bytes:
    """A small two-layer model, so mutations hit its structure rather than a megabyte of floats."""
    pb = caffe_bridge.caffe_pb2()
    m = pb.NetParameter(name="tiny")
    for name, shapes in (("ip1", [(3, 4), (3,)]), ("ip2", [(2, 3), (2,)])):
        lay = m.layer.add(name=name, type="InnerProduct")
        for shape in shapes:
            blob = lay.blobs.add()
            blob.shape.dim[:] = list(shape)
            blob.data[:] = [0.5 * i for i in range(math.prod(shape))]
    return m.SerializeToString()


@st.composite
def mutations(draw: st.DrawFn, good: bytes) -> bytes:
    """Flip, insert, delete, or truncate a few bytes of ``good``."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i: i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


IDX = struct.pack(">IIII", 2051, 2, 3, 3) + bytes(range(18))
MUTATED = {  # file name -> (the valid bytes mutated, the in-process reader that must accept or refuse them)
    "m.caffemodel": (_tiny_caffemodel, lambda p: weights.summary(weights.read_caffemodel(p))),
    "m.prototxt": (lambda: NET.read_bytes(), prototxt.read_net),
    "m.toml": (lambda: BASE_TOML.encode(), config.load),
    "m-idx3-ubyte": (lambda: IDX, mnist.read_idx),
}


@pytest.mark.parametrize("name", list(MUTATED))
@MUTATE
@given(st.data())
def test_mutated_inputs_are_accepted_or_refused(tmp_path: Path, mnist_dir: Path, name: str,
                                                data: st.DataObject) -> None:
    good, read = MUTATED[name]
    p = tmp_path / name
    p.write_bytes(data.draw(mutations(good())))
    try:
        read(p)
    except OlmpError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
    if name == "m-idx3-ubyte":  # whatever the bytes, they are not the real test labels
        with pytest.raises(OlmpError):
            mnist.verify_file(p, mnist.TEST_LABELS)


# ---- nets whose layers share a parameter -----------------------------------------------------

def _shared_net(mnist_dir: Path) -> str:
    """A small MLP on the real MNIST LMDBs whose layers ip_b and ip_c hold the same weights and bias."""
    data = "".join(f'layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
                   f'transform_param {{ scale: 0.00390625 }} data_param {{ source: "{mnist_dir / lmdb}" '
                   f'batch_size: {batch} backend: LMDB }} }}\n'
                   for phase, lmdb, batch in (("TRAIN", "mnist_train_lmdb", 64), ("TEST", "mnist_test_lmdb", 100)))
    ip = ('layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {params}'
          'inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} }} }}\n')
    shared = 'param { name: "w_shared" } param { name: "b_shared" } '
    layers = [("ip_a", "data", 16, ""), ("ip_b", "ip_a", 16, shared), ("ip_c", "ip_b", 16, shared),
              ("ip_out", "ip_c", 10, "")]
    return ('name: "shared"\n' + data + "".join(ip.format(name=a, bottom=b, n=n, params=p) for a, b, n, p in layers)
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip_out" bottom: "label" top: "loss" }\n')


def test_nets_that_share_parameters_are_refused(tmp_path: Path, mnist_dir: Path) -> None:
    """Layers sharing a parameter (``param { name }``) would have it counted, masked and converted once
    per layer: every command refuses such a net, and a model Caffe saved from one, in one line naming
    the file and the layers."""
    net = _write(tmp_path, "shared.prototxt", _shared_net(mnist_dir))
    solver = _write(tmp_path, "shared_solver.prototxt", SOLVER.read_text().replace(
        'net: "models/lenet300100/train_test.prototxt"', f'net: "{net}"'))
    assert str(net) in solver.read_text()
    c = caffe_bridge.caffe()
    live = c.Net(str(net), c.TEST)
    live.params["ip_b"][0].data[...] = 0.25
    assert float(live.params["ip_c"][0].data.max()) == 0.25  # Caffe holds one blob for both layers
    model = tmp_path / "shared.caffemodel"
    live.save(str(model))  # Caffe's own writer: both layers, each with the blobs and the param names
    saved = caffe_bridge.caffe_pb2().NetParameter.FromString(model.read_bytes())
    assert [(lay.name, [p.name for p in lay.param]) for lay in saved.layer if lay.blobs][1:3] == [
        ("ip_b", ["w_shared", "b_shared"]), ("ip_c", ["w_shared", "b_shared"])]
    exp = _write(tmp_path, "shared.toml", experiment_300100(model, niter=3, prune_stop=2, every=1, population=4,
                                                            budget=8, record_every=1, checkpoint_every=1000).replace(
        '"solvers/lenet300100_solver.prototxt"', f'"{solver}"').replace(
        '"models/lenet300100/train_test.prototxt"', f'"{net}"').replace('"ip1", "ip2", "ip3"', '"ip_b", "ip_c"'))
    out = tmp_path / "out"
    cases = [Case(str(model), ["inspect", str(model)]),
             Case(str(model), ["export", "--sparse", str(model), str(out / "m.npz")]),
             Case(str(model), ["convert", str(model), str(out / "m.caffemodel")]),
             Case(str(net), ["evaluate", "--net", str(net), "--weights", str(GOOD_WEIGHTS)]),
             Case(str(net), ["train", "--solver", str(solver), "--iters", "1", "--out", str(out / "t")]),
             Case(str(net), ["init", "--net", str(net), "--weights", str(model), "--solver", str(solver), "--out",
                             str(out / "exp.toml")]),
             Case(str(net), ["prune", "--experiment", str(exp), "--out", str(out / "run"), "--quiet"])]
    before = {p: p.read_bytes() for p in (net, solver, model, exp)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_run, cases))
    problems = [f"{c.argv[0]}: {p}" for c, r in results if (p := _problem(c, r))]
    assert not problems, "\n".join(problems)
    for _, r in results:
        assert isinstance(r, subprocess.CompletedProcess)
        assert "layers 'ip_b', 'ip_c' share the parameter 'w_shared'" in r.stderr, r.stderr
    assert not out.exists() and {p: p.read_bytes() for p in before} == before
