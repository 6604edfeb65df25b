"""Streamed datasets (ImageNet): the host-side transforms, batches as a pure function of
(seed, step), and `jaxquant train` / `eval` / `ptq` end to end on tfds's mock imagenet2012."""

import json
import math

import numpy as np
import pytest
from helpers import assert_user_error

from jaxquant import cli, data, ptq
from jaxquant.errors import ConfigError, DatasetNotFoundError

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("height, width", [(100, 100), (40, 300), (300, 40), (7, 9)])
def test_random_resized_crop_box_fits_and_keeps_scale_and_ratio(height, width):
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = data.random_resized_crop_box(rng, height, width)
        assert (
            0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
        )
        if (h, w) != (height, width) and (top, left) != ((height - h) // 2, (width - w) // 2):
            # a drawn box (not the fallback): its area and aspect ratio are in range, up to rounding
            assert 0.08 * height * width - (h + w) <= h * w <= height * width
            assert 3 / 4 - 1 / min(h, w) <= w / h <= 4 / 3 + 1 / min(h, w)


def test_random_resized_crop_box_falls_back_to_the_clamped_central_crop():
    rng = np.random.default_rng(0)
    # No area fraction above 1 fits: the fallback, the whole image at the ratio clamped to 4/3.
    assert data.random_resized_crop_box(rng, 30, 90, scale=(2.0, 3.0)) == (0, 25, 30, 40)
    assert data.random_resized_crop_box(rng, 90, 30, scale=(2.0, 3.0)) == (25, 0, 40, 30)
    assert data.random_resized_crop_box(rng, 40, 50, scale=(2.0, 3.0)) == (0, 0, 40, 50)


def test_eval_transform_is_the_centre_crop_after_resizing_the_short_side():
    size = 32
    short = round(size * 256 / 224)  # 37: an image whose short side is already 37 is only cropped
    image = np.random.default_rng(0).integers(0, 256, (short, 55, 3), dtype=np.uint8)
    top, left = round((short - size) / 2), round((55 - size) / 2)
    np.testing.assert_array_equal(
        data.eval_transform(image, size), image[top : top + size, left : left + size]
    )
    wide = np.full((20, 80, 1), 7, np.uint8)  # grayscale: three equal channels; upsampled
    out = data.eval_transform(wide, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and np.all(out == 7)


def test_train_transform_is_a_resized_crop_flipped_about_half_the_time():
    image = np.tile(
        np.arange(64, dtype=np.uint8)[None, :, None], (48, 1, 3)
    )  # brightness grows left to right
    rng = np.random.default_rng(0)
    outs = [data.train_transform(image, rng, 16) for _ in range(200)]
    assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in outs)
    flipped = sum(int(o[0, 0, 0]) > int(o[0, -1, 0]) for o in outs)
    assert 70 < flipped < 130


@pytest.fixture
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=40):
        yield


def test_streamed_batches_are_a_function_of_seed_and_step(mock_imagenet, tmp_path):
    ds = data.load_dataset("imagenet2012", str(tmp_path), image_size=24, workers=3)
    assert (
        isinstance(ds, data.StreamingDataset)
        and ds.image_shape == (24, 24, 3)
        and ds.num_classes == 1000
    )
    assert ds.train_size == 40 and ds.test_size == 40
    idx = data.batch_indices(0, 3, ds.train_size, 8)
    images, labels = ds.train_examples(idx, seed=0, step=3)
    assert images.shape == (8, 24, 24, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    again = data.load_dataset(
        "imagenet2012", str(tmp_path), image_size=24, workers=1
    ).train_examples(idx, 0, 3)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert not np.array_equal(images, ds.train_examples(idx, seed=0, step=4)[0])
    # A host's share of the global batch draws what the whole batch draws at those positions.
    np.testing.assert_array_equal(
        images[4:], ds.train_examples(idx[4:], seed=0, step=3, offset=4)[0]
    )
    batches = list(ds.test_batches(16))
    assert [len(b[1]) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(
        np.concatenate([b[0] for b in batches]), np.concatenate([b[0] for b in ds.test_batches(40)])
    )


def test_bad_streaming_settings_are_config_errors(mock_imagenet, tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        data.load_dataset("imagenet2012", str(tmp_path), image_size=4)
    with pytest.raises(ConfigError, match="data_workers"):
        data.load_dataset("imagenet2012", str(tmp_path), workers=0)


def test_missing_imagenet_names_the_tfds_build_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="tfds build imagenet2012"):
        data.load_dataset("imagenet2012", str(tmp_path))


TRAIN = [
    "--config.dataset=imagenet2012",
    "--config.model=small_cnn",
    "--config.widths=(8, 16)",
    "--config.method=lsq",
    "--config.bits=(4, 32)",
    "--config.image_size=16",
    "--config.batch_size=8",
    "--config.eval_batch_size=16",
    "--config.epochs=1",
    "--config.checkpoint_every_steps=2",
    "--config.data_workers=2",
    "--no-progress",
]


def test_jaxquant_train_streams_imagenet_then_eval_and_ptq_read_the_run(
    mock_imagenet, tmp_path, capsys
):
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), f"--config.data_dir={tmp_path}", *TRAIN]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "imagenet2012 (40 train images, streamed)" in out
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"] == "imagenet2012" and results["test_examples"] == 40
    assert set(results["accuracy"]) == {"4", "32"}
    assert all(0 <= a <= 1 for a in results["accuracy"].values())
    assert (
        cli.main(["eval", "--workdir", str(workdir)]) == 0
    )  # the streamed test split again, same model
    assert json.loads((workdir / "results.json").read_text())["accuracy"] == results["accuracy"]
    capsys.readouterr()
    # PTQ of the FP sub-network draws calibration images and BN batches from the stream.
    config = ptq.ptq_config()
    config.update(
        dict(
            settings=("W4A8",),
            methods=("rtn", "bitsplit"),
            calibration_images=16,
            calibration_rows=200,
            activation_samples=2000,
            epochs=2,
            ofwa_epochs=2,
            bn_batches=2,
            bn_batch_size=8,
            eval_batch_size=16,
        )
    )
    payload = ptq.run(workdir, config, tmp_path / "ptq", progress=False, save_models=False)
    assert payload["test_examples"] == 40 and payload["dataset"] == "imagenet2012"
    assert all(0 <= payload["accuracy"][m]["W4A8"] <= 1 for m in ("fp", "rtn", "bitsplit"))
    assert not math.isnan(payload["accuracy"]["bitsplit"]["W4A8"])


def test_host_augmented_data_refuses_on_device_augmentation(mock_imagenet, tmp_path, capsys):
    argv = [
        "train",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data_dir={tmp_path}",
        *TRAIN,
        "--config.augment=crop_flip",
    ]
    assert_user_error(cli.main(argv), capsys.readouterr().err, "augment=none")
