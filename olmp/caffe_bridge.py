"""The only module that imports caffe.

Caffe's glog output floods a terminal, so its level is fixed before the first
import; ``set_verbose`` must therefore be called before anything touches caffe.
"""

from __future__ import annotations

import os
from types import ModuleType

_caffe: ModuleType | None = None


def set_verbose(verbose: bool) -> None:
    """Show Caffe's own INFO log (``--verbose``); default shows errors only."""
    if _caffe is not None:
        return
    os.environ["GLOG_minloglevel"] = "0" if verbose else os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2")


def caffe() -> ModuleType:
    """Import pycaffe on first use, CPU mode."""
    global _caffe
    if _caffe is None:
        os.environ.setdefault("GLOG_minloglevel", os.environ.get("OLMP_GLOG_MINLOGLEVEL", "2"))
        try:
            import caffe as _c  # noqa: PLC0415
        except ImportError as exc:
            from olmp.errors import OlmpError

            raise OlmpError(f"pycaffe is not importable ({exc}); run `make setup`") from exc
        _c.set_mode_cpu()
        _caffe = _c
    return _caffe


def caffe_pb2() -> ModuleType:
    """Caffe's protobuf messages (NetParameter, SolverParameter, Datum, ...)."""
    caffe()
    from caffe.proto import caffe_pb2 as pb  # noqa: PLC0415

    return pb


def layer_types() -> list[str]:
    return list(caffe().layer_type_list())


def _with_temp_prototxt(message: object, build):  # noqa: ANN001, ANN202
    """pycaffe only takes file names: hand it a resolved copy, then remove it."""
    import tempfile  # noqa: PLC0415

    from google.protobuf import text_format  # noqa: PLC0415

    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", prefix="olmp-", delete=True) as fh:
        fh.write(text_format.MessageToString(message))
        fh.flush()
        return build(fh.name)


def make_net(net_param: object, phase: str = "test"):  # noqa: ANN201
    """A caffe.Net from a checked NetParameter (see olmp.prototxt.read_net)."""
    c = caffe()
    ph = c.TEST if phase == "test" else c.TRAIN
    return _with_temp_prototxt(net_param, lambda f: c.Net(f, ph))


def make_solver(solver_param: object):  # noqa: ANN201
    """A Caffe solver of the prototxt's type from a checked SolverParameter."""
    c = caffe()
    return _with_temp_prototxt(solver_param, c.get_solver)


def set_random_seed(seed: int) -> None:
    caffe().set_random_seed(int(seed))
