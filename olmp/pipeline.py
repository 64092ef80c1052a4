"""The OLMP pipeline of reference doc §3: pruning and adjusting.

    start from the reference model; one SGD step
    for itr in 0 .. niter-1:
        each layer is "selected" with probability 1 / (1 + gamma_l * itr)
        if itr < prune_stop_iter:
            selected layers get a mask update with their current crate
            if itr % K == 0 and at least 2 layers (search.min_layers) are selected:
                search the crates of the selected layers (others fixed),
                starting from the current crates; apply the best crates
        one SGD step ("adjusting" before prune_stop_iter, "retraining" after)

The loop itself belongs to every method: a threshold policy (olmp/policies/, chosen by
the experiment's ``method``) decides the selection probability and what happens to the
selected layers; ``method = "olmp"`` (the default) is the loop above, its search in
olmp/crate_search.py. The pipeline owns the loop, SGD, the record and the checkpoints.

The run folder holds record.json, pruned.caffemodel (stock Caffe, masked weights
zeroed) and a checkpoint every ``checkpoint_every`` iterations; ``resume=True``
continues a killed run to the same result as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from olmp import (
    atomic,
    averaging,
    caffe_bridge,
    caffe_run,
    checkpoint,
    distill,
    evaluate,
    guarantee,
    prototxt,
    record,
    train,
    weights,
)
from olmp.averaging import WeightAverage
from olmp.candidate import Chunk, chunk_nets
from olmp.config import Experiment
from olmp.crate_search import Scoring
from olmp.errors import OlmpError
from olmp.modes import MODES
from olmp.policies import POLICIES, RunContext
from olmp.thresholds import LayerStats


class Pipeline:
    """One OLMP run of an experiment into a run folder."""

    def __init__(self, exp: Experiment, out: Path, progress: bool = True) -> None:
        self.exp = exp
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        sp = caffe_run.solver_param(exp.solver, exp.seed, exp.pipeline.niter + 1,
                                    snapshot_prefix=self.out / checkpoint.SNAPSHOT / "snap")
        self.net_param = self._eval_net_param = sp.net_param
        self.distill_key = ""
        if exp.retrain.distills:  # a loss layer that adds nothing until retraining registers the teacher
            self.distill_key = str(self.out.resolve())
            sp = distill.student(sp, self.distill_key)
        policy_class = POLICIES[exp.method]
        run = caffe_run.open_run(sp, exp.seed, exp.layers, weights_file=exp.weights,
                                 straight_through=policy_class.straight_through, source=exp.solver,
                                 layers_source=exp.source)
        self.solver, self.net, self.test_net = run.solver, run.net, run.test_net
        self.test_images = run.test_images
        self.data_layer = run.data_layer
        self.types = run.types
        self.reference = run.reference
        self.stats: dict[str, LayerStats] = run.stats  # mu_l, sigma_l: computed once from the reference (dense) model
        self.layers = run.layers
        pb = caffe_bridge.caffe_pb2()
        images = policy_class.evaluation_images(exp)  # a fixed batch of training images, or the minibatch
        if images:
            self.eval_net, self.eval_param = self._validation_net(images), pb.TEST
        else:
            self.eval_net, self.eval_param = self.net, pb.TRAIN
        self.chunks: list[Chunk] = []
        # a TRAIN-phase net with dropout would score a candidate differently at every forward: score through
        # TEST-phase copies of it (the chunk nets) on the same minibatch, as chunks already do
        stochastic = self.eval_param == pb.TRAIN and any(
            lay.type == "Dropout" for lay in prototxt.layers_in_phase(self._eval_net_param, pb.TRAIN))
        if policy_class.scores_candidates and (exp.search.chunks > 1 or stochastic):  # chunk by chunk (candidate.py)
            try:
                self.chunks = chunk_nets(self.eval_net, self._eval_net_param, self.eval_param, exp.search.chunks)
            except ValueError as exc:
                raise OlmpError(str(exc), exp.source) from None
        self.holdout_net: Any = None
        self.holdout_images = 0
        if exp.retrain.holdout_source:
            self.holdout_net, self.holdout_images = self._holdout_net()
        self.average = WeightAverage(self.net) if exp.retrain.averages else None
        self.draws = MODES[exp.mode].draws(exp.seed)
        self.test_batches = 0
        self.record: dict[str, Any] = {}
        self.sgd_seconds = 0.0
        self.search_seconds = 0.0
        self.wall_seconds = 0.0  # over all sessions of a resumed run
        self.rewound = 0  # solver iterations taken back by a learning-rate rewind (the data layer read them)
        self.policy = policy_class(RunContext(exp, self.layers, self.stats, self.types,
                                              Scoring(self.eval_net, self.chunks), self.draws))

    # -- pieces ----------------------------------------------------------------------------
    def _validation_net(self, images: int):  # noqa: ANN202
        """A fixed batch of training images for a steadier accuracy estimate than one minibatch.

        The TEST-phase net reads ``images`` images from the start of the TRAIN
        source once (never the test set); it shares the train net's weights, so masked writes show in both.
        """
        pb = caffe_bridge.caffe_pb2()
        param = pb.NetParameter()
        param.CopyFrom(self.net_param)
        train_data = next(lay for lay in prototxt.layers_in_phase(param, pb.TRAIN) if lay.type == "Data")
        prototxt.check_validation_batch(param, images, self.exp.source)  # a bad setting names the experiment
        for lay in prototxt.layers_in_phase(param, pb.TEST):
            if lay.type == "Data":
                lay.data_param.source = train_data.data_param.source
                lay.data_param.batch_size = images
                lay.transform_param.CopyFrom(train_data.transform_param)
        self._eval_net_param = param
        net = prototxt.make_net(param, "test", source=self.exp.solver)
        net.share_with(self.net)
        # load the batch once, candidates never reload it. The whole net runs: the TEST net has split
        # layers (label -> loss and accuracy) between the data layer and the first prunable layer, and
        # candidates, re-run from a prunable layer, read the split copy of the labels.
        net.forward()
        return net

    def _holdout_net(self) -> tuple[Any, int]:
        """A TEST-phase net over the held-out training images (retrain.holdout_source), sharing the weights.

        Its batch divides the image count, so every evaluation reads each image once and leaves the
        data layer where it found it: a resumed run needs no replay of it.
        """
        import lmdb  # noqa: PLC0415

        src = prototxt.resolve_path(self.exp.retrain.holdout_source)
        try:
            with lmdb.open(str(src), readonly=True, lock=False) as env:
                images = int(env.stat()["entries"])
        except lmdb.Error as exc:
            raise OlmpError(f"retrain.holdout_source {src}: not a readable LMDB ({exc}); run `olmp data mnist`",
                            self.exp.source) from None
        if images == 0:
            raise OlmpError(f"retrain.holdout_source {src} holds no images", self.exp.source)
        pb = caffe_bridge.caffe_pb2()
        param = pb.NetParameter()
        param.CopyFrom(self.net_param)
        for lay in prototxt.layers_in_phase(param, pb.TEST):
            if lay.type == "Data":
                lay.data_param.source = str(src)
                lay.data_param.batch_size = math.gcd(images, lay.data_param.batch_size or 100)
        net = prototxt.make_net(param, "test", source=self.exp.source)
        net.share_with(self.net)
        return net, images

    def holdout(self) -> dict[str, Any] | None:
        """Accuracy of the masked model (W*M) on the held-out training images; None without them."""
        if self.holdout_net is None:
            return None
        with self.layers.masked():
            return evaluate.evaluate_net(self.holdout_net, self.holdout_images, self.exp.retrain.holdout_source)

    def _holdout_accuracy_loss(self) -> tuple[float, float]:
        held = self.holdout()
        if held is None:
            raise OlmpError("no held-out images (retrain.holdout_source)", self.exp.source)
        return float(held["accuracy"]), float(held["loss"])

    def _holdout_accuracy(self) -> float:
        return self._holdout_accuracy_loss()[0]

    def _start_retraining_levers(self) -> None:
        if self.distill_key:  # the dense reference teaches from here on
            distill.activate(self.distill_key, distill.teacher(self.net, self.net_param, self.exp.weights,
                                                               self.exp.retrain, self.exp.source))

    def _guarantee(self, final: dict[str, Any], held_out: dict[str, Any]) -> dict[str, Any]:
        """Restore weights until no held-out loss (olmp/guarantee.py); the model before it is final.caffemodel.

        Short of the target, the run's masks and weights go back to that model: there is no lossless
        model, and pruned.caffemodel is the final one."""
        t0 = time.perf_counter()
        self._save_model("final.caffemodel")
        before = {"ratio": self.ratio(), "test": final, **held_out}
        steps = self.exp.pipeline.niter

        r = self.exp.retrain

        def retrain(n: int) -> None:
            mean = WeightAverage(self.net) if r.guarantee_regrow and r.averages else None
            for k in range(n):
                self.sgd_step(steps)
                if mean and averaging.due(n - 1 - k, r):
                    mean.add(self.layers)
            if mean:  # between regrowth steps too, the model is the mean of the tail's iterates
                mean.apply(self.layers)

        def say(msg: str) -> None:
            if self.progress:
                print(f"olmp: {msg}", file=sys.stderr)

        kept = self.layers.state(), {n: [b.data.copy() for b in self.net.params[n]] for n in self.net.params}
        target = self.record["reference"]["holdout"]["accuracy"]
        if r.guarantee_regrow:
            g = guarantee.regrow_until_lossless(self.layers, r, target, self._holdout_accuracy_loss, retrain,
                                                self.ratio, self._gradient, say)
        else:
            g = guarantee.restore_until_lossless(self.layers, r, target, self._holdout_accuracy_loss, retrain,
                                                 self.ratio, say)
        if not g["reached"]:  # no lossless model: the run delivers its model from before the guarantee
            self.layers.load_state(kept[0])
            for n, blobs in kept[1].items():
                for b, w in zip(self.net.params[n], blobs):
                    b.data[...] = w
            (self.out / "final.caffemodel").unlink()  # pruned.caffemodel is that model, bit for bit
        self.guarantee_seconds = time.perf_counter() - t0
        return {**g, "before": before}

    def _gradient(self) -> dict[str, np.ndarray]:
        """Each prunable layer's weight gradient at W*M, the mean over guarantee.GRADIENT_BATCHES training
        minibatches (read from the solver's data layer; no step is taken)."""
        sums = {n: np.zeros(self.net.params[n][0].data.shape) for n in self.exp.layers}
        with self.layers.masked():
            for _ in range(guarantee.GRADIENT_BATCHES):
                for blobs in self.net.params.values():
                    for b in blobs:
                        b.diff[...] = 0.0  # Caffe adds into the diffs; the solver clears them before its steps
                self.net.forward()
                self.net.backward()
                for n in sums:
                    sums[n] += self.net.params[n][0].diff
        return {n: s / guarantee.GRADIENT_BATCHES for n, s in sums.items()}

    def test(self) -> dict[str, Any]:
        """Test-set accuracy of the masked model (W*M), as saved."""
        with self.layers.masked():
            res = evaluate.evaluate_net(self.test_net, self.test_images, self.exp.solver)
        self.test_batches += math.ceil(self.test_images / self.test_net.blobs[self._test_label()].data.shape[0])
        return res

    def _test_label(self) -> str:
        return evaluate.loss_inputs(self.test_net)[1]

    def batch_accuracy(self) -> float:
        with self.layers.masked():
            self.net.forward(start=min(self.exp.layers, key=list(self.net._layer_names).index))
            logits, labels = evaluate.loss_inputs(self.net)
            return evaluate.batch_accuracy(self.net.blobs[logits].data, self.net.blobs[labels].data)

    def sgd_step(self, itr: int) -> None:
        t0 = time.perf_counter()
        self.solver.step(1)
        self.layers.after_step()  # without straight-through: pruned weights back to exactly 0
        self.sgd_seconds += time.perf_counter() - t0
        why = train.divergence(self.net, self.exp.layers)
        if why:
            kept = (f"the last good checkpoint is kept in {self.out / checkpoint.CHECKPOINT}"
                    if checkpoint.exists(self.out) else "no checkpoint was written yet")
            raise OlmpError(
                f"training diverged at iteration {itr} ({why}); {kept}; "
                "lower base_lr (or a growing learning-rate schedule) in the solver",
                self.exp.solver,
            )

    def _rewind_learning_rate(self) -> None:
        """Retraining lever: restart the solver's learning-rate schedule at iteration 0.

        Learning-rate rewinding (Renda et al. 2020): the retraining phase gets the schedule's early,
        larger rates instead of its tail. Weights and momentum are kept; Caffe holds the iteration
        only in its solver state, so the state is snapshotted, its iteration set to 0 and restored.
        """
        import shutil  # noqa: PLC0415

        snap = self.out / checkpoint.SNAPSHOT
        try:
            checkpoint.take_snapshot(self.solver, snap, self.out)  # a full disk: an error, not an abort
            ss = caffe_bridge.caffe_pb2().SolverState()
            ss.ParseFromString(next(snap.glob("*.solverstate")).read_bytes())
        finally:
            shutil.rmtree(snap, ignore_errors=True)
        self.rewound += int(ss.iter)
        ss.iter = 0
        ss.ClearField("learned_net")  # the live weights stay as they are
        caffe_bridge.restore_solver(self.solver, ss)
        self.record["rewound_at"] = {"iteration": self.exp.pipeline.prune_stop_iter, "solver_iterations": self.rewound}

    def layer_summary(self) -> dict[str, dict[str, int]]:
        return {n: {"total": self.layers.total(n), "remaining": self.layers.remaining(n)} for n in self.exp.layers}

    def ratio(self) -> float:
        return self.layers.total() / max(self.layers.remaining(), 1)

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self, next_itr: int) -> dict[str, Any]:
        return {
            "next_itr": next_itr,
            "rng": self.draws.state(),
            "test_batches": self.test_batches,
            "record": self.record,
            "sgd_seconds": self.sgd_seconds,
            "search_seconds": self.search_seconds,
            "wall_seconds": self.wall_seconds + time.perf_counter() - self._wall0,
            "policy": self.policy.state(),
            **({"rewound": self.rewound} if self.rewound else {}),
        }

    def _save_checkpoint(self, next_itr: int) -> None:
        arrays = self.average.state() if self.average else None
        checkpoint.save(self.out, self.solver, self.layers.state(), self._state(next_itr), arrays)

    def _resume(self) -> int:
        shapes = {k: m.shape for k, m in self.layers.state().items()}
        mask_state, state = checkpoint.load(self.out, self.solver, self.exp.to_dict(), shapes)
        try:
            self.policy.load_state(state["policy"])
        except KeyError as exc:
            raise OlmpError(f"malformed checkpoint state: policy lacks {exc}; remove the checkpoint to start again",
                            self.out / checkpoint.CHECKPOINT / "state.json") from None
        self.layers.load_state(mask_state)
        if self.average:
            shapes = {k: v.shape for k, v in self.average.state().items()}
            self.average.load_state(checkpoint.load_arrays(self.out, shapes))
        self.draws.load_state(state["rng"])
        self.record = state["record"]
        self.sgd_seconds = state["sgd_seconds"]
        self.search_seconds = state["search_seconds"]
        self.wall_seconds = state.get("wall_seconds", 0.0)
        # data layers have no saved cursor: replay them to where the killed run stood
        self.rewound = int(state.get("rewound", 0))
        for _ in range(self.solver.iter + self.rewound):
            self.net.forward(end=self.data_layer)
        for _ in range(state["test_batches"]):
            self.test_net.forward(end=self.test_net._layer_names[0])
        self.test_batches = state["test_batches"]
        return int(state["next_itr"])

    # -- the loop --------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        exp, p, r = self.exp, self.exp.pipeline, self.exp.retrain
        wall0 = self._wall0 = time.perf_counter()
        if resume and checkpoint.exists(self.out):
            start = self._resume()
        else:
            reference_test = self.test()
            reference: dict[str, Any] = {"weights": exp.weights, "test": reference_test,
                         "stats": {n: vars(st) for n, st in self.stats.items()}}
            if self.holdout_net is not None:
                reference["holdout"] = self.holdout()  # the guarantee's target; read before any step
            self.record = record.new_record(exp.to_dict(), reference, searches=self.policy.searches)
            t0 = time.perf_counter()
            info = self.policy.start()  # e.g. a sensitivity scan, on the reference model
            if info is not None:
                info["seconds"] = round(time.perf_counter() - t0, 3)
                self.record["baseline"] = info
            self.sgd_step(-1)  # "start from the reference model; one SGD step"
            start = 0
        bar = tqdm(total=p.niter, initial=start, desc=f"olmp {exp.name} {self.record['optimizer']} s{exp.seed}",
                   unit="it", disable=not self.progress, mininterval=1.0)
        for itr in range(start, p.niter):
            u = self.draws.selection(len(exp.layers))
            selected = [n for n, d in zip(exp.layers, u) if d < self.policy.selection_probability(n, itr)]
            counts = self.record.setdefault("selections", {n: 0 for n in exp.layers})
            for n in selected:
                counts[n] += 1
            if itr < p.prune_stop_iter:
                t0 = time.perf_counter()
                entry = self.policy.prune(itr, selected)
                if entry is not None:  # a search
                    self.record["searches"].append(entry)
                    self.search_seconds += time.perf_counter() - t0
            elif itr == p.prune_stop_iter and p.retrain_lr == "rewind":
                self._rewind_learning_rate()
            if itr == max(start, p.prune_stop_iter):  # retraining begins (or a resumed run is inside it)
                self._start_retraining_levers()
            self.sgd_step(itr)
            if self.average and averaging.due(p.niter - 1 - itr, r):
                self.average.add(self.layers)
            if itr % p.record_every == 0 or itr == p.niter - 1:
                entry = {"iteration": itr, "ratio": self.ratio(), "batch_accuracy": self.batch_accuracy(),
                         "test_accuracy": self.test()["accuracy"], **self.policy.fields()}
                if self.holdout_net is not None:
                    entry["holdout_accuracy"] = self._holdout_accuracy()
                self.record["progress"].append(entry)
                bar.set_postfix(ratio=f"{entry['ratio']:.1f}x", batch=f"{entry['batch_accuracy']:.3f}",
                                test=f"{entry['test_accuracy']:.4f}")
            bar.update(1)
            if (itr + 1) % p.checkpoint_every == 0 and itr + 1 < p.niter:
                self._save_checkpoint(itr + 1)
        bar.close()
        return self._finish(wall0)

    def _save_model(self, name: str) -> None:
        with self.layers.masked():
            weights.save_net(self.net, self.out / name, self.net_param, caffe_bridge.caffe_pb2().TRAIN)

    def _held_out(self) -> dict[str, Any]:
        h = self.holdout()
        return {} if h is None else {"holdout": h}

    def _finish(self, wall0: float) -> dict[str, Any]:
        r = self.exp.retrain
        if self.average and self.average.count:  # the final model is the mean; the last iterate is noted
            self.record["averaging"] = {"snapshots": self.average.count,
                                        "last_iterate": {"test": self.test(), **self._held_out()}}
            self.average.apply(self.layers)
        final = self.test()
        held_out = self._held_out()
        if r.guarantee:
            self.record["guarantee"] = self._guarantee(final, held_out)
            final, held_out = self.test(), self._held_out()
        self._save_model("pruned.caffemodel")
        total, remaining = self.layers.total(), self.layers.remaining()
        wall = time.perf_counter() - wall0  # this session's, the guarantee and the last tests included
        self.record.update({
            "final": {
                "total": total,
                "remaining": remaining,
                "ratio": total / max(remaining, 1),
                "layers": self.layer_summary(),
                **self.policy.fields(),
                "test": final,
                **held_out,
            },
            "seconds": {"sgd": round(self.sgd_seconds, 2), "search": round(self.search_seconds, 2),
                        "this_session_wall": round(wall, 2), "wall": round(self.wall_seconds + wall, 2),
                        **({"guarantee": round(self.guarantee_seconds, 2)} if r.guarantee else {})},
            "finished": True,
        })
        record.write(self.out / "record.json", self.record)
        checkpoint.remove(self.out)  # the record is the result now
        if self.distill_key:  # a process that runs several runs keeps no teacher alive
            distill.deactivate(self.distill_key)
        return self.record


