"""Which datasets there are (names, classes, normalisation statistics) and where a prepared
tfds dataset is read from: ``data_dir`` (``TFDS_DATA_DIR``), never a download. The project's
machines are offline, so a dataset that is not prepared raises `DatasetNotFoundError` saying how
to build it."""

from __future__ import annotations

import os
import pathlib

from jaxquant.errors import DatasetNotFoundError

IN_MEMORY = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
STREAMING = ("imagenet2012",)
STREAM_SPLITS = {"imagenet2012": ("train", "validation")}  # (training, evaluation) split

# Per-channel mean and std of the training images, in [0, 1] units.
NORMALIZATION = {
    "digits": ((0.3032,), (0.3826,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NUM_CLASSES = {
    "digits": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "imagenet2012": 1000,
}
BUILD_HINT = {
    name: f"python ../shared/data/prepare_tfds.py DATA_DIR {name}"
    for name in ("mnist", "fashion_mnist", "cifar10")
}
BUILD_HINT["imagenet2012"] = (
    "tfds build imagenet2012 --data_dir DATA_DIR --manual_dir <folder with ILSVRC2012_img_*.tar> "
    "--file_format array_record"
)


def default_data_dir(data_dir: str | None = None) -> str:
    """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else tfds's default
    (~/tensorflow_datasets)."""
    return (
        data_dir
        or os.environ.get("TFDS_DATA_DIR")
        or str(pathlib.Path.home() / "tensorflow_datasets")
    )


def _not_prepared(name: str, data_dir: str) -> DatasetNotFoundError:
    hint = BUILD_HINT.get(
        name, f"prepare it with tfds on a machine with internet and copy it to {data_dir}"
    )
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared in {data_dir} and this machine cannot download it; "
        f"build it ({hint.replace('DATA_DIR', data_dir)}) or set --config.data_dir / TFDS_DATA_DIR "
        "to a folder that has it"
    )


def _open_source(name: str, data_dir: str, split: str):
    """``tfds.data_source`` of one split without any download attempt; a clear error when
    missing."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types here
        if not tfds.builder(name, data_dir=data_dir).is_prepared():
            raise _not_prepared(name, data_dir) from e
        hint = BUILD_HINT.get(name, "prepare_tfds.py builds it so").replace("DATA_DIR", data_dir)
        raise DatasetNotFoundError(
            f"dataset {name!r} in {data_dir} cannot be read by index ({str(e).splitlines()[0]}); "
            f"rebuild it in the array_record format ({hint})"
        ) from e
