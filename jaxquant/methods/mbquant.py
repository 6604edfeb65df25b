"""MBQuant (Zhong et al., Pattern Recognition 2024; arXiv 2305.08117): multi-branch quantization.

Every body conv holds G = 4 branches of latent weights at fixed 2-bit levels
``{-1, -1/3, 1/3, 1}``; a b-bit network runs ``floor(b/2)`` full branches with b-bit activations
plus, for odd b, a partial branch (the top-left slice of the next one, a fraction ``f`` of its
MACs), averaged after the last block. BitOPs against a plain b-bit network:
``2 (floor(b/2) + f) / b``, hence ``f = 1/2``. Amortised selection (`FULL_BRANCHES`) spreads the
training over the branches; all bit-widths train every step, distilled from the largest. We
follow the official code (``zysxmu/MBQuant``): its quirks are flags (``weight_slots='position'``,
``weight_interval_std='filter'``, ``channel_shuffle``), the clean versions the defaults.
Details: docs/methods/mbquant.md
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import FULL_PRECISION, BranchSelection, QuantSpec
from jaxquant.methods.base import Method, register, section
from jaxquant.models.multibranch import CIFAR_RESNET20_PARTIAL_WIDTHS, RESNET18_PARTIAL_WIDTHS  # noqa: F401  (re-exported)

NAME = "mbquant"
DEFAULT_DISTILLATION = "largest"
"""The official code's in-place distillation: ``L_b = 0.5 softCE(z_b, z_max) + 0.5 CE_b``."""
DEFAULT_PRECISION_MODE = "unroll"
"""An unrolled step runs each precision's selected branches only (``floor(b/2)`` and a half, not
all G); ``benchmarks/step_speed.py --only mbq-vmap,mbq-unroll`` measures the difference."""
NUM_BRANCHES = 4
MIN_BITS, MAX_BITS = 2, 8
SELECTIONS = ("amortised", "naive")
WEIGHT_SLOTS = ("branch", "position")
WEIGHT_BITS = 2
PARTIAL_MACS_FRACTION = 0.5
"""The partial branch's MACs as a fraction of one full branch's: ``2 (floor(b/2) + 1/2) = b``."""


def _tables(offset_of) -> tuple[np.ndarray, np.ndarray]:
    full = np.zeros((MAX_BITS + 1, NUM_BRANCHES), bool)
    partial = np.full((MAX_BITS + 1,), -1, np.int32)
    for b in range(MIN_BITS, MAX_BITS + 1):
        k, s = b // 2, offset_of(b)
        full[b, s : s + k] = True
        if b % 2:
            partial[b] = s + k
    return full, partial


_AMORTISED = _tables(lambda b: 1 if b in (4, 5, 6) else 0)
_NAIVE = _tables(lambda b: 0)
FULL_BRANCHES = {"amortised": _AMORTISED[0], "naive": _NAIVE[0]}
"""``FULL_BRANCHES[selection][b]``: (G,) booleans, the full branches of the b-bit network."""
PARTIAL_BRANCH = {"amortised": _AMORTISED[1], "naive": _NAIVE[1]}
"""``PARTIAL_BRANCH[selection][b]``: the branch whose top-left slice is the partial
branch, or -1."""
for _table in (*FULL_BRANCHES.values(), *PARTIAL_BRANCH.values()):
    _table.setflags(write=False)


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown MBQuant selection {selection!r}; choose one of {SELECTIONS}")


def validate_bits(bits: Sequence[int]) -> tuple[int, ...]:
    """MBQuant bit-widths are integers 2..8 (four 2-bit branches); return them as a tuple."""
    bits = tuple(bits)
    if not bits:
        raise BitWidthError(
            "no bit-widths given; pass at least one of 2..8, e.g. bits=(2, 4, 6, 8)"
        )
    for b in bits:
        if (
            not isinstance(b, (int, np.integer))
            or isinstance(b, bool)
            or not MIN_BITS <= b <= MAX_BITS
        ):
            raise BitWidthError(
                f"bit-width {b!r} is not supported by MBQuant; use integers {MIN_BITS}..{MAX_BITS}"
            )
    if len(set(bits)) != len(bits):
        raise BitWidthError(f"bit-widths {bits} contain duplicates; list each bit-width once")
    return tuple(int(b) for b in bits)


