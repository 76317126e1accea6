"""Data: packed bags, and one module per source (MIL benchmark files, MNIST and MNIST-bags, histology images)."""
from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "pack": ".bags", "unpack": ".bags",
    "MILDataset": ".benchmarks", "load_benchmark": ".benchmarks", "load_dataset": ".benchmarks",
    "load_mil_csv": ".benchmarks", "load_mil_mat": ".benchmarks",
    "read_mnist": ".mnist",
    "MNISTBags": ".mnist_bags", "load_mnist_bags": ".mnist_bags", "make_mnist_bags": ".mnist_bags",
    "PatchBag": ".histology", "load_colon_crc": ".histology", "load_ucsb_breast": ".histology",
    "InstanceBudgetSampler": ".samplers",
})
