"""`jaxquant data prepare` and the download-on-open path, offline: a tiny MNIST-format archive set
(idx files, gzipped, a few dozen images) is built into a tfds dataset from a --manual-dir and
read back; the error paths are one line with exit code 2. Building needs TensorFlow (the tf
extra); those tests are skipped without it."""

import gzip
import pathlib
import struct

import numpy as np
import pytest
from helpers import assert_user_error

from jaxquant import cli
from jaxquant.errors import DatasetNotFoundError

TRAIN, TEST = 40, 20
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def write_idx(folder: pathlib.Path, prefix: str, images: np.ndarray, labels: np.ndarray):
    """MNIST's idx format: a big-endian header (magic, count[, rows, cols]) and uint8 data."""
    n, rows, cols = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A folder ARCHIVES/mnist/ with the four archives of a 40 + 20 image MNIST (their checksums
    are not the official ones), tfds's mnist builder told to expect that many, and the images."""
    pytest.importorskip("tensorflow", reason="building tfds datasets needs the tf extra")
    from tensorflow_datasets.image_classification import mnist

    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", TRAIN)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", TEST)
    rng = np.random.default_rng(0)
    folder = tmp_path / "archives" / "mnist"
    folder.mkdir(parents=True)
    data = {}
    for prefix, split, n in (("train", "train", TRAIN), ("t10k", "test", TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder, prefix, images, labels)
        data[split] = (images, labels)
    return folder, data


def by_image(images, labels) -> dict[bytes, int]:
    """{image bytes: label}: tfds stores the examples in its own (shuffled) order."""
    return {np.asarray(im).reshape(28, 28).tobytes(): int(lb) for im, lb in zip(images, labels)}


def run(capsys, *argv):
    code = cli.main(["data", "prepare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_builds_offline_from_a_manual_dir_and_reads_back(tiny_mnist, tmp_path, capsys):
    import tensorflow_datasets as tfds

    folder, data = tiny_mnist
    data_dir = str(tmp_path / "tfds")
    # Archives that are not the official files are refused, before anything is built.
    code, _, err = run(capsys, "mnist", "--data-dir", data_dir, "--manual-dir", str(folder))
    assert_user_error(code, err, "--no-verify-checksums")
    assert all(name in err for name in FILES) and "differ from the official checksum" in err
    assert not tfds.builder("mnist", data_dir=data_dir).is_prepared()

    # --manual-dir ARCHIVES reads its mnist/ subfolder.
    manual = str(folder.parent)
    argv = ["mnist", "--data-dir", data_dir, "--manual-dir", manual, "--no-verify-checksums"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    lines = out.strip().splitlines()
    assert "mnist: 4 archives differ from the official checksum; built from them unverified" in out
    assert lines[-1].startswith(f"mnist: ready at {data_dir}/mnist/")
    assert lines[-1].endswith(f"(train {TRAIN}, test {TEST} examples)")
    assert not list(pathlib.Path(data_dir).glob(".jaxquant-prepare-*"))  # scratch removed

    for split, (images, labels) in data.items():
        source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
        assert len(source) == len(labels)
        items = [source[i] for i in range(len(source))]
        assert by_image([x["image"] for x in items], [x["label"] for x in items]) == by_image(
            images, labels
        )

    code, out, _ = run(capsys, *argv)  # a second run leaves it as it is
    assert code == 0 and out.startswith("mnist: already prepared at")


def test_missing_archives_are_named(tiny_mnist, tmp_path, capsys):
    folder, _ = tiny_mnist
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    data_dir = str(tmp_path / "tfds")
    code, _, err = run(capsys, "mnist", "--data-dir", data_dir, "--manual-dir", str(folder))
    assert_user_error(code, err, f"{folder} lacks t10k-images-idx3-ubyte.gz;")
    assert all(name in err for name in FILES)  # and lists every file it needs
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "mnist", "--data-dir", data_dir, "--manual-dir", str(empty))
    assert_user_error(code, err, "has none of mnist's archives; expected")


def test_unknown_dataset_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "no_such_set", "--data-dir", str(tmp_path))
    assert_user_error(code, err, "unknown dataset 'no_such_set'")


def test_opening_a_dataset_that_is_not_prepared_downloads_it(tiny_mnist, tmp_path, monkeypatch):
    """load_dataset prepares a missing dataset through `prepare` (here it builds from the tiny
    archives instead of the network), and says how to build it when that fails or downloads are
    off."""
    from jaxquant import data
    from jaxquant.data import prepare as prepare_module

    folder, data_arrays = tiny_mnist
    calls = []
    real_prepare = prepare_module.prepare

    def offline_prepare(name, data_dir):
        calls.append(name)
        return real_prepare(name, data_dir, folder, verify_checksums=False)

    monkeypatch.delenv("JAXQUANT_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(prepare_module, "prepare", offline_prepare)
    ds = data.load_dataset("mnist", str(tmp_path / "tfds"), cache_dir=str(tmp_path / "cache"))
    assert calls == ["mnist"]  # once: the test split is then prepared too
    assert ds.train_images.shape == (TRAIN, 28, 28, 1) and ds.test_images.shape == (TEST, 28, 28, 1)
    assert by_image(ds.test_images, ds.test_labels) == by_image(*data_arrays["test"])

    def no_network(name, data_dir):
        raise prepare_module._error("cannot download, no network", "no network: host is down")

    monkeypatch.setattr(prepare_module, "prepare", no_network)
    with pytest.raises(DatasetNotFoundError) as error:
        data.load_dataset("mnist", str(tmp_path / "other"))
    message = str(error.value)
    assert "was not downloaded (no network: host is down)" in message and "\n" not in message
    assert f"jaxquant data prepare mnist --data-dir {tmp_path / 'other'} --manual-dir" in message

    monkeypatch.setenv("JAXQUANT_NO_DOWNLOAD", "1")
    with pytest.raises(DatasetNotFoundError, match="downloads are off: JAXQUANT_NO_DOWNLOAD"):
        data.load_dataset("mnist", str(tmp_path / "other"))