def branch_mask(bits, selection: str = "amortised") -> jax.Array:
    """(G,) float mask of the full branches at ``bits`` (a traced int works; vmaps over bits)."""
    check_selection(selection)
    return jnp.asarray(FULL_BRANCHES[selection], jnp.float32)[bits]


def partial_branch(bits, selection: str = "amortised") -> jax.Array:
    """The partial branch's index at ``bits`` (-1 at even b); a traced int works."""
    check_selection(selection)
    return jnp.asarray(PARTIAL_BRANCH[selection])[bits]


def branch_positions(b: int, selection: str = "amortised") -> dict[int, int]:
    """Physical branch -> position among the selected branches at b (the partial one last)."""
    check_selection(selection)
    order = list(np.flatnonzero(FULL_BRANCHES[selection][b]))
    if PARTIAL_BRANCH[selection][b] >= 0:
        order.append(int(PARTIAL_BRANCH[selection][b]))
    return {int(g): p for p, g in enumerate(order)}


def branch_selection(
    bits: Sequence[int],
    selection: str = "amortised",
    weight_slots: str = "branch",
    weight_interval_std: str = "chunk",
) -> BranchSelection:
    """The `BranchSelection` of a model built for the bit-width tuple ``bits``.

    ``weight_slots='branch'`` (default, clean): branch g uses weight interval g, the partial slice
    its parent's; ``'position'`` (the official code): the slot is the branch's position among the
    selected ones, so physical branches share intervals across bit-widths.
    ``weight_interval_std``: how `initialize_intervals` sets a weight slot, ``'chunk'`` (default,
    clean: 3 std of the chunk it quantizes) or ``'filter'`` (the code: 3 std of
    output filter #slot).
    """
    check_selection(selection)
    if weight_slots not in WEIGHT_SLOTS:
        raise ConfigError(f"unknown weight_slots {weight_slots!r}; choose one of {WEIGHT_SLOTS}")
    bits = validate_bits(bits)
    full_slot, partial_slot = [], []
    for b in bits:
        pb = int(PARTIAL_BRANCH[selection][b])
        if weight_slots == "branch":
            full_slot.append(tuple(range(NUM_BRANCHES)))
            partial_slot.append(max(pb, 0))
        else:
            pos = branch_positions(b, selection)
            full_slot.append(tuple(pos.get(g, 0) if g != pb else 0 for g in range(NUM_BRANCHES)))
            partial_slot.append(pos.get(pb, 0))
    return BranchSelection(
        full=tuple(tuple(bool(v) for v in FULL_BRANCHES[selection][b]) for b in bits),
        partial=tuple(int(PARTIAL_BRANCH[selection][b]) for b in bits),
        full_weight_slot=tuple(full_slot),
        partial_weight_slot=tuple(partial_slot),
        weight_interval_std=weight_interval_std,
    )


# ----------------------------------------------------------------------------------------------
# Wiring: the method's model and quantizers for a config (`jaxquant.methods.build_trainer`).

MODELS = (
    "small_cnn",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v1",
)
NO_DECAY_MOBILENET_V1 = ("*_dw/kernel",)
"""``optimizer.no_decay`` of the official MobileNetV1 recipe: no weight decay on the depthwise
kernels (with ``optimizer.decay_batchnorm=False``: none on any BatchNorm either;
`experiments/configs/imagenet_mbquant_mobilenetv1.py`)."""


def quant_spec(config) -> QuantSpec:
    """Full precision: the stem and classifier are FP and shared; the body's quantizers are the
    `MultiBranchConv` intervals (2-bit weights, b-bit inputs), built by `build_model`."""
    return FULL_PRECISION


