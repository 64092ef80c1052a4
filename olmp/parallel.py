"""A search's population scored in parallel worker processes (issue 6), with the same results as one.

Each worker holds its own copy of the evaluation net, built from the same NetParameter with the
data layers turned into Input layers: the parent hands it the batch, so no worker reads a data
source. At the start of every search the parent sends what a candidate's score depends on (the
dense weights, the live masks, the batch, the selected layers); the worker then runs the same
``CandidateEvaluator`` as the parent. Caffe's CPU forward with one BLAS thread is deterministic
and a candidate's score is a pure function of its crates, so scores do not depend on which
process computed them, nor in which order: N workers give the result of one.

Workers are spawned, not forked: the parent runs Caffe's data prefetch threads, and a fork
copies their locks but not the threads. A spawned worker costs about a second once per run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any, Sequence

import numpy as np

from olmp.candidate import CandidateEvaluator, Evaluation, chunk_nets, first_computed


def _worker(conn: Any, net_param_bytes: bytes, layer_names: list[str], chunks: int) -> None:
    """A worker's loop: ("search", state) opens a session, ("eval", xs) scores, ("end",) closes it."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from olmp import caffe_bridge  # noqa: PLC0415
    from olmp.adjusting import MaskedLayers  # noqa: PLC0415

    param = caffe_bridge.caffe_pb2().NetParameter()
    param.ParseFromString(net_param_bytes)
    net = caffe_bridge.make_net(param, "test")  # the phase is already chosen: Input layers, no filters
    layers = MaskedLayers(net, layer_names)
    parts = chunk_nets(net, param, caffe_bridge.caffe_pb2().TEST, chunks) if chunks > 1 else []
    session = evaluator = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone (even SIGKILLed): nothing to report to
            return
        if msg[0] == "search":
            state = msg[1]
            for name, blobs in state["params"].items():
                for blob, value in zip(net.params[name], blobs):
                    blob.data[...] = value
            for name, masks in state["masks"].items():
                for live, value in zip(layers.masks[name], masks):
                    live[...] = value
            for top, value in state["inputs"].items():
                net.blobs[top].data[...] = value
            net.forward(start=first_computed(net))  # the activations below the prunable layers, once per search
            evaluator = CandidateEvaluator(net, layers, state["stats"], state["selected"], state["delta"], parts)
            session = evaluator.session()
            session.__enter__()
            conn.send(("ready", evaluator.reference_accuracy))
        elif msg[0] == "eval":
            conn.send(("scores", [evaluator(x) for x in msg[1]]))
        elif msg[0] == "end":
            session.__exit__(None, None, None)
            session = evaluator = None
            conn.send(("ended",))
        else:  # "quit"
            conn.close()
            return


class WorkerPool:
    """N-1 spawned workers plus the parent: ``map`` scores a population in order."""

    def __init__(self, workers: int, net: Any, net_param: Any, phase: int, layer_names: Sequence[str],
                 chunks: int = 1) -> None:
        from olmp import prototxt  # noqa: PLC0415

        self.net = net
        data_tops = [t for lay in prototxt.layers_in_phase(net_param, phase) if not lay.bottom for t in lay.top]
        self.inputs = data_tops
        param = prototxt.input_net_param(net_param, phase, {t: tuple(net.blobs[t].data.shape) for t in data_tops})
        ctx = mp.get_context("spawn")
        self._conns = []
        self._procs = []
        for _ in range(workers - 1):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, param.SerializeToString(), list(layer_names), chunks),
                               daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self.local: CandidateEvaluator | None = None

    def start(self, local: CandidateEvaluator) -> None:
        """Call inside ``local.session()``: the workers open the same session on their copies."""
        self.local = local
        lay = local.layers
        state = {
            "params": {n: lay.dense(n) if n in lay.names else [np.array(b.data) for b in self.net.params[n]]
                       for n in self.net.params},  # the prunable layers' dense W, the others as they are
            "masks": {n: lay.masks[n] for n in lay.names},
            "inputs": {t: self.net.blobs[t].data for t in self.inputs},
            "stats": local.stats, "selected": local.selected, "delta": local.delta,
        }
        for c in self._conns:
            c.send(("search", state))
        for c in self._conns:
            _, acc = c.recv()
            if acc != local.reference_accuracy:  # the copies must see exactly what the parent sees
                raise RuntimeError(f"worker's batch accuracy {acc} != parent's {local.reference_accuracy}")

    def map(self, xs: Sequence[np.ndarray]) -> list[Evaluation]:
        """Scores of ``xs`` in order: contiguous shares to the workers, the first share here."""
        assert self.local is not None
        shares = np.array_split(np.arange(len(xs)), len(self._conns) + 1)
        for c, idx in zip(self._conns, shares[1:]):
            c.send(("eval", [xs[i] for i in idx]))
        out = [self.local(xs[i]) for i in shares[0]]
        for c in self._conns:
            out += c.recv()[1]
        self.local.evaluations += len(xs) - len(shares[0])
        return out

    def end(self) -> None:
        for c in self._conns:
            c.send(("end",))
        for c in self._conns:
            c.recv()
        self.local = None

    def close(self) -> None:
        for c, p in zip(self._conns, self._procs):
            try:
                c.send(("quit",))
            except (BrokenPipeError, OSError):
                pass
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        self._conns, self._procs = [], []
