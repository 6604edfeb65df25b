"""Which datasets there are (names, classes, normalisation statistics) and where a prepared
tfds dataset is read from: ``data_dir`` (``TFDS_DATA_DIR``). A dataset that is not prepared there
is downloaded and prepared through tfds (`jaxquant.data.prepare`) when the machine is online;
offline, or with ``JAXQUANT_NO_DOWNLOAD=1``, it raises `DatasetNotFoundError` saying how to
build it (``jaxquant data prepare NAME``, from a folder with its archives offline). ImageNet is
never downloaded."""

from __future__ import annotations

import os
import pathlib

from jaxquant.errors import DatasetNotFoundError, JaxquantError

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
NO_DOWNLOAD_ENV = "JAXQUANT_NO_DOWNLOAD"  # "1": a dataset that is not prepared is an error
PREPARE_HINT = (
    "jaxquant data prepare {name} --data-dir DATA_DIR (online) or "
    "jaxquant data prepare {name} --data-dir DATA_DIR --manual-dir FOLDER_WITH_ARCHIVES"
)
BUILD_HINT = {
    name: PREPARE_HINT.format(name=name)
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")
}
BUILD_HINT["imagenet2012"] = (  # never downloaded: its archives are fetched by hand
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


def downloads_allowed() -> bool:
    """False when ``$JAXQUANT_NO_DOWNLOAD`` is set (to anything but "" or "0")."""
    return os.environ.get(NO_DOWNLOAD_ENV, "") in ("", "0")


def _not_prepared(name: str, data_dir: str, reason: str = "") -> DatasetNotFoundError:
    hint = BUILD_HINT.get(name, PREPARE_HINT.format(name=name))
    return DatasetNotFoundError(
        f"dataset {name!r} is not prepared in {data_dir}"
        f"{f' and was not downloaded ({reason})' if reason else ''}; build it: "
        f"{hint.replace('DATA_DIR', data_dir)}; or set --config.data_dir / TFDS_DATA_DIR to a "
        "folder that has it"
    )


def _download(name: str, data_dir: str, download: bool | None) -> None:
    """Prepare ``name`` in ``data_dir`` through tfds (array_record), or raise `_not_prepared`
    with the reason it could not be downloaded."""
    if name in STREAMING:
        raise _not_prepared(name, data_dir, "its archives are only available by hand")
    if not (downloads_allowed() if download is None else download):
        raise _not_prepared(
            name, data_dir, f"downloads are off: {NO_DOWNLOAD_ENV}" if download is None else ""
        )
    from jaxquant.data.prepare import prepare

    try:
        prepare(name, data_dir)
    except JaxquantError as e:
        raise _not_prepared(name, data_dir, getattr(e, "reason", str(e))) from e


def _open_source(name: str, data_dir: str, split: str, download: bool | None = None):
    """``tfds.data_source`` of one split. A dataset that is not prepared is downloaded first
    (``download``: None follows ``$JAXQUANT_NO_DOWNLOAD``); a clear error when it cannot be."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types here
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            _download(name, data_dir, download)
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        raise DatasetNotFoundError(
            f"dataset {name!r} in {data_dir} cannot be read by index ({str(e).splitlines()[0]}); "
            f"rebuild it in the array_record format: delete {builder.data_path}, then "
            f"jaxquant data prepare {name} --data-dir {data_dir}"
        ) from e