def build_model(config, num_classes: int):
    """The multi-branch model named by ``config.model`` (``small_cnn`` -> `MultiBranchCNN`,
    ``resnet20/32/44/56`` -> `MultiBranchCifarResNet`, ``resnet18/34`` -> the ImageNet
    `MultiBranchResNet`, with the code's channel shuffle if ``config.mbquant.channel_shuffle``;
    ``resnet50`` -> `MultiBranchBottleneckResNet` (base width ``64 * config.width``; its
    ``partial_widths`` are 8: the four block-output widths, then the four middle ones);
    ``mobilenet_v1`` -> `MultiBranchMobileNetV1` (width multiplier ``config.width``)) for
    ``config.bits`` in 2..8, with the ``config.mbquant.selection`` table and ``weight_slots``
    layout."""
    from jaxquant.models.multibranch import (
        MultiBranchCifarResNet,
        MultiBranchCNN,
        MultiBranchResNet,
    )

    bits = validate_bits(config.bits)
    mb = section(config, METHOD)
    if int(mb.branches) != NUM_BRANCHES:
        raise ConfigError(
            f"mbquant.branches={mb.branches}: MBQuant's selection tables are defined for "
            f"{NUM_BRANCHES} branches; set branches={NUM_BRANCHES}"
        )
    if config.first_last_bits:
        raise ConfigError(
            "MBQuant keeps the stem and classifier full precision; set first_last_bits=0"
        )
    selection = branch_selection(
        bits, str(mb.selection), str(mb.weight_slots), str(mb.weight_interval_std)
    )
    common = dict(
        num_classes=num_classes,
        bits=bits,
        selection=selection,
        partial_widths=tuple(int(p) for p in mb.partial_widths),
    )
    if mb.channel_shuffle and config.model not in ("resnet18", "resnet34"):
        raise ConfigError(
            f"channel_shuffle is the official ImageNet ResNet-18/34's (the CIFAR code has none); "
            f"set channel_shuffle=False for model {config.model!r}"
        )
    if config.model == "small_cnn":
        model = MultiBranchCNN(widths=tuple(config.widths), stem_pool=config.stem_pool, **common)
    elif config.model in ("resnet18", "resnet34"):
        if config.quantize_shortcut:
            raise ConfigError(
                "MBQuant's ImageNet ResNet has multi-branch 2-bit shortcuts; "
                "set quantize_shortcut=False"
            )
        stages = (2, 2, 2, 2) if config.model == "resnet18" else (3, 4, 6, 3)
        model = MultiBranchResNet(
            stage_sizes=stages, channel_shuffle=bool(mb.channel_shuffle), **common
        )
        model.shuffle_indices()  # partial widths the shuffle's groups cannot split fail here
    elif config.model in ("resnet50", "mobilenet_v1"):
        model = _build_imagenet_model(config, common)
    elif config.model in MODELS:
        if config.preactivation or config.quantize_shortcut:
            raise ConfigError(
                "MBQuant's CIFAR ResNet is post-activation with multi-branch 2-bit shortcuts; "
                "set preactivation=False and quantize_shortcut=False"
            )
        from jaxquant.methods import whole_width

        model = MultiBranchCifarResNet(
            depth=int(config.model[6:]), width=whole_width(config), **common
        )
    else:
        model = None
    if model is not None:
        # a bad partial_widths fails here, not inside the first trace
        model.resolved_partial_widths()
        return model
    raise ConfigError(
        f"model {config.model!r} has no MBQuant multi-branch variant yet; choose one of {MODELS}"
    )


def _build_imagenet_model(config, common):
    """ResNet-50 and MobileNetV1 (`build_model`)."""
    from jaxquant.models.multibranch_bottleneck import MultiBranchBottleneckResNet
    from jaxquant.models.multibranch_mobilenet import MultiBranchMobileNetV1

    if config.quantize_shortcut:
        raise ConfigError(
            f"MBQuant's {config.model} has multi-branch 2-bit convs throughout the body; "
            "set quantize_shortcut=False"
        )
    width = float(config.width)
    if config.model == "mobilenet_v1":
        return MultiBranchMobileNetV1(width=width, **common)
    base_width = int(round(64 * width))
    if base_width < 1 or base_width != 64 * width:
        raise ConfigError(
            f"resnet50 needs width * 64 to be a whole number of channels, got width={width}"
        )
    partial = common.pop("partial_widths")
    if partial and len(partial) != 8:
        raise ConfigError(
            f"resnet50's mbquant.partial_widths are 8 widths (the four stages' block outputs, "
            f"then their bottleneck middles), got {partial}; or () for the official ones"
        )
    return MultiBranchBottleneckResNet(
        base_width=base_width,
        partial_widths=partial[:4],
        mid_partial_widths=partial[4:],
        **common,
    )


