"""Multi-precision training (one idea per module: `losses`, `optim`, `step`, `evaluation`,
`loop`; every public name is importable from here).

`MultiPrecisionTrainer` (`step`) runs every sub-network of a batch in one jitted function and
combines their losses (`losses`: cross-entropy and in-place distillation) before one optimizer
update (`optim`: model weights and quantizer parameters in their own groups); `fit` (`loop`)
trains it on a dataset, data-parallel, checkpointed and resumable; `evaluate` and `accuracy`
(`evaluation`) measure test accuracy.
"""

from jaxquant.training.evaluation import (
    accuracy,
    batches_accuracy,
    evaluate,
    evaluate_batches,
    evaluate_dataset,
)
from jaxquant.training.loop import data_parallel_mesh, fit
from jaxquant.training.losses import (
    DISTILLATION_MODES,
    cross_entropy,
    multi_precision_loss,
    soft_cross_entropy,
)
from jaxquant.training.optim import (
    OptimizerConfig,
    _param_group,  # noqa: F401  (tests import it from here)
    learning_rate_schedule,
    make_optimizer,
)
from jaxquant.training.step import PRECISION_MODES, MultiPrecisionTrainer, TrainState

__all__ = [
    "DISTILLATION_MODES",
    "PRECISION_MODES",
    "TrainState",
    "cross_entropy",
    "soft_cross_entropy",
    "multi_precision_loss",
    "OptimizerConfig",
    "learning_rate_schedule",
    "make_optimizer",
    "MultiPrecisionTrainer",
    "evaluate",
    "evaluate_batches",
    "evaluate_dataset",
    "accuracy",
    "batches_accuracy",
    "data_parallel_mesh",
    "fit",
]
