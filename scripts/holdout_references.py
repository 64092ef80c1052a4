"""How much a reference's held-out accuracy overstates its test accuracy when it trained on those images.

    .venv/bin/python scripts/holdout_references.py [--out results/references/holdout.md]

The held-out split is the last 5,000 training images (data/mnist/mnist_holdout5k_lmdb). The references
the paper's runs start from trained on all 60,000, those images included; the lossless runs start from
references trained on the other 55,000 (results/references/<model>_holdout). For each, the accuracy on
the held-out images and on the 10,000 test images, from the committed caffemodels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from olmp import atomic, caffe_bridge, evaluate, prototxt, tables, weights  # noqa: E402
from olmp.published import NAMES  # noqa: E402

HOLDOUT = "data/mnist/mnist_holdout5k_lmdb"
MODELS = ("lenet300100", "lenet5")


def accuracy(net_path: str, model: Path, source: str | None) -> float:
    param = prototxt.read_net(net_path)
    pb = caffe_bridge.caffe_pb2()
    if source is not None:
        for lay in prototxt.layers_in_phase(param, pb.TEST):
            if lay.type == "Data":
                lay.data_param.source = str(prototxt.resolve_path(source))
    images = evaluate.test_set_size(param)
    net = prototxt.make_net(param, "test", source=net_path)
    weights.load_into(net, weights.read_caffemodel(model))
    return float(evaluate.evaluate_net(net, images)["accuracy"])


def references() -> list[tuple[str, str, str]]:
    """(model, reference folder, what it trained on), in the table's order."""
    return [(model, ref, seen) for model in MODELS for ref, seen in (
        (model, "all 60,000 (held-out images included)"), (f"{model}_holdout", "the first 55,000"))]


def markdown(measured: dict[str, tuple[float, float]]) -> str:
    """The report from each reference's (held-out, test) accuracy; apart from the measuring, so the table
    can be checked on fixed numbers without evaluating eight nets."""
    lines = ["# The held-out split and the references", "",
             "Made by `.venv/bin/python scripts/holdout_references.py`. Held-out: the last 5,000 MNIST training "
             "images (indices 55,000-59,999); test: the 10,000 test images. A reference that trained on the "
             "held-out images scores them higher than unseen images: the gap is what its held-out accuracy "
             "would overstate. The lossless runs therefore start from references trained without them, and "
             "their no-loss target is that reference's held-out accuracy.", "",
             *tables.markdown(["model", "reference", "trained on", "held-out accuracy", "test accuracy",
                               "held-out minus test"], (
                 [NAMES[model], f"results/references/{ref}", seen, f"{100 * measured[ref][0]:.2f}%",
                  f"{100 * measured[ref][1]:.2f}%", f"{100 * (measured[ref][0] - measured[ref][1]):+.2f} points"]
                 for model, ref, seen in references()))]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "results" / "references" / "holdout.md"))
    args = ap.parse_args()
    measured = {}
    for model, ref, _ in references():
        path = REPO / "results" / "references" / ref / "model.caffemodel"
        net = f"models/{model}/train_test.prototxt"
        measured[ref] = (accuracy(net, path, HOLDOUT), accuracy(net, path, None))
    text = markdown(measured)
    atomic.write_text(Path(args.out), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
