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

from typing import NamedTuple, Sequence

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


def _check_selection(selection: str) -> None:
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
    _check_selection(selection)
    return jnp.asarray(FULL_BRANCHES[selection], jnp.float32)[bits]


def partial_branch(bits, selection: str = "amortised") -> jax.Array:
    """The partial branch's index at ``bits`` (-1 at even b); a traced int works."""
    _check_selection(selection)
    return jnp.asarray(PARTIAL_BRANCH[selection])[bits]


def branch_positions(b: int, selection: str = "amortised") -> dict[int, int]:
    """Physical branch -> position among the selected branches at b (the partial one last)."""
    _check_selection(selection)
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
    _check_selection(selection)
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

MODELS = ("small_cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34")


def quant_spec(config) -> QuantSpec:
    """Full precision: the stem and classifier are FP and shared; the body's quantizers are the
    `MultiBranchConv` intervals (2-bit weights, b-bit inputs), built by `build_model`."""
    return FULL_PRECISION


def build_model(config, num_classes: int):
    """The multi-branch model named by ``config.model`` (``small_cnn`` -> `MultiBranchCNN`,
    ``resnet20/32/44/56`` -> `MultiBranchCifarResNet`, ``resnet18/34`` -> the ImageNet
    `MultiBranchResNet`, with the code's channel shuffle if ``config.mbquant.channel_shuffle``) for
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


# ----------------------------------------------------------------------------------------------
# Cost: BitOPs per bit-width.


class BranchConvSpec(NamedTuple):
    """One multi-branch conv for cost counting: output positions ``H_out * W_out``, kernel size k,
    one branch's ``c_in -> c_out`` and the partial slice's ``partial_in -> partial_out``."""

    name: str
    positions: int
    kernel: int
    c_in: int
    c_out: int
    partial_in: int
    partial_out: int

    @property
    def macs(self) -> int:
        return self.positions * self.kernel**2 * self.c_in * self.c_out

    @property
    def partial_macs(self) -> int:
        return self.positions * self.kernel**2 * self.partial_in * self.partial_out


def cifar_resnet_convs(
    partial_widths: Sequence[int], depth: int = 20, width: int = 1, image_size: int = 32
) -> list[BranchConvSpec]:
    """The multi-branch convs of a post-activation CIFAR ResNet (stages 16/32/64 times ``width``,
    1x1 projection shortcuts at the stride-2 blocks), partial widths per stage. The first conv's
    partial reads the full stem copy; the last conv's partial outputs the full width."""
    if (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
    stages = tuple(16 * width * 2**s for s in range(3))
    return _resnet_convs(stages, partial_widths, (depth - 2) // 6, image_size, stem=stages[0])


def resnet18_convs(
    partial_widths: Sequence[int] = (40, 76, 184, 396), image_size: int = 224
) -> list[BranchConvSpec]:
    """The multi-branch convs of ImageNet ResNet-18 (layer1..4 after the stem and max-pool)."""
    return _resnet_convs((64, 128, 256, 512), partial_widths, 2, image_size // 4, stem=64)


def multibranch_cnn_convs(
    widths: Sequence[int],
    partial_widths: Sequence[int] = (),
    image_size: int = 8,
    stem_pool: bool = False,
) -> list[BranchConvSpec]:
    """The multi-branch 3x3 convs of `MultiBranchCNN` (``widths`` = FP stem width, then one body
    conv per entry) on ``image_size`` squares, wired as the model: the first conv's partial reads
    the full stem copy, the last conv's partial writes the full width, a 2x2 max-pool follows each
    conv while the map is at least 4x4 (``stem_pool`` halves it first). ``partial_widths`` as the
    model's (``()``: half of each body width but the last's)."""
    from jaxquant.models.multibranch import MultiBranchCNN

    widths = tuple(int(w) for w in widths)
    partial = MultiBranchCNN(
        widths=widths, partial_widths=tuple(partial_widths)
    ).resolved_partial_widths()
    size = image_size // 2 if stem_pool else image_size
    body = widths[1:]
    convs, c_in, p_in = [], widths[0], widths[0]
    for i, width in enumerate(body):
        p_out = width if i == len(body) - 1 else partial[i]
        convs.append(BranchConvSpec(f"conv{i}", size * size, 3, c_in, width, p_in, p_out))
        if size >= 4:
            size //= 2
        c_in, p_in = width, p_out
    return convs


def _resnet_convs(stages, partial_widths, blocks, size, stem) -> list[BranchConvSpec]:
    if len(partial_widths) != len(stages):
        raise ConfigError(
            f"give one partial width per stage ({len(stages)}), got {tuple(partial_widths)}"
        )
    for full, part in zip(stages, partial_widths):
        if not 0 < part <= full:
            raise ConfigError(f"partial width {part} must be in 1..{full}")
    convs, c_prev, p_prev = [], stem, stem
    for s, (c, p) in enumerate(zip(stages, partial_widths)):
        for blk in range(blocks):
            stride = 2 if s > 0 and blk == 0 else 1
            size = size // stride
            name = f"stage{s}_block{blk}"
            convs.append(BranchConvSpec(f"{name}_conv0", size * size, 3, c_prev, c, p_prev, p))
            if c_prev != c or stride != 1:
                convs.append(
                    BranchConvSpec(f"{name}_shortcut", size * size, 1, c_prev, c, p_prev, p)
                )
            last = s == len(stages) - 1 and blk == blocks - 1
            convs.append(BranchConvSpec(f"{name}_conv1", size * size, 3, c, c, p, c if last else p))
            c_prev, p_prev = c, p
    return convs


def bitops(convs: Sequence[BranchConvSpec], b: int, selection: str = "amortised") -> int:
    """BitOPs of the b-bit multi-branch network: per conv, ``MACs * 2 * b`` per selected full
    branch plus ``partial MACs * 2 * b`` for the partial slice (odd b)."""
    _check_selection(selection)
    (b,) = validate_bits((b,))
    full = int(FULL_BRANCHES[selection][b].sum())
    has_partial = PARTIAL_BRANCH[selection][b] >= 0
    return sum(
        (full * c.macs + (c.partial_macs if has_partial else 0)) * WEIGHT_BITS * b for c in convs
    )


def plain_bitops(convs: Sequence[BranchConvSpec], b: int) -> int:
    """BitOPs of one plain network at b-bit weights and activations: ``MACs * b * b``."""
    return sum(c.macs for c in convs) * b * b


def bitops_table(
    convs: Sequence[BranchConvSpec],
    bits: Sequence[int] = tuple(range(2, 9)),
    selection: str = "amortised",
) -> dict[int, tuple[int, int, float]]:
    """``{b: (multi-branch BitOPs, plain b*b BitOPs, ratio)}``."""
    table = {}
    for b in bits:
        ours, plain = bitops(convs, b, selection), plain_bitops(convs, b)
        table[b] = (ours, plain, ours / plain)
    return table


def partial_fraction(convs: Sequence[BranchConvSpec]) -> float:
    """The partial branch's MACs over one full branch's (1/2 makes odd b cost exactly b*b)."""
    return sum(c.partial_macs for c in convs) / sum(c.macs for c in convs)


def derive_partial_widths(
    stages: Sequence[int] = (16, 32, 64), depth: int = 20, image_size: int = 32
) -> tuple[int, ...]:
    """The CIFAR ResNet partial widths whose per-stage partial MACs are closest to half the
    stage's branch MACs (least squares over the three stages). Exhaustive search, about 2 s."""
    if tuple(stages) != tuple(16 * (stages[0] // 16) * 2**s for s in range(3)) or stages[0] % 16:
        raise ConfigError(f"stages must be 16w, 32w, 64w, got {tuple(stages)}")
    width = stages[0] // 16
    candidates = [range(1, c + 1) for c in stages]
    best, best_cost = None, None
    for p0 in candidates[0]:
        for p1 in candidates[1]:
            for p2 in candidates[2]:
                convs = cifar_resnet_convs((p0, p1, p2), depth, width, image_size)
                cost = 0.0
                for s in range(3):
                    stage = [c for c in convs if c.name.startswith(f"stage{s}_")]
                    cost += (
                        sum(c.partial_macs for c in stage) / sum(c.macs for c in stage)
                        - PARTIAL_MACS_FRACTION
                    ) ** 2
                if best_cost is None or cost < best_cost - 1e-15:
                    best, best_cost = (p0, p1, p2), cost
    return best


# CIFAR_RESNET20_PARTIAL_WIDTHS (11, 23, 43), the partial-branch widths of the 16/32/64 stages
# (`derive_partial_widths`), and RESNET18_PARTIAL_WIDTHS (40, 76, 184, 396), the official code's
# ImageNet ResNet-18 widths (``oneBit_outchannel``), live with the models that use them;
# imported above.


def format_bitops_table(
    convs: Sequence[BranchConvSpec],
    bits: Sequence[int] = tuple(range(2, 9)),
    selection: str = "amortised",
) -> str:
    """A printable table: b, multi-branch BitOPs, plain b*b BitOPs, their ratio."""
    lines = [
        f"partial MACs / branch MACs = {partial_fraction(convs):.4f} "
        f"(target {PARTIAL_MACS_FRACTION})",
        f"{'b':>2}  {'MBQuant BitOPs':>16}  {'plain b*b BitOPs':>16}  ratio",
    ]
    for b, (ours, plain, ratio) in bitops_table(convs, bits, selection).items():
        lines.append(f"{b:>2}  {ours:>16,}  {plain:>16,}  {ratio:.4f}")
    return "\n".join(lines)


def main() -> None:
    """Print the derivation of the CIFAR ResNet-20 partial widths and the BitOPs tables."""
    derived = derive_partial_widths()
    print(f"CIFAR ResNet-20 (16/32/64): derived partial widths {derived}")
    print(format_bitops_table(cifar_resnet_convs(derived)))
    print(
        "\nCIFAR ResNet-20, the official code's widths (16, 24, 48) in our wiring "
        "(the official wiring, per the digest: 1.08 / 1.048 / 1.034 at b = 3 / 5 / 7):"
    )
    print(format_bitops_table(cifar_resnet_convs((16, 24, 48))))
    print(f"\nImageNet ResNet-18, official widths {RESNET18_PARTIAL_WIDTHS}:")
    print(format_bitops_table(resnet18_convs(RESNET18_PARTIAL_WIDTHS)))


if __name__ == "__main__":
    main()
