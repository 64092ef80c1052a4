"""Threshold policies: OLMP and the baselines it is compared with (reference doc §3, §6).

A baseline is the OLMP pipeline (masks, Caffe's solver, records, checkpoints, resume) with a
different policy deciding the masks; the interface is in olmp/policies/base.py. A new policy
is one new file here plus one line in POLICIES (docs/architecture.md has a worked example).

| method | threshold | when masks change | pruned weights |
|---|---|---|---|
| olmp | mu_l + crate_l sigma_l, crates searched (§3) | selected layers, prob 1/(1+gamma_l itr) | learn, splice |
| dns | mu_l + crate_l sigma_l, fixed crates (scan) | each layer with prob (1+gamma itr)^-power | learn, splice |
| deep-compression | quality_l x std(weights_l) (scan) | ``rounds`` rounds before prune_stop_iter | stay 0 |
| global-magnitude | one magnitude over all layers | ``rounds`` rounds, sparsity ramped | stay 0 |
| uniform | the same sparsity in every layer | ``rounds`` rounds, sparsity ramped | stay 0 |

Every method gets the same ``niter`` SGD steps as OLMP (the same adjusting budget). One command
per run (README, "Baselines"):

    olmp prune --experiment lenet5_dc --seed 1 --out results/lenet5/deep-compression-seed1 --resume
"""

from __future__ import annotations

from olmp.policies.base import Policy, RunContext
from olmp.policies.deep_compression import DeepCompression
from olmp.policies.dns import DNS
from olmp.policies.olmp import OLMP
from olmp.policies.sparsity import GlobalMagnitude, Uniform

POLICIES: dict[str, type[Policy]] = {
    "olmp": OLMP,
    "dns": DNS,
    "deep-compression": DeepCompression,
    "global-magnitude": GlobalMagnitude,
    "uniform": Uniform,
}

__all__ = ["POLICIES", "Policy", "RunContext"]
