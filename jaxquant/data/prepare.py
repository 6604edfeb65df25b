"""Build a tensorflow-datasets dataset in ``data_dir``: ``jaxquant data prepare NAME``.

Online, tfds downloads the dataset's archives and prepares it, as ``tfds.load`` would. Offline,
``manual_dir`` is a folder with the archives, named as tfds names them (``mnist``:
``train-images-idx3-ubyte.gz`` and three more; ``cifar10``: ``cifar-10-binary.tar.gz``). Archives
whose sha256 is the one tfds registered are read and verified by tfds as usual. A re-compressed or
rebuilt archive (same content, other bytes) is refused unless ``verify_checksums=False``: then
each archive goes into tfds's download cache under its registered checksum, which tfds takes as
already verified, and one printed line says how many archives differ.

Building needs TensorFlow (the ``tf`` extra); reading an array_record build with
``tfds.data_source`` does not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import time
import urllib.parse

from jaxquant.data.sources import default_data_dir
from jaxquant.errors import ConfigError, DatasetNotFoundError

FILE_FORMATS = ("array_record", "tfrecord")
REACHABLE_TIMEOUT_S = 5.0


def prepare(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | os.PathLike | None = None,
    file_format: str = "array_record",
    verify_checksums: bool = True,
) -> dict[str, int]:
    """Build tfds dataset ``name`` in ``data_dir`` (default ``$TFDS_DATA_DIR`` or
    ~/tensorflow_datasets) and return its examples per split. Without ``manual_dir`` tfds
    downloads it; with it, it is built offline from the archives in that folder. A dataset
    already prepared in ``file_format`` is left as it is. Prints one line when ready."""
    if name == "digits":
        print("digits: bundled with scikit-learn, nothing to prepare", flush=True)
        return {}
    if file_format not in FILE_FORMATS:
        raise ConfigError(f"file format {file_format!r} is not one of {FILE_FORMATS}")
    data_dir = default_data_dir(data_dir)
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        built = builder.info.file_format
        built = getattr(built, "value", built) or "tfrecord"
        if built != file_format:
            raise ConfigError(
                f"{name} is already prepared in {builder.data_path} as {built}; delete that "
                f"folder to rebuild it as {file_format}"
            )
        return _ready(name, builder, "already prepared", None)
    if importlib.util.find_spec("tensorflow") is None:
        raise ConfigError(
            f"building {name} needs TensorFlow (tfds builds with it): pip install 'jaxquant[tf]'"
        )
    import tensorflow_datasets as tfds

    start = time.perf_counter()
    if manual_dir is None:
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            raise DatasetNotFoundError(
                f"{name} is never downloaded: fetch its files by hand and pass their folder as "
                f"--manual-dir (see the tfds catalog page of {name})"
            )
        _check_reachable(builder, data_dir)
        config = tfds.download.DownloadConfig()
        _build(builder, None, config, file_format, data_dir)
    else:
        # The archives' copies and extractions are only needed while building.
        try:
            pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
            scratch = pathlib.Path(tempfile.mkdtemp(prefix=".jaxquant-prepare-", dir=data_dir))
        except OSError as e:
            raise ConfigError(f"cannot write to --data-dir {data_dir}: {e.strerror}") from e
        try:
            config = _offline_config(builder, pathlib.Path(manual_dir), scratch, verify_checksums)
            _build(builder, scratch, config, file_format, data_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _ready(name, builder, "ready", time.perf_counter() - start)


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        from jaxquant.data.sources import IN_MEMORY, STREAMING

        raise DatasetNotFoundError(
            f"unknown dataset {name!r}: tensorflow-datasets has no such dataset "
            f"(this project's: {', '.join(IN_MEMORY + STREAMING)})"
        ) from e


def _archives(builder) -> dict[str, object]:
    """The dataset's registered archives, ``{url: UrlInfo}`` (those tfds knows a file name of)."""
    return {url: info for url, info in (builder.url_infos or {}).items() if info.filename}


def _check_reachable(builder, data_dir: str) -> None:
    """Fail at once when the archives' hosts do not answer: tfds would retry for minutes."""
    import requests

    hosts = {}
    for url in _archives(builder) or builder.url_infos or {}:
        hosts.setdefault(urllib.parse.urlsplit(url).hostname, url)
    for host, url in hosts.items():
        try:
            requests.head(url, timeout=REACHABLE_TIMEOUT_S, allow_redirects=False)
        except requests.RequestException as e:
            files = ", ".join(sorted(i.filename for i in _archives(builder).values()))
            reason = f"no network: {host} does not answer ({type(e).__name__})"
            raise _error(
                f"cannot download {builder.name}, {reason}; offline, put its archives "
                f"({files or 'see the tfds catalog'}) in a folder and run `jaxquant data prepare "
                f"{builder.name} --data-dir {data_dir} --manual-dir FOLDER`",
                reason,
            ) from e


