"""Cross-checks against the authors' released caffemodels (skipped when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from olmp import evaluate, weights


@pytest.mark.parametrize(
    "model,net,accuracy",
    [
        ("lenet5_reference_dns", "models/lenet5/train_test.prototxt", 0.9909),
        ("lenet300100_reference_olmp", "models/lenet300100/train_test.prototxt", 0.9773),
    ],
)
def test_released_references_evaluate_as_published(
    external_models: Path, mnist_dir: Path, model: str, net: str, accuracy: float
) -> None:
    """Same accuracy as the papers' references: our MNIST preprocessing matches the authors'."""
    res = evaluate.evaluate(net, external_models / f"{model}.caffemodel")
    assert res["images"] == 10_000
    assert res["accuracy"] == pytest.approx(accuracy, abs=5e-5)


@pytest.mark.parametrize(
    "model,ratio,remaining",
    [
        ("lenet5_olmp_compressed", 297.71, 1448),
        ("lenet300100_olmp_compressed", 113.50, 2349),
        ("lenet5_dns_sparse", 107.96, 3993),
        ("lenet300100_dns_sparse", 53.45, 4988),
    ],
)
def test_released_fork_models_inspect(external_models: Path, model: str, ratio: float, remaining: int) -> None:
    info = weights.summary(weights.read_caffemodel(external_models / f"{model}.caffemodel"))
    assert info["remaining"] == remaining
    assert info["ratio"] == pytest.approx(ratio, abs=0.005)
