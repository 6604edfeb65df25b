import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant import data
from jaxquant.errors import ConfigError, DatasetNotFoundError


def test_batch_indices_are_deterministic_permutations_per_epoch():
    n, batch = 50, 8
    steps = n // batch
    epoch0 = np.concatenate([data.batch_indices(3, s, n, batch) for s in range(steps)])
    assert len(set(epoch0)) == steps * batch  # no repeats within an epoch
    again = np.concatenate([data.batch_indices(3, s, n, batch) for s in range(steps)])
    np.testing.assert_array_equal(epoch0, again)
    epoch1 = np.concatenate([data.batch_indices(3, s, n, batch) for s in range(steps, 2 * steps)])
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(
        epoch0, np.concatenate([data.batch_indices(4, s, n, batch) for s in range(steps)])
    )
    with pytest.raises(ConfigError):
        data.batch_indices(0, 0, 5, 8)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    out = np.asarray(data.random_crop(images, jax.random.key(0), 2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(2):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 6, dx : dx + 6], out[i])
        ]
        assert matches, "crop is not a window of the padded image"


def test_random_flip_flips_about_half():
    images = jnp.tile(jnp.arange(4.0)[None, None, :, None], (400, 1, 1, 1))
    out = np.asarray(data.random_flip(images, jax.random.key(1)))
    flipped = np.all(out[:, 0, :, 0] == [3, 2, 1, 0], axis=1)
    kept = np.all(out[:, 0, :, 0] == [0, 1, 2, 3], axis=1)
    assert np.all(flipped | kept) and 150 < flipped.sum() < 250


def test_preprocess_normalises_uint8_and_float_alike():
    pre = data.make_preprocess((0.5,), (0.25,), "crop_flip")
    u8 = jnp.full((2, 4, 4, 1), 255, jnp.uint8)
    np.testing.assert_allclose(pre(u8, False, None), 2.0)
    np.testing.assert_allclose(pre(jnp.ones((2, 4, 4, 1)), False, None), 2.0)
    assert pre(u8, True, jax.random.key(0)).shape == (2, 4, 4, 1)
    with pytest.raises(ConfigError):
        data.make_preprocess((0.5,), (0.25,), "mixup")


def test_digits_is_a_fixed_stratified_split():
    ds = data.load_digits()
    assert ds.train_images.shape == (1437, 8, 8, 1) and ds.test_images.shape == (360, 8, 8, 1)
    assert 0.0 <= ds.train_images.min() and ds.train_images.max() <= 1.0
    assert np.bincount(ds.test_labels).min() >= 35
    np.testing.assert_array_equal(ds.test_labels, data.load_digits().test_labels)


def test_missing_dataset_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXQUANT_NO_DOWNLOAD", "1")  # never a network attempt in the tests
    with pytest.raises(
        DatasetNotFoundError, match="jaxquant data prepare fashion_mnist --data-dir"
    ):
        data.load_dataset("fashion_mnist", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown dataset"):
        data.load_dataset("svhn", str(tmp_path))


def test_tfds_in_memory_loading_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        ds = data.load_tfds_in_memory("cifar10", str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (12,) and ds.num_classes == 10


@pytest.mark.skipif(
    not os.environ.get("TFDS_DATA_DIR")
    or not os.path.isdir(os.path.join(os.environ.get("TFDS_DATA_DIR", ""), "mnist")),
    reason="real MNIST not built in $TFDS_DATA_DIR (.ci/run builds it with jaxquant data prepare)",
)
def test_real_mnist_built_by_ci(tmp_path):
    ds = data.load_dataset("mnist", cache_dir=str(tmp_path))
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (
        10000,
        28,
        28,
        1,
    )
    assert sorted(np.unique(ds.train_labels)) == list(range(10))
    mean = ds.train_images.mean() / 255
    assert abs(mean - data.NORMALIZATION["mnist"][0][0]) < 1e-3


def test_imagenet_stream_with_mock_data(tmp_path):
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        train = data.imagenet_batches("train", 4, str(tmp_path), image_size=32, train=True)
        images, labels = next(train)
        assert (
            images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
        )
        evaluation = list(
            data.imagenet_batches("validation", 4, str(tmp_path), image_size=32, train=False)
        )
    assert [len(b[1]) for b in evaluation] == [4, 2]
    with pytest.raises(DatasetNotFoundError):
        next(data.imagenet_batches("train", 4, str(tmp_path)))
