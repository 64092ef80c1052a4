"""The ``olmp`` command. Each verb wires library calls together; no logic lives here.

Errors the user can fix print one line (``olmp: error: FILE: problem``) and exit 2.
Verbs with ``--json`` put their JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from olmp import paths
from olmp.errors import OlmpError


def _print_json(obj: Any, human: Callable[[Any], str] | None = None) -> None:
    """The human lines (where a verb has them and ``--json`` is not given), then strict JSON as the last
    line: ``null`` stands for a number that is not finite (e.g. the ratio of a model with no parameter left)."""
    from olmp.schemas import finite

    if human is not None:
        print(human(obj))
    print(json.dumps(finite(obj), allow_nan=False))


def cmd_data(args: argparse.Namespace) -> int:
    if args.dataset == "mnist":
        from olmp import mnist

        info = mnist.prepare_mnist(source=args.source, progress=not args.quiet)
        print(f"MNIST ready in {info['dir']}")
        return 0
    if args.dataset == "caltech256":
        from olmp import caltech

        info = caltech.prepare_caltech256(args.source, seed=args.seed, progress=not args.quiet)
        _print_json(info)
        return 0
    raise OlmpError(f"unknown dataset '{args.dataset}'")


def cmd_train(args: argparse.Namespace) -> int:
    from olmp import train

    res = train.train(paths.from_cwd(args.solver), iters=args.iters, out=args.out, seed=args.seed,
                      progress=not args.quiet, force=args.force, require_progress=True)
    _print_json(res)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from olmp import evaluate

    res = evaluate.evaluate(paths.from_cwd(args.net), args.weights)
    _print_json(res, None if args.json else
                lambda r: f"accuracy {r['accuracy']:.4f}  loss {r['loss']:.4f}  ({r['images']} images)")
    return 0


def _human_inspect(r: dict[str, Any]) -> str:
    lines = [f"{'layer':<10} {'total':>10} {'remaining':>10} {'kept %':>8}"]
    for name, v in r["layers"].items():
        lines.append(f"{name:<10} {v['total']:>10} {v['remaining']:>10} {100 * v['remaining'] / v['total']:>7.2f}%")
    lines.append(f"{'all':<10} {r['total']:>10} {r['remaining']:>10}   ratio {r['ratio']:.2f}x")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from olmp import weights

    res = weights.summary(weights.read_caffemodel(args.weights))
    _print_json(res, None if args.json else _human_inspect)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from olmp import convert

    res = convert.to_stock(args.input, args.output, force=args.force)
    _print_json(res, lambda r: f"wrote {r['out']}: stock layers, {len(r['converted'])} converted from the "
                f"fork format; {r['remaining']}/{r['total']} remaining ({r['ratio']:.2f}x)")
    return 0


def _human_sparse(r: dict[str, Any]) -> str:
    return (f"wrote {r['out']}: {r['nonzero']} nonzero + {r['padding']} padding entries; "
            f"sparse {r['sparse_bytes']} bytes vs dense float32 {r['dense_bytes']} bytes = "
            f"{r['compression']:.1f}x (npz file {r['file_bytes']} bytes)")


def _human_onnx(r: dict[str, Any]) -> str:
    return (f"wrote {r['out']}: {r['nodes']} nodes, opset {r['opset']}, batch {r['batch']}, "
            f"{r['sparse_initializers']} sparse initializer(s), {r['bytes']} bytes; checked by onnx.checker"
            + "".join(f"; {n}" for n in r["notes"]))


def cmd_export(args: argparse.Namespace) -> int:
    from olmp import sparse

    if args.onnx:
        if not args.onnx_out or args.net:
            raise OlmpError("export --onnx takes NET.prototxt MODEL.caffemodel OUT.onnx (no --net)")
        from olmp import onnx_export

        res = onnx_export.export(paths.from_cwd(args.input), args.output, args.onnx_out, batch=args.batch,
                                 sparse=args.sparse_initializers, force=args.force)
        _print_json(res, _human_onnx)
        return 0
    if args.onnx_out or args.batch is not None or args.sparse_initializers:
        raise OlmpError("a third file, --batch and --sparse-initializers only go with --onnx")
    if args.sparse:
        if args.net:
            raise OlmpError("--net only goes with --dense")
        _print_json(sparse.export_sparse(args.input, args.output, force=args.force), _human_sparse)
    else:
        res = sparse.import_dense(args.input, args.output, paths.from_cwd(args.net), force=args.force)
        _print_json(res, lambda r: f"wrote {r['out']}: {r['remaining']}/{r['total']} remaining "
                    f"({r['ratio']:.2f}x)")
    return 0


def _human_init(r: dict[str, Any]) -> str:
    lines = [f"{'layer':<16} {'type':<13} {'weights':>10} {'biases':>8} {'total':>10}"]
    for name, v in r["layers"].items():
        lines.append(f"{name:<16} {v['type']:<13} {v['weights']:>10} {v['biases']:>8} {v['total']:>10}")
    lines.append(f"{'all':<16} {'':<13} {'':>10} {'':>8} {r['total']:>10}")
    lines.append(f"wrote {r['out']}: {r['closest']}'s settings (crate bounds {r['bounds']}, delta {r['delta']}); "
                 f"next: olmp prune --experiment {r['out']} --out run")
    return "\n".join(lines)


def cmd_init(args: argparse.Namespace) -> int:
    from olmp import scaffold

    res = scaffold.init(paths.from_cwd(args.net), paths.from_cwd(args.weights), paths.from_cwd(args.solver),
                        paths.from_cwd(args.out), force=args.force)
    _print_json(res, _human_init)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from olmp import config

    exp = config.load(args.experiment, args.set or ())
    changes = {k: v for k, v in (("optimizer", args.optimizer), ("seed", args.seed),
                                 ("weights", paths.from_cwd(args.weights)))
               if v is not None}
    exp = config.check(exp.replace(**changes))
    from olmp import pipeline, record  # after the checks: a bad file is refused without importing Caffe
    from olmp.policies import POLICIES

    name = record.run_name(exp.method, exp.optimizer, exp.seed, POLICIES[exp.method].searches)
    out = args.out or paths.default_run_folder(exp.name, name, exp.source.split(" --set ")[0] or None)
    rec = pipeline.prune(exp, out, resume=args.resume, progress=not args.quiet)
    f = rec["final"]
    from olmp import caffe_bridge, prototxt, train

    classes = prototxt.loss_classes(prototxt.read_solver(exp.solver).net_param, caffe_bridge.caffe_pb2().TEST)
    if train.chance(f["test"]["accuracy"], f["test"].get("images", 0), classes):
        raise OlmpError(f"pruning collapsed the test accuracy to {f['test']['accuracy']:.4f}, chance level for "
                        f"{classes} classes; record.json and pruned.caffemodel are kept for inspection", out)
    summary = {"out": str(out), "ratio": f["ratio"], "remaining": f["remaining"], "total": f["total"],
               "test_accuracy": f["test"]["accuracy"], "reference_accuracy": rec["reference"]["test"]["accuracy"]}
    _print_json(summary)
    return 0


def cmd_transplant(args: argparse.Namespace) -> int:
    from olmp import transplant

    if args.table:
        res = transplant.write_table(args.table)
        print(f"{args.table}: mask-transplant.json and .md from {res['rows']} records")
        return 0
    if not (args.experiment and args.masks and args.weights and args.out):
        raise OlmpError("transplant needs --experiment, --masks, --weights and --out (or --table DIR)")
    from olmp import config

    exp = config.load(args.experiment, args.set or ())
    rec = transplant.run(exp, paths.from_cwd(args.masks), paths.from_cwd(args.weights), args.out,
                         progress=not args.quiet)
    _print_json({k: rec[k] for k in ("ratio", "test_before", "test_final")})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from olmp import regenerate

    regenerate.report(args.dirs, args.references)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from olmp import regenerate

    regenerate.comparison(args.model, args.results)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from olmp import sweep

    if args.from_results:
        n = sweep.write_from_results(args.from_results, args.file)
        print(f"wrote {args.file}: {n} runs from the records under {args.from_results}")
        return 0
    if args.max_parallel is not None and args.max_parallel < 1:
        raise OlmpError(f"--max-parallel must be >= 1, got {args.max_parallel}")
    sw = sweep.read(args.file)
    if args.dry_run:
        rows, drifts = sweep.plan(sw, sw.select(args.only) if args.only else None)
        print("\n".join(sweep.describe(sw, rows)))
        for line in drifts:
            print(f"olmp: error: {line}", file=sys.stderr)
        return 2 if drifts else 0
    return sweep.run(sw, only=args.only, max_parallel=args.max_parallel, address=args.address,
                     gpu=args.gpu_tasks, shared_fs=False if args.no_shared_fs else None, status_file=args.status)


def _gpu_option(parser: argparse.ArgumentParser) -> None:
    """Every verb that runs a net can run it on a GPU; the CPU stays the default."""
    parser.add_argument("--gpu", type=int, metavar="N", help="run on CUDA device N (needs a CUDA pycaffe build)")


class _RegistryNames:
    """argparse choices read from a registry (e.g. olmp.search.OPTIMIZERS) only when an option is used:
    importing the optimizers loads pycma (seconds), which ``olmp --help`` or ``olmp data`` need not pay."""

    def __init__(self, module: str, registry: str) -> None:
        self.module, self.registry = module, registry

    def _names(self) -> list[str]:
        return list(getattr(importlib.import_module(self.module), self.registry))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="olmp", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="show Caffe's own log")
    sub = p.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("data", help="fetch and convert a data set")
    d.add_argument("dataset", choices=["mnist", "caltech256"])
    d.add_argument("--from", dest="source", help="mnist: folder with the canonical files (.gz or raw); "
                   "caltech256: the unpacked 256_ObjectCategories folder (required)")
    d.add_argument("--seed", type=int, default=1, help="caltech256: seed of the train/val/test split")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a net from scratch with Caffe's solver")
    t.add_argument("--solver", required=True)
    t.add_argument("--iters", type=int)
    t.add_argument("--out")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--force", action="store_true", help="replace model.caffemodel and train.json in --out")
    _gpu_option(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy and loss on the whole test set")
    e.add_argument("--net", required=True)
    e.add_argument("--weights", required=True)
    e.add_argument("--json", action="store_true")
    _gpu_option(e)
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("inspect", help="per-layer total and remaining parameters")
    i.add_argument("weights")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("convert", help="fork (DNS/OLMP) caffemodel -> stock Caffe caffemodel")
    c.add_argument("input", metavar="IN.caffemodel")
    c.add_argument("output", metavar="OUT.caffemodel")
    c.add_argument("--force", action="store_true", help="replace an existing OUT")
    c.set_defaults(func=cmd_convert)

    x = sub.add_parser("export", help="caffemodel <-> compressed sparse npz (CSR, 8-bit relative indices); "
                       "net + caffemodel -> ONNX")
    how = x.add_mutually_exclusive_group(required=True)
    how.add_argument("--sparse", action="store_true", help="IN.caffemodel -> OUT.npz")
    how.add_argument("--dense", action="store_true", help="IN.npz -> OUT.caffemodel (stock)")
    how.add_argument("--onnx", action="store_true", help="NET.prototxt MODEL.caffemodel OUT.onnx: the net's "
                     "deployment form (TEST phase, data layers as inputs, no loss) for ONNX Runtime")
    x.add_argument("input", metavar="IN")
    x.add_argument("output", metavar="OUT")
    x.add_argument("onnx_out", nargs="?", metavar="OUT.onnx", help="with --onnx: the ONNX file to write")
    x.add_argument("--batch", type=int, metavar="N", help="with --onnx: a fixed batch of N images "
                   "(default: dynamic, the first dimension named N)")
    x.add_argument("--sparse-initializers", action="store_true", help="with --onnx: weights with under a third "
                   "left as ONNX sparse initializers (smaller file; ONNX Runtime makes them dense when it loads)")
    x.add_argument("--net", help="with --dense: check against this net and save the whole net")
    x.add_argument("--force", action="store_true", help="replace an existing OUT")
    x.set_defaults(func=cmd_export)

    n = sub.add_parser("init", help="write an experiment file for your own net (its layers, the paper's settings)")
    n.add_argument("--net", required=True, help="the net prototxt (train_test: TRAIN and TEST Data layers)")
    n.add_argument("--weights", required=True, help="the trained reference caffemodel to prune")
    n.add_argument("--solver", help="the solver that trains the net (default: the one beside the net)")
    n.add_argument("--out", default="exp.toml", help="experiment file to write (default exp.toml)")
    n.add_argument("--force", action="store_true", help="replace an existing --out")
    n.set_defaults(func=cmd_init)

    r = sub.add_parser("prune", help="run the OLMP pipeline of an experiment file")
    r.add_argument("--experiment", required=True, help="TOML file, or a name in scripts/experiments/")
    r.add_argument("--optimizer", choices=_RegistryNames("olmp.search", "OPTIMIZERS"), metavar="NAME",
                   help="%(choices)s (default: the experiment's)")  # a metavar: argparse lists choices only for help
    r.add_argument("--seed", type=int)
    r.add_argument("--weights", help="reference caffemodel (overrides the experiment's)")
    r.add_argument("--out", help="run folder (default runs/<name>/<optimizer or method>-seed<seed>)")
    r.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="change one setting of the experiment (repeatable), e.g. search.delta=0.04")
    r.add_argument("--quiet", action="store_true")
    _gpu_option(r)
    r.set_defaults(func=cmd_prune)

    tp = sub.add_parser("transplant", help="retrain one model's masks on another's weights (masks frozen)")
    tp.add_argument("--experiment", help="TOML file or name: solver, layers, retraining phase")
    tp.add_argument("--masks", help="caffemodel whose masks (or nonzeros) are taken")
    tp.add_argument("--weights", help="caffemodel whose weights are retrained under them")
    tp.add_argument("--out", help="folder for record.json")
    tp.add_argument("--table", metavar="DIR", help="write DIR/mask-transplant.{json,md} from DIR/transplant/*/")
    tp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="change one setting of the experiment (repeatable), e.g. retrain.average_last=5000")
    tp.add_argument("--quiet", action="store_true")
    _gpu_option(tp)
    tp.set_defaults(func=cmd_transplant)

    sw = sub.add_parser("sweep", help="run the runs a sweep file lists as Ray tasks (sweeps/paper.toml: every "
                        "committed run); --dry-run checks the committed records against it")
    sw.add_argument("file", metavar="FILE", help="the sweep file (TOML)")
    sw.add_argument("--only", metavar="PATTERN", help="only the runs whose out matches (a glob, or a folder)")
    sw.add_argument("--max-parallel", type=int, metavar="N", help="runs at a time (default: the local cores)")
    sw.add_argument("--address", metavar="ADDR", help="join the Ray cluster at ADDR (default: start Ray here)")
    sw.add_argument("--dry-run", action="store_true", help="print the plan; exit 2 on a record the file does not "
                    "make, and (complete sweeps) on a listed folder without a record or a record not listed")
    sw.add_argument("--gpu", dest="gpu_tasks", action="store_true", help="each run takes one GPU (Ray's)")
    sw.add_argument("--no-shared-fs", action="store_true", help="workers do not see the driver's folders: "
                    "files travel with the tasks (found out by itself otherwise)")
    sw.add_argument("--status", metavar="FILE", help="the live status table (default ROOT/sweeps/NAME-status.md)")
    sw.add_argument("--from-results", metavar="DIR", help="write FILE listing every run under DIR (from the records)")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="regenerate tables and figures from run records (results/<model>)")
    rp.add_argument("dirs", nargs="*")
    rp.add_argument("--references", metavar="DIR", help="also write references.md beside DIR "
                    "(results/references -> results/references.md) from DIR/<model>/train.json")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", help="results/<model>/comparison.csv + .md: every method, measured and reported")
    cp.add_argument("--model", required=True, choices=["lenet5", "lenet300100"])
    cp.add_argument("--results", help="results folder holding <model>/ (default: the repository's results/)")
    cp.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from olmp import caffe_bridge

    caffe_bridge.set_verbose(args.verbose)
    try:
        caffe_bridge.use_gpu(getattr(args, "gpu", None))
        return args.func(args)
    except (OlmpError, caffe_bridge.CaffeError) as exc:
        print(f"olmp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment: permissions, a full disk, a folder where a file goes
        where = exc.filename2 or exc.filename
        print(f"olmp: error: {where}: {exc.strerror or exc}" if where else f"olmp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("olmp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
