import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxquant.errors import ConfigError
from jaxquant.layers import FULL_PRECISION, QuantSpec
from jaxquant.models import SmallCNN
from jaxquant.training import (
    MultiPrecisionTrainer,
    OptimizerConfig,
    cross_entropy,
    evaluate,
    learning_rate_schedule,
    make_optimizer,
    multi_precision_loss,
    soft_cross_entropy,
)

BITS = (2, 4, 8, 32)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_and_soft_cross_entropy_match_numpy():
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = np.array([0, 3, 6, 2, 1])
    ce = -np_log_softmax(z)[np.arange(5), labels].mean()
    soft = -(np.exp(np_log_softmax(t)) * np_log_softmax(z)).sum(-1).mean()
    np.testing.assert_allclose(cross_entropy(z, labels), ce, rtol=1e-5)
    np.testing.assert_allclose(soft_cross_entropy(z, t), soft, rtol=1e-5)
    # The teacher gets no gradient.
    grad_t = jax.grad(lambda t: soft_cross_entropy(jnp.asarray(z), t))(jnp.asarray(t))
    assert np.all(np.asarray(grad_t) == 0)


@pytest.mark.parametrize("distillation", ["none", "largest", "recursive"])
def test_multi_precision_loss_formulas(distillation):
    rng = np.random.default_rng(1)
    bits = (4, 2, 32, 8)  # deliberately unsorted: the teacher is found by value
    logits = rng.normal(size=(4, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    ce = [float(cross_entropy(logits[p], labels)) for p in range(4)]
    soft = lambda p, q: float(soft_cross_entropy(logits[p], logits[q]))  # noqa: E731
    if distillation == "none":
        expected = ce
    elif distillation == "largest":  # teacher: index 2 (32 bits)
        expected = [
            0.5 * soft(0, 2) + 0.5 * ce[0],
            0.5 * soft(1, 2) + 0.5 * ce[1],
            ce[2],
            0.5 * soft(3, 2) + 0.5 * ce[3],
        ]
    else:  # 32 -> 8 -> 4 -> 2
        expected = [soft(0, 3), soft(1, 0), ce[2], soft(3, 2)]
    total, per = multi_precision_loss(jnp.asarray(logits), labels, bits, distillation)
    np.testing.assert_allclose(per, expected, rtol=1e-5)
    np.testing.assert_allclose(total, sum(expected), rtol=1e-5)
    weighted, _ = multi_precision_loss(
        jnp.asarray(logits), labels, bits, distillation, (1.0, 2.0, 0.5, 0.0)
    )
    np.testing.assert_allclose(weighted, np.dot(expected, [1.0, 2.0, 0.5, 0.0]), rtol=1e-5)


def test_unknown_modes_raise():
    with pytest.raises(ConfigError):
        multi_precision_loss(jnp.zeros((1, 2, 3)), jnp.zeros(2, int), (4,), "bogus")
    with pytest.raises(ConfigError):
        MultiPrecisionTrainer(SmallCNN(), (32,), optax.sgd(0.1), precision_mode="bogus")
    with pytest.raises(ConfigError):
        make_optimizer(OptimizerConfig(optimizer="rmsprop"), 10, 1)


def test_learning_rate_schedules():
    cosine = learning_rate_schedule(1.0, "cosine", 100, 10)
    np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [1.0, 0.5, 0.0], atol=1e-6)
    staircase = learning_rate_schedule(1.0, "cosine", 100, 10, per_epoch=True)
    assert (
        float(staircase(19))
        == float(staircase(10))
        == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.1)))
    )
    step = learning_rate_schedule(1.0, "step", 100, 10, step_epochs=(5, 8), step_factor=0.1)
    np.testing.assert_allclose([step(49), step(50), step(80)], [1.0, 0.1, 0.01], rtol=1e-6)
    warm = learning_rate_schedule(1.0, "constant", 100, 10, warmup_epochs=1)
    np.testing.assert_allclose([warm(0), warm(9), warm(10)], [0.1, 1.0, 1.0], rtol=1e-6)


def _trainer(spec=QuantSpec(), mode="vmap", distillation="recursive", bits=BITS, **opt):
    model = SmallCNN(bits=bits, spec=spec, widths=(8, 16, 16))
    return MultiPrecisionTrainer(
        model,
        bits,
        make_optimizer(OptimizerConfig(**opt), 100, 10),
        distillation=distillation,
        precision_mode=mode,
    )


def _batch(n=16):
    x = jax.random.normal(jax.random.key(0), (n, 8, 8, 1))
    return x, jnp.arange(n) % 10


def test_optimizer_groups_quantizer_params_use_their_own_optimizer():
    # Model group SGD with lr 0: only quantizer parameters (LSQ steps, Adam) may move.
    trainer = _trainer(learning_rate=0.0, weight_decay=0.0, quantizer_learning_rate=1e-2)
    x, y = _batch()
    state = trainer.init(jax.random.key(1), x)
    new, _ = jax.jit(trainer.train_step)(state, x, y, jax.random.key(2))
    flat_old = jax.tree_util.tree_flatten_with_path(state.params)[0]
    flat_new = jax.tree_util.tree_flatten_with_path(new.params)[0]
    moved = {
        jax.tree_util.keystr(p): not np.array_equal(a, b)
        for (p, a), (_, b) in zip(flat_old, flat_new)
    }
    assert any(v for k, v in moved.items() if "step" in k)
    assert not any(v for k, v in moved.items() if "step" not in k)
    assert int(new.step) == 1


