"""olmp: Optimization based Layer-wise Magnitude-based Pruning (IJCAI 2018) on real Caffe."""

__version__ = "0.1.0"