def _offline_config(builder, manual_dir: pathlib.Path, scratch: pathlib.Path, verify: bool):
    """The DownloadConfig that builds from ``manual_dir`` without touching the network."""
    import tensorflow_datasets as tfds

    name = builder.name
    if not manual_dir.is_dir():
        raise DatasetNotFoundError(f"--manual-dir {manual_dir} is not a folder")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # e.g. imagenet2012: the builder reads the folder
        return tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
    archives = _archives(builder)
    if not archives:
        raise DatasetNotFoundError(
            f"tensorflow-datasets lists no archive files for {name}, so it cannot be built from "
            "a folder; prepare it on a machine with internet (without --manual-dir)"
        )
    expected = sorted(info.filename for info in archives.values())
    missing = [f for f in expected if not (manual_dir / f).is_file()]
    if missing == expected:
        raise DatasetNotFoundError(
            f"{manual_dir} has none of {name}'s archives; expected {', '.join(expected)}"
        )
    if missing:
        raise DatasetNotFoundError(
            f"{manual_dir} lacks {', '.join(missing)}; {name} is built from {', '.join(expected)}"
        )
    differ = [
        info.filename
        for info in archives.values()
        if _sha256(manual_dir / info.filename) != info.checksum
    ]
    if not differ:  # the official files: tfds reads them from manual_dir and verifies them
        return tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
    one = len(differ) == 1
    if verify:
        raise DatasetNotFoundError(
            f"{name}: {', '.join(sorted(differ))} in {manual_dir} {'differs' if one else 'differ'} "
            "from the official checksum (a re-compressed or rebuilt archive?); pass "
            "--no-verify-checksums (verify_checksums=False) to build from "
            f"{'it' if one else 'them'} unverified"
        )
    _seed_download_cache(builder, archives, manual_dir, scratch)
    print(
        f"{name}: {len(differ)} archive{' differs' if one else 's differ'} from the official "
        f"checksum; built from {'it' if one else 'them'} unverified",
        flush=True,
    )
    # No manual_dir: tfds finds every archive in the cache instead, under its registered name.
    return tfds.download.DownloadConfig(
        manual_dir=str(scratch / "no-manual-dir"), try_download_gcs=False
    )


def _seed_download_cache(builder, archives, manual_dir: pathlib.Path, download_dir) -> None:
    """Place each archive where tfds's DownloadManager looks for an already downloaded file of
    that URL with its registered checksum (``DIR/NAME/<url+checksum name>`` and its ``.INFO``),
    so tfds uses it as a verified download."""
    from etils import epath
    from tensorflow_datasets.core.download import resource

    folder = pathlib.Path(download_dir) / builder.name
    folder.mkdir(parents=True, exist_ok=True)
    for url, info in archives.items():
        target = folder / resource.get_dl_fname(url, info.checksum)
        try:
            os.link(manual_dir / info.filename, target)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(manual_dir / info.filename, target)
        resource.write_info_file(
            url=url,
            path=epath.Path(target),
            dataset_name=builder.name,
            original_fname=info.filename,
            url_info=info,
        )


def _build(builder, download_dir, config, file_format: str, data_dir: str) -> None:
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
    from tensorflow_datasets.core.utils import tqdm_utils

    # tfds's progress bars only on a terminal: in a log file they are thousands of lines.
    bars = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(bars and sys.stderr.isatty())
    try:
        builder.download_and_prepare(
            download_dir=download_dir, download_config=config, file_format=file_format
        )
    except (OSError, NonMatchingChecksumError) as e:  # requests' errors are OSErrors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error(f"building {builder.name} in {data_dir} failed: {reason}", reason) from e
    finally:
        tqdm_utils.display_progress_bar(bars)


def _error(message: str, reason: str) -> DatasetNotFoundError:
    """A one-line error that also carries its cause alone (``reason``), which the data loaders
    quote in their own message."""
    error = DatasetNotFoundError(message)
    error.reason = reason
    return error


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ready(name: str, builder, what: str, seconds: float | None) -> dict[str, int]:
    splits = {split: int(info.num_examples) for split, info in builder.info.splits.items()}
    counts = ", ".join(f"{split} {n:,}" for split, n in splits.items())
    took = "" if seconds is None else f" in {seconds:.{1 if seconds < 10 else 0}f} s"
    print(f"{name}: {what} at {builder.data_path}{took} ({counts} examples)", flush=True)
    return splits