def test_vmap_equals_unrolled_loop():
    x, y = _batch()
    # Full precision: the two strategies compute the same function, to float rounding. (Two
    # and three precisions: each one more is another copy of the step to compile, twice.)
    results = {}
    for mode in ("vmap", "unroll"):
        trainer = _trainer(FULL_PRECISION, mode, bits=(8, 32))
        state = trainer.init(jax.random.key(1), x)
        new, metrics = jax.jit(trainer.train_step)(state, x, y, jax.random.key(2))
        results[mode] = (new, metrics, trainer.logits(new.params, new.batch_stats, x))
    (a, ma, la), (b, mb, lb) = results["vmap"], results["unroll"]
    np.testing.assert_allclose(ma["loss_per_precision"], mb["loss_per_precision"], rtol=1e-5)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(a.batch_stats, b.batch_stats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
    # Quantized: the same forward (logits of every precision) from the same parameters.
    trainer_v, trainer_u = (
        _trainer(QuantSpec(), "vmap", bits=(2, 4, 32)),
        _trainer(QuantSpec(), "unroll", bits=(2, 4, 32)),
    )
    state = trainer_v.init(jax.random.key(1), x)
    np.testing.assert_allclose(
        trainer_v.logits(state.params, state.batch_stats, x),
        trainer_u.logits(state.params, state.batch_stats, x),
        rtol=1e-4,
        atol=1e-4,
    )
    _, mv = jax.jit(trainer_v.train_step)(state, x, y, jax.random.key(2))
    _, mu = jax.jit(trainer_u.train_step)(state, x, y, jax.random.key(2))
    np.testing.assert_allclose(mv["loss_per_precision"], mu["loss_per_precision"], rtol=1e-4)


def test_step_updates_each_precisions_batch_stats_row_only_from_its_own_batch():
    trainer = _trainer(QuantSpec(), "vmap", bits=(2, 8))
    x, y = _batch()
    state = trainer.init(jax.random.key(1), x)
    new, _ = jax.jit(trainer.train_step)(state, x, y, jax.random.key(2))
    # Every precision ran, so every row moved; each row equals a single-precision update.
    for p in range(2):
        _, updates = trainer.model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            x,
            p,
            train=True,
            mutable=["batch_stats"],
        )
        row = lambda stats: jax.tree.map(lambda a: a[p], stats)  # noqa: E731
        chex.assert_trees_all_close(
            row(new.batch_stats), row(updates["batch_stats"]), rtol=1e-5, atol=1e-6
        )


def test_evaluate_counts_every_example_once():
    trainer = _trainer(QuantSpec(), "vmap", bits=(2, 32))
    x, y = _batch(23)
    state = trainer.init(jax.random.key(1), x)
    predictions = np.asarray(jnp.argmax(trainer.logits(state.params, state.batch_stats, x), -1))
    expected = (predictions == np.asarray(y)[None]).mean(1)
    got = evaluate(trainer, state, np.asarray(x), np.asarray(y), batch_size=5)
    np.testing.assert_allclose([got[2], got[32]], expected)


def test_weight_decay_mask_can_spare_batchnorm():
    trainer = _trainer(
        FULL_PRECISION,
        learning_rate=1.0,
        momentum=0.0,
        weight_decay=0.5,
        decay_batchnorm=False,
        bits=(32,),
    )
    state = trainer.init(jax.random.key(1), _batch()[0])
    grads = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = trainer.optimizer.update(grads, state.opt_state, state.params)
    np.testing.assert_allclose(updates["stem_bn"]["scale"], 0.0)
    np.testing.assert_allclose(
        updates["conv0"]["kernel"], -0.5 * state.params["conv0"]["kernel"], rtol=1e-6
    )


def test_quantizer_group_follows_the_step_schedule_too():
    config = OptimizerConfig(
        optimizer="sgd",
        learning_rate=0.0,
        momentum=0.0,
        weight_decay=0.0,
        schedule="step",
        quantizer_schedule="step",
        quantizer_optimizer="sgd",
        quantizer_learning_rate=1.0,
        step_epochs=(1.0,),
        step_factor=0.1,
    )
    tx = make_optimizer(config, total_steps=20, steps_per_epoch=10)
    params = {"conv": {"weight_step": jnp.ones(())}}
    state = tx.init(params)
    grads = {"conv": {"weight_step": jnp.ones(())}}
    updates = []
    for _ in range(12):
        u, state = tx.update(grads, state, params)
        updates.append(float(u["conv"]["weight_step"]))
    np.testing.assert_allclose(updates[9], -1.0, rtol=1e-6)  # epoch 0
    np.testing.assert_allclose(updates[10], -0.1, rtol=1e-6)  # epoch 1: decayed