INTERVAL_INITS = ("batches", "none")


def initialize_intervals(trainer, state, batches: Sequence[np.ndarray], key: jax.Array):
    """MBQuant's quantizer init (the official ``init_quant_model``), before the first step.

    For each bit-width in **ascending** order, one new training batch (training augmentation)
    runs forward in training mode at that bit-width: every `MultiBranchConv` sets the
    intervals of the slots that bit-width uses from its own input and the current weights and
    quantizes with them at once, so downstream layers see quantized upstream activations
    (`jaxquant.layers.MultiBranchConv._initial_intervals` has the formulas). BatchNorm running
    statistics of that bit-width move, as in the code's train-mode pass. Weight slots shared by
    several bit-widths end with the largest one's values, as in the code. Returns the state with
    the new intervals (optimizer moments are zero at this point, so nothing else changes).
    """
    import flax

    from jaxquant.layers import INTERVAL_INIT

    if len(batches) < len(trainer.bits):
        raise ConfigError(
            f"interval init needs one batch per bit-width ({len(trainer.bits)}), got {len(batches)}"
        )

    @jax.jit
    def one(params, batch_stats, images, precision, key):
        x = trainer.preprocess(images, True, key) if trainer.preprocess is not None else images
        _, updates = trainer.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            precision,
            train=True,
            mutable=["batch_stats", INTERVAL_INIT],
        )
        return updates.get("batch_stats", batch_stats), updates[INTERVAL_INIT]

    params, batch_stats = state.params, state.batch_stats
    for i, precision in enumerate(np.argsort(np.asarray(trainer.bits), kind="stable")):
        batch_stats, fresh = one(
            params,
            batch_stats,
            jnp.asarray(batches[i]),
            jnp.int32(precision),
            jax.random.fold_in(key, i),
        )
        flat = flax.traverse_util.flatten_dict(params)
        flat.update(flax.traverse_util.flatten_dict(fresh))
        params = flax.traverse_util.unflatten_dict(flat)
    return state.replace(params=params, batch_stats=batch_stats)


def _init_from_batches(config):
    init = str(section(config, METHOD).interval_init)
    if init not in INTERVAL_INITS:
        raise ConfigError(f"unknown mbquant.interval_init {init!r}; choose one of {INTERVAL_INITS}")
    return initialize_intervals if init == "batches" else None


SECTION = {
    "branches": NUM_BRANCHES,  # branches per body conv (the selection tables are for 4)
    "selection": "amortised",  # amortised (the paper's) | naive (branch 0 always, the ablation)
    "weight_slots": "branch",  # weight intervals per physical branch | position (the official code)
    # batches (one training batch per bit-width, ascending, as the code) | none
    "interval_init": "batches",
    # weight-interval init from the chunk's std | filter (the code's quirk)
    "weight_interval_std": "chunk",
    "partial_widths": (),  # odd-b partial branch widths (() = the model's default)
    # resnet18/34: the official code's channel shuffle in downsample blocks
    "channel_shuffle": False,
}

METHOD = register(
    Method(
        name=NAME,
        quant_spec=quant_spec,
        section=SECTION,
        legacy_keys={key: key for key in SECTION},
        distillation=DEFAULT_DISTILLATION,
        precision_mode=DEFAULT_PRECISION_MODE,
        validate_bits=lambda config, spec: validate_bits(config.bits),
        build_model=lambda config, num_classes, spec: build_model(config, num_classes),
        init_from_batches=_init_from_batches,
        bin_regularization=None,
    )
)


def __getattr__(name: str):
    # The BitOPs counters (`jaxquant.methods.mbquant_bitops`) are reachable from here too.
    from jaxquant.methods import mbquant_bitops

    if name in mbquant_bitops.__all__:
        return getattr(mbquant_bitops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
