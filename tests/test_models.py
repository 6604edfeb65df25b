import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.layers import FULL_PRECISION, QuantSpec
from jaxquant.models import CifarResNet, ResNet18, SmallCNN


def count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def kernels(params):
    return {
        jax.tree_util.keystr(p): x.shape
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if "kernel" in jax.tree_util.keystr(p)
    }


def test_cifar_resnet20_has_the_published_parameter_count():
    model = CifarResNet(depth=20, width=1, bits=(32,), spec=FULL_PRECISION)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), 0, train=True)
    weights = sum(int(np.prod(s)) for s in kernels(variables["params"]).values())
    # He et al.'s ResNet-20 with 1x1 projection shortcuts: 0.27M weights (conv + fc).
    assert 268_000 < weights < 275_000
    logits = model.apply(variables, jnp.zeros((2, 32, 32, 3)), 0, train=False)
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("preactivation", [False, True])
def test_cifar_resnet_quantized_runs_every_precision_with_per_precision_state(preactivation):
    bits = (2, 4)
    model = CifarResNet(depth=8, width=2, bits=bits, spec=QuantSpec(), preactivation=preactivation)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, 1, train=True)
    assert variables["params"]["stage0_block0_conv0"]["weight_step"].shape == (2,)
    assert variables["batch_stats"]["stage0_block0_bn0"]["mean"].shape == (2, 32)
    assert "weight_step" not in variables["params"]["stem"]  # FP first conv
    out = jax.vmap(lambda p: model.apply(variables, x, p, train=False))(jnp.arange(2))
    assert out.shape == (2, 2, 10) and np.all(np.isfinite(out))
    assert not np.allclose(out[0], out[1])  # 2-bit and 4-bit are different sub-networks


def test_resnet18_on_tiny_inputs():
    model = ResNet18(num_classes=7, bits=(2, 8), spec=QuantSpec(), first_last_bits=8)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, 0, train=True)
    shapes = kernels(variables["params"])
    assert shapes["['stem']['kernel']"] == (7, 7, 3, 64)
    assert shapes["['stage3_block1_conv1']['kernel']"] == (3, 3, 512, 512)
    assert variables["params"]["stem"]["weight_step"].shape == (1,)  # first layer fixed at 8 bits
    assert 11_000_000 < count(variables["params"]) < 11_300_000
    logits, _ = model.apply(variables, x, 1, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))


def test_small_cnn_digits_and_mnist_shapes():
    for shape, stem_pool in (((3, 8, 8, 1), False), ((3, 28, 28, 1), True)):
        model = SmallCNN(bits=(2, 32), spec=QuantSpec("dorefa", "dorefa"), stem_pool=stem_pool)
        variables = model.init(jax.random.key(0), jnp.zeros(shape), 0, train=True)
        assert model.apply(variables, jnp.ones(shape), 1).shape == (3, 10)


def test_max_pool_2x2_matches_flax_and_splits_ties():
    import flax.linen as nn

    from jaxquant.models.common import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    tied = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(jax.grad(lambda v: max_pool_2x2(v).sum())(tied), 0.25)


def test_mobilenet_v2_has_torchvisions_parameters_and_quantizes_depthwise_convs():
    import flax.linen as nn

    from jaxquant.layers import FULL_PRECISION, QuantConv
    from jaxquant.models import MobileNetV2
    from jaxquant.models.mobilenet import make_divisible

    assert [make_divisible(c * 0.75) for c in (32, 16, 24, 1280)] == [24, 16, 24, 960]
    x = jnp.zeros((1, 32, 32, 3))
    fp = jax.eval_shape(
        lambda: MobileNetV2(bits=(32,), spec=FULL_PRECISION).init(jax.random.key(0), x, 0)
    )
    assert count(fp["params"]) == 3_504_872  # torchvision's mobilenet_v2 at width 1, 1000 classes
    model = MobileNetV2(num_classes=5, bits=(2, 4), spec=QuantSpec())
    shapes_only = jax.eval_shape(lambda: model.init(jax.random.key(1), x, 0))
    shapes = kernels(shapes_only["params"])
    assert shapes["['block1_depthwise']['kernel']"] == (
        3,
        3,
        1,
        96,
    )  # depthwise: one input channel per group
    assert shapes["['block16_project']['kernel']"] == (1, 1, 960, 320)
    assert shapes_only["params"]["block1_depthwise"]["weight_step"].shape == (2,)
    # The expansion convs and the last conv read a linear bottleneck (signed inputs); the
    # depthwise and projection convs read ReLU6 outputs (unsigned).
    signed = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, QuantConv) and context.method_name == "__call__":
            signed[context.module.name] = context.module.spec.signed_activations
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(1), x, 0))
    assert signed["block1_expand"] and signed["last_conv"]
    assert (
        not signed["block1_depthwise"]
        and not signed["block1_project"]
        and not signed["block0_depthwise"]
    )
    # One compiled training-mode forward of the quantized model on real numbers (init and
    # forward in one jit: one compile).
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    logits, _ = jax.jit(
        lambda k, im: model.apply(
            model.init(k, im, 0, train=True), im, 1, train=True, mutable=["batch_stats"]
        )
    )(jax.random.key(1), images)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_grouped_quant_conv_equals_xla_grouped_conv_forward_and_backward():
    from jaxquant.layers import FULL_PRECISION, QuantConv

    conv = QuantConv(6, (3, 3), feature_group_count=3, spec=FULL_PRECISION)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 6))
    params = conv.init(jax.random.key(1), x, 0)["params"]
    assert params["kernel"].shape == (3, 3, 2, 6)
    reference = lambda k, x: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3
    )
    np.testing.assert_allclose(
        conv.apply({"params": params}, x, 0), reference(params["kernel"], x), rtol=1e-5, atol=1e-5
    )
    ours = jax.grad(lambda k: (conv.apply({"params": {"kernel": k}}, x, 0) ** 2).sum())(
        params["kernel"]
    )
    theirs = jax.grad(lambda k: (reference(k, x) ** 2).sum())(params["kernel"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="groups"):
        QuantConv(6, (3, 3), feature_group_count=4).init(jax.random.key(1), x, 0)