def test_accuracy_counts_every_example_once_across_batches():
    from jaxquant.training import accuracy

    labels = np.asarray([0, 1, 2, 0, 1, 2, 0])
    images = np.asarray([0, 1, 0, 0, 1, 2, 1])  # "images" are the predicted classes: 5 of 7 right
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return np.eye(3)[batch]

    assert accuracy(predict, images, labels, batch_size=3) == pytest.approx(5 / 7)
    assert seen == [3, 3, 1]


# ----------------------------------------------------------------------------------------------
# The fit loop: no host sync between log points, the NaN guard, asynchronous checkpoints.


def _tiny_fit_trainer(learning_rate=0.05):
    from jaxquant.data import load_digits, make_preprocess

    dataset = load_digits()
    model = SmallCNN(bits=(2, 32), spec=QuantSpec(), widths=(4, 4))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=learning_rate), 40, 20)
    trainer = MultiPrecisionTrainer(
        model,
        (2, 32),
        optimizer,
        precision_mode="unroll",
        preprocess=make_preprocess(dataset.mean, dataset.std),
    )
    return trainer, dataset


class _HostReads:
    """Records, for every read of a jax.Array's value on the main thread (``float(x)``,
    ``np.asarray(x)``, ``jax.device_get``, ...), how many training steps had been dispatched.

    (``jax.transfer_guard_device_to_host`` would be the natural check, but on the CPU backend an
    array already lives in host memory, so the guard never fires there.) Steps are counted by
    `fit`'s calls to ``jax.make_array_from_process_local_data`` (images and labels, two a step).
    """

    def __init__(self, monkeypatch):
        import sys
        import threading

        from jax._src import array as array_module

        self.batches, self.reads = 0, []
        main = threading.main_thread()
        original_value = array_module.ArrayImpl._value
        original_make = jax.make_array_from_process_local_data

        def value(array):
            # A constant embedded in a program being compiled is read too: not a fetch.
            compiling = sys._getframe(1).f_code.co_name == "_array_mlir_constant_handler"
            if threading.current_thread() is main and not compiling:
                self.reads.append(self.batches // 2)
            return original_value.fget(array)

        def make(*args, **kwargs):
            self.batches += 1
            return original_make(*args, **kwargs)

        monkeypatch.setattr(array_module.ArrayImpl, "_value", property(value))
        monkeypatch.setattr(jax, "make_array_from_process_local_data", make)


def test_host_reads_records_an_implicit_fetch(monkeypatch):
    reads = _HostReads(monkeypatch)
    reads.batches = 6
    float(jnp.ones(()) * 2)
    assert reads.reads == [3]


def test_fit_reads_nothing_on_the_host_between_log_points(tmp_path, monkeypatch):
    """Every value the loop fetches is fetched after a log point or a checkpoint step (or
    before the first step); the loop before this change read the loss after every step."""
    from jaxquant.checkpoint import Checkpointer
    from jaxquant.training import fit

    trainer, dataset = _tiny_fit_trainer()
    total = 2 * (dataset.train_size // 128)
    reads = _HostReads(monkeypatch)
    state = fit(
        trainer,
        dataset,
        workdir=str(tmp_path),
        seed=0,
        epochs=2,
        batch_size=128,
        checkpoint_every_steps=10,
        log_every_steps=7,
        progress=False,
    )
    monkeypatch.undo()
    assert int(state.step) == total
    allowed = {0, total} | set(range(7, total + 1, 7)) | set(range(10, total + 1, 10))
    assert reads.reads and set(reads.reads) <= allowed, sorted(set(reads.reads) - allowed)
    assert set(reads.reads) & {7, 14}  # the log points did fetch
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest_step() == total  # the last asynchronous save landed
    checkpointer.close()


def test_fit_nan_names_the_step_where_it_began_and_saves_nothing_after(tmp_path):
    """The loss is checked on device every step; the error (raised at the next log point or
    checkpoint) names the first non-finite step, and no later checkpoint is written."""
    from jaxquant.checkpoint import Checkpointer
    from jaxquant.errors import NonFiniteLossError
    from jaxquant.training import fit

    trainer, dataset = _tiny_fit_trainer(learning_rate=1e38)
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+)") as info:
        fit(
            trainer,
            dataset,
            workdir=str(tmp_path),
            seed=0,
            epochs=2,
            batch_size=128,
            checkpoint_every_steps=1000,
            log_every_steps=1000,
            progress=False,
        )
    first_bad = int(__import__("re").search(r"at step (\d+)", str(info.value)).group(1))
    assert 1 <= first_bad <= 3  # lr 1e38 overflows within the first steps, long before the end
    assert "no checkpoint was written" in str(info.value)
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest_step() is None
    checkpointer.close()


def test_fit_rejects_log_every_steps_below_one(tmp_path):
    from jaxquant.training import fit

    trainer, dataset = _tiny_fit_trainer()
    with pytest.raises(ConfigError, match="log_every_steps"):
        fit(
            trainer,
            dataset,
            workdir=str(tmp_path),
            seed=0,
            epochs=1,
            batch_size=128,
            log_every_steps=0,
        )