def prune(exp: Experiment, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """``olmp prune``: run (or resume, or just report) one experiment into ``out``."""
    out = Path(out)
    atomic.check_target(out, folder=True)  # every output writable before any work starts
    for name in ("record.json", "pruned.caffemodel"):
        atomic.check_target(out / name)
    with checkpoint.RunLock(out):
        checkpoint.clean(out)  # what a killed run was writing
        rec_path = out / "record.json"
        if rec_path.is_file():
            try:
                rec = record.RunRecord.load(rec_path)
            except OlmpError as exc:
                raise OlmpError(f"{exc}; remove it to run again") from None
            if rec.finished:
                changed = checkpoint.changed_settings(exp.to_dict(), rec.experiment)
                if changed:  # returning it would pass an old result off as the requested one
                    raise OlmpError(f"holds a finished run made with other settings ({', '.join(changed)}); "
                                    "choose another --out, or remove the folder to run again", out)
                return rec.to_dict()
        if checkpoint.exists(out) and not resume:
            raise OlmpError("holds a checkpoint of an unfinished run; pass --resume or choose another --out", out)
        if resume and not checkpoint.exists(out):
            print(f"olmp: note: --resume: {out} holds no checkpoint to resume; starting a new run", file=sys.stderr)
        return Pipeline(exp, out, progress).run(resume=resume)
