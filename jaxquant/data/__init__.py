"""Datasets: tensorflow-datasets sources, in-memory small sets, on-device augmentation.

One idea per module: `sources` (names, statistics, where tfds data is read), `memory`,
`streaming`, `preprocess` (on device), `order` (`batch_indices`), `loading` (`load_dataset`),
`tfdata` and `contract` (`InputContract`: what a deployed model takes, and its checks); every
public name is importable from here.

Small image sets (digits, MNIST, Fashion-MNIST, CIFAR-10/100) are held in memory as NumPy
arrays and gathered per step; random crop + flip and normalisation run on device inside the
jitted step (`make_preprocess`). scikit-learn's bundled ``digits`` is the embedded default that
needs no download. ImageNet streams (`StreamingDataset`): examples are read by index from the
prepared array_record files, decoded and augmented on the host in a thread pool
(RandomResizedCrop + flip for training, resize + centre crop for evaluation), so a batch is a
function of (seed, step) as for the in-memory sets and a resumed run sees the same batches. Both
kinds answer `train_examples(indices, seed, step)` and `test_batches(batch_size)`, which is all the
fit loop, evaluation and PTQ use. `imagenet_batches` is the same pipeline in ``tf.data`` (the ``tf``
extra) for users who feed their own loop.

A tfds dataset that is not prepared in ``data_dir`` (``TFDS_DATA_DIR``) is downloaded and built
when the machine is online; offline, `DatasetNotFoundError` names the command that builds it from
local archives (``jaxquant data prepare NAME --manual-dir DIR``, `jaxquant.data.prepare`).
"""

from jaxquant.data.contract import InputContract, dataset_contract
from jaxquant.data.loading import load_config_dataset, load_dataset
from jaxquant.data.memory import ArrayDataset, array_batches, load_digits, load_tfds_in_memory
from jaxquant.data.order import batch_indices
from jaxquant.data.preprocess import AUGMENTATIONS, make_preprocess, random_crop, random_flip
from jaxquant.data.sources import (
    BUILD_HINT,
    IN_MEMORY,
    NORMALIZATION,
    NUM_CLASSES,
    STREAM_SPLITS,
    STREAMING,
    default_data_dir,
)
from jaxquant.data.streaming import (
    StreamingDataset,
    eval_transform,
    load_streaming,
    random_resized_crop_box,
    train_transform,
)
from jaxquant.data.tfdata import imagenet_batches

__all__ = [
    "IN_MEMORY",
    "STREAMING",
    "STREAM_SPLITS",
    "NORMALIZATION",
    "NUM_CLASSES",
    "BUILD_HINT",
    "ArrayDataset",
    "array_batches",
    "default_data_dir",
    "load_digits",
    "load_tfds_in_memory",
    "load_dataset",
    "load_config_dataset",
    "batch_indices",
    "random_crop",
    "random_flip",
    "AUGMENTATIONS",
    "make_preprocess",
    "random_resized_crop_box",
    "train_transform",
    "eval_transform",
    "StreamingDataset",
    "load_streaming",
    "imagenet_batches",
    "InputContract",
    "dataset_contract",
]
