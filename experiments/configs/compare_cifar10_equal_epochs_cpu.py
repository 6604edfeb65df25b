r"""`compare_cifar10_cpu.py` at one budget: every trained entry 4 epochs (the base's), so the rows
differ by method, not by training time. LSQ + Bin Regularization keeps CE only for the first
third (`binreg.start_epochs=-1`: the paper's 30 of 90 epochs), Any-Precision and MBQuant keep
their optimizers; everything else is `compare_cifar10_cpu.py`'s. The dedicated LSQ, Vertical
Layering, FP and PTQ runs are the same configs as there.
  jaxquant compare experiments/configs/compare_cifar10_equal_epochs_cpu.py \
      --workdir runs/compare_cifar10_equal_epochs --config.base.data_dir=/tmp/tfds_data
"""

from compare_cifar10_cpu import get_config as compare_config  # a sibling config


def get_config():
    c = compare_config()
    c.title = "cifar10, small_cnn, 4 epochs per run"
    epochs = c.base.epochs
    entries = []
    for entry in c.entries:
        overrides = dict(entry.get("overrides", {}))
        if "epochs" in overrides:
            overrides["epochs"] = epochs
        if entry["name"] == "lsq_br":
            overrides["binreg.start_epochs"] = -1.0  # a third of the run
        entries.append({**entry, "overrides": overrides} if entry["kind"] == "train" else entry)
    c.entries = tuple(entries)
    return c
