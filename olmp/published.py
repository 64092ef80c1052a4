"""The published numbers this reproduction is measured against, in one place (reference doc §3, §5, §6, §10).

The side-by-side table, the method comparison, the seed distributions and the frontier all read
them from here, so a number quoted in one report cannot disagree with the same number in another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMES = {"lenet300100": "LeNet-300-100", "lenet5": "LeNet-5", "caffenet_caltech256": "CaffeNet (Caltech-256)"}

# the dense reference models of the OLMP paper (reference doc §3)
REFERENCE_ACCURACY = {"lenet300100": 0.9773, "lenet5": 0.9909}


@dataclass(frozen=True)
class Published:
    """A result reported by its authors, not measured here."""

    label: str  # as drawn on the frontier figure
    ratio: float  # as published
    test_accuracy: float | None  # None: no accuracy published beside the ratio
    reference_accuracy: float | None
    citation: str
    method: str | None = None  # the comparison's method name, for the methods the comparison lists
    note: str = ""  # the comparison's note
    remaining: int | None = None  # parameters kept, as published (or counted in the released file)
    total: int | None = None
    layers: dict[str, float] = field(default_factory=dict)  # remaining % per layer, as published
    file: str | None = None  # the released caffemodel (external-models/<file>.caffemodel): exact counts
    file_is_published: bool = False  # the published accuracies are the released file's own

    @property
    def compared_accuracies(self) -> tuple[float | None, float | None]:
        """The comparison's (test, reference) accuracy: none for a released file the accuracies are not of."""
        if self.file and not self.file_is_published:
            return None, None
        return self.test_accuracy, self.reference_accuracy

    @property
    def compared_ratio(self) -> float:
        """The comparison's ratio: counted from a released file's exact counts, else as published."""
        if self.file and self.remaining and self.total:
            return round(self.total / self.remaining, 2)
        return self.ratio


_RELEASED_NCS = "; the released scripts' NCS degenerated to sampling around the current crates (reference doc §4)"

# The OLMP paper's released models (reference doc §5): what every run is compared with.
OLMP = {
    "lenet300100": Published(
        "paper (released model)", 113.5, 0.9782, REFERENCE_ACCURACY["lenet300100"],
        "Li et al., OLMP, IJCAI 2018: the released model", method="olmp-ncs",
        note=f"Li et al., IJCAI 2018: released model (reference doc §5){_RELEASED_NCS}",
        remaining=2349, total=266_610, layers={"ip1": 0.75, "ip2": 1.58, "ip3": 10.1},
        file="lenet300100_olmp_compressed", file_is_published=True),
    "lenet5": Published(
        "paper (released model)", 297.7, 0.9909, REFERENCE_ACCURACY["lenet5"],
        "Li et al., OLMP, IJCAI 2018: the released model", method="olmp-ncs",
        note="Li et al., IJCAI 2018: released model, keeps the reference accuracy (reference doc §5)" + _RELEASED_NCS,
        remaining=1448, total=431_080, layers={"conv1": 14.0, "conv2": 0.77, "ip1": 0.20, "ip2": 7.4},
        file="lenet5_olmp_compressed", file_is_published=True),
}

# The authors' seeds (reference doc §9): seed -> (the delta they noted, None where the script's; the ratio noted)
AUTHORS_SEEDS: dict[str, dict[int, tuple[float | None, float]]] = {
    "lenet300100": {961449: (0.08, OLMP["lenet300100"].ratio), 981118: (0.3, 112.0)},
    "lenet5": {981118: (0.05, OLMP["lenet5"].ratio), 515769: (None, 185.0), 78011: (0.05, 127.0),
               430000: (None, 150.0), 93306: (0.04, 124.0)},
}

_DNS = "Guo et al., Dynamic Network Surgery for Efficient DNNs, NIPS 2016, Table 1"
_DNS_NOTE = "Guo et al., NIPS 2016 (Dynamic Network Surgery): released model (reference doc §6)"
_DC = ("Han et al., Learning both Weights and Connections for Efficient Neural Networks, NIPS 2015 (the "
       "pruning stage of Deep Compression)")
_DC_NOTE = "Han et al., NIPS 2015 (pruning stage of Deep Compression)"
_SVD = "Molchanov et al., Variational Dropout Sparsifies Deep Neural Networks, ICML 2017, Table 1"
_SWS = "Ullrich et al., Soft Weight-Sharing for Neural Network Compression, ICLR 2017, Table 1"
_GSM = "Ding et al., Global Sparse Momentum SGD for Pruning Very Deep Neural Networks, NeurIPS 2019"

# Other methods' published results (reference doc §6, §10), in the frontier's order.
OTHERS: dict[str, tuple[Published, ...]] = {
    "lenet5": (
        Published("DNS", 108.0, 1 - 0.0091, 1 - 0.0091, f"{_DNS}: error 0.91% -> 0.91%", method="dns",
                  note=_DNS_NOTE, remaining=3993, total=431_080, file="lenet5_dns_sparse"),
        Published("DC", 12.0, 1 - 0.0077, 1 - 0.0080, f"{_DC}: error 0.80% -> 0.77%", method="deep-compression",
                  note=f"{_DC_NOTE}: 431K -> 36K, error 0.80% -> 0.77%, counts rounded as published (reference doc §6)",
                  remaining=36_000, total=431_000, layers={"conv1": 66, "conv2": 12, "ip1": 8, "ip2": 19}),
        Published("SVD", 280.0, 1 - 0.0075, None, f"{_SVD}: error 0.75%"),
        Published("SWS", 200.0, 1 - 0.0097, 1 - 0.0088,
                  f"{_SWS}: 0.5% of the weights kept (about 200x), error 0.88% -> 0.97%"),
        Published("GSM", 300.0, None, None, f"{_GSM}: 300x"),
        Published("GSM", 125.0, None, None, f"{_GSM}: 125x"),
        Published("AutoPrune", 310.0, None, None, "Xiao et al., AutoPrune: Automatic Network Pruning by "
                  "Regularizing Auxiliary Parameters, NeurIPS 2019, abstract: 310x \"without accuracy drop\""),
        Published("Progressive ADMM", 246.0, None, None, "Ye et al., progressive ADMM pruning, arXiv 1903.09769: "
                  "246x, \"(almost) zero accuracy loss\""),
    ),
    "lenet300100": (
        Published("DNS", 56.0, 1 - 0.0199, 1 - 0.0228, f"{_DNS}: error 2.28% -> 1.99%", method="dns",
                  note=_DNS_NOTE, remaining=4988, total=266_610, file="lenet300100_dns_sparse"),
        Published("DC", 12.0, 1 - 0.0159, 1 - 0.0164, f"{_DC}: error 1.64% -> 1.59%", method="deep-compression",
                  note=f"{_DC_NOTE}: 267K -> 22K, error 1.64% -> 1.59%, counts rounded as published (reference doc §6)",
                  remaining=22_000, total=267_000, layers={"ip1": 8, "ip2": 9, "ip3": 26}),
        Published("SVD", 68.0, 1 - 0.0192, None, f"{_SVD}: error 1.92%"),
        Published("SWS", 23.0, 1 - 0.0194, 1 - 0.0189,
                  f"{_SWS}: 4.3% of the weights kept (about 23x), error 1.89% -> 1.94%"),
        Published("GSM", 60.0, None, None, f"{_GSM}: 60x"),
    ),
}


def compared(model: str) -> list[Published]:
    """The published rows of the method comparison: OLMP's released model, then DC and DNS."""
    others = {p.method: p for p in OTHERS.get(model, ()) if p.method}
    return [OLMP[model], others["deep-compression"], others["dns"]]
