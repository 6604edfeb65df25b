"""MBQuant (Zhong, Zhou, Chao, Ji, "MBQuant: A novel multi-branch topology method for arbitrary
bit-width network quantization", Pattern Recognition 2024; arXiv 2305.08117, v1 "MultiQuant").

**What it is.** Every body conv holds G (4) branches of latent FP weights, each quantized to
fixed 2-bit levels ``{-1, -1/3, 1/3, 1}``; a b-bit network runs ``floor(b/2)`` full branches
(2-bit weights, b-bit activations) plus, for odd b, a *partial* branch: the top-left slice of the
next branch, sized so that its cost is half a branch. The branches are concatenated along
channels, normalised by a BatchNorm private to b, and averaged after the last block; stem and
classifier are full precision and shared. *Amortised* selection does not always use branch 0, so
the training load is spread over the branches. All bit-widths train on every step with in-place
distillation from the largest.

**Paper vs code.** Only the abstract of the paper was reachable; everything here follows the
official PyTorch code (``zysxmu/MBQuant`` @ 6148393c, read line by line and run). Where the code has a quirk we implement
the clean version by default and the faithful one behind a flag:

- **weight-interval slots** (``weight_slots``): the code indexes the 2-bit weight intervals
  ``[lW, uW]`` by *position* among the selected branches (slot 0 quantizes branch 0 at b=2 but
  branch 1 at b=4); ``'position'`` is that, ``'branch'`` (default) gives every physical branch
  its own interval, and the partial slice shares the interval of the branch it is cut from (so
  its quantized weights are literally the top-left of that branch's).
- **activation intervals**: one per (b, slot); each has exactly one user in the code too, so the
  two layouts are the same parametrisation (no flag).
- **weight-interval init** (``weight_interval_std``): the code sets slot s from the std of the
  s-th *output filter* of the whole grouped weight (``'filter'``); ``'chunk'`` (default) from the
  chunk the slot quantizes (the form of the code's unused ``QConv_Tra_Mulit``).
- **channel shuffle** in ImageNet ResNet-18's downsample blocks (``channel_shuffle``, off by
  default: it mixes the branches the paper calls independent).
- the CIFAR code's ``in_channels // G`` branch offset at stride-2 convs (selections straddle
  branches) and its identity read at offset 0: bugs we do not copy (no flag).
- **naive selection** (the ``*_234.py`` ablation files) is defined by the code for b = 2, 3, 4
  only; we extend it by its rule (start at branch 0 always: ``floor(b/2)`` full branches
  ``[0, k)``, partial of branch k for odd b) so the ablation covers 2..8.

**Models and wiring** (`build_model`, `jaxquant.models.multibranch`): ``config.method='mbquant'``
builds `MultiBranchCNN` (``model='small_cnn'``, digits/MNIST), `MultiBranchCifarResNet`
(``resnet20/32/44/56``) or `MultiBranchResNet` (ImageNet ``resnet18/34``, with the code's channel
shuffle behind ``config.channel_shuffle``) for ``config.bits`` in 2..8 with ``config.selection``
(``amortised`` | ``naive``), ``config.weight_slots`` and ``config.partial_widths`` (``()``: (11,
23, 43) times ``width`` for the CIFAR ResNet, the code's 40/76/184/396 and 39/78/188/400 for
ResNet-18/34, half of each width for the CNN); ``branches`` must be 4. The masks that
keep deselected branches out are applied after BatchNorm and ReLU (BN turns zeros into beta);
the selected chunks are averaged before the global pool. `quant_spec` is full precision (the
shared stem and classifier); the intervals ``weight_/act_lower/upper`` are in the trainer's
quantizer optimizer group.

**Training, as the code** (the defaults of a ``method='mbquant'`` config):

- every bit-width on every step, the largest as the teacher: ``distillation='auto'`` resolves to
  `DEFAULT_DISTILLATION` ``'largest'``, ``L_b = 0.5 softCE(z_b, z_max) + 0.5 CE_b``, summed;
- ``precision_mode='auto'`` resolves to `DEFAULT_PRECISION_MODE` ``'unroll'``: with a static
  precision, `MultiBranchConv` runs only the selected branches (vmap runs all G with masks);
- intervals initialised by `initialize_intervals` (``interval_init='batches'``): one new training
  batch per bit-width, ascending, each conv from its own input; ``weight_interval_std='filter'``
  reproduces the code's per-output-filter std, ``'chunk'`` (default) uses the slot's own chunk;
- the optimisers (SGD momentum 0.9 + weight decay 1e-4 on every model parameter, BN included;
  Adam 1e-4 for the intervals; cosine stepped per epoch) are set by the experiment configs
  (``experiments/configs/cifar100_mbquant_resnet20.py``, ``imagenet_mbquant_resnet18.py``).

**Selection tables** (`FULL_BRANCHES`, `PARTIAL_BRANCH`, rows indexed by the bit-width itself,
0..8; rows 0 and 1 select nothing), amortised:

====  =============  ===============
 b    full branches  partial branch
====  =============  ===============
 2    {0}            --
 3    {0}            slice of 1
 4    {1, 2}         --
 5    {1, 2}         slice of 3
 6    {1, 2, 3}      --
 7    {0, 1, 2}      slice of 3
 8    {0, 1, 2, 3}   --
====  =============  ===============

i.e. ``k = floor(b/2)`` full branches from offset ``s = 1`` if b in {4, 5, 6} else 0, the partial
cut from branch ``s + k``. `branch_mask` and `partial_branch` gather these rows with a traced
bit-width; `branch_selection` turns them into a `jaxquant.layers.BranchSelection` for a model's
bit-width tuple.

**BitOPs and the partial widths** (`bitops`, `bitops_table`, `derive_partial_widths`). The
digest's cost measure: BitOPs of a conv = ``H_out W_out k k C_in C_out * w_bits * a_bits``
(MACs times bits), summed over the quantized multi-branch convs (the FP stem and classifier are
shared and excluded); a full branch costs ``MACs * 2 * b``, the partial branch ``MACs_slice * 2 *
b`` with ``MACs_slice = H_out W_out k k p_in p_out``. The reference is one plain network at b-bit
weights and activations, ``MACs * b * b``. With ``floor(b/2)`` full branches plus a partial of
fraction f of a branch's MACs, the ratio is ``2 (floor(b/2) + f) / b``: exactly 1 at even b, and 1
at odd b iff ``f = 1/2``. So the partial slices are chosen so that their MACs are half a branch's.
The official ImageNet ResNet-18 widths 40/76/184/396 give f = 0.486 (ratios 0.991, 0.994, 0.996
at b = 3, 5, 7, reproduced by `bitops`). The official CIFAR ResNet-20 widths (16/24/48, with block
convs reading 8/16/24 partial channels) give 1.08 at b = 3 per the digest (1.155 in our wiring),
outside the issue's 2%; `derive_partial_widths` instead searches the stage widths
(p_1, p_2, p_3) that bring every stage's partial MACs closest to half the stage's branch MACs
(stage-balanced, so no stage is starved), with the partial branch a narrower copy of the network:
a stage-entry conv and its 1x1 shortcut read the previous stage's partial width, the first conv
reads the full stem copy, and the body's last conv outputs the full width (so the partial chunk
joins the final mean), as in the official ResNet-18. For CIFAR ResNet-20 (16/32/64) this gives
`CIFAR_RESNET20_PARTIAL_WIDTHS` = (11, 23, 43): f = 0.5058 over the whole body, BitOPs ratios
1.0038, 1.0023, 1.0016 at b = 3, 5, 7 (1 exactly at even b). Run ``python -m jaxquant.methods.mbquant``
to print the derivation's tables.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.errors import BitWidthError, ConfigError
from jaxquant.layers import FULL_PRECISION, BranchSelection, QuantSpec
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
        full[b, s:s + k] = True
        if b % 2:
            partial[b] = s + k
    return full, partial


_AMORTISED = _tables(lambda b: 1 if b in (4, 5, 6) else 0)
_NAIVE = _tables(lambda b: 0)
FULL_BRANCHES = {"amortised": _AMORTISED[0], "naive": _NAIVE[0]}
"""``FULL_BRANCHES[selection][b]``: (G,) booleans, the full branches of the b-bit network."""
PARTIAL_BRANCH = {"amortised": _AMORTISED[1], "naive": _NAIVE[1]}
"""``PARTIAL_BRANCH[selection][b]``: the branch whose top-left slice is the partial branch, or -1."""
for _table in (*FULL_BRANCHES.values(), *PARTIAL_BRANCH.values()):
    _table.setflags(write=False)


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown MBQuant selection {selection!r}; choose one of {SELECTIONS}")


def validate_bits(bits: Sequence[int]) -> tuple[int, ...]:
    """MBQuant bit-widths are integers 2..8 (four 2-bit branches); return them as a tuple."""
    bits = tuple(bits)
    if not bits:
        raise BitWidthError("no bit-widths given; pass at least one of 2..8, e.g. bits=(2, 4, 6, 8)")
    for b in bits:
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or not MIN_BITS <= b <= MAX_BITS:
            raise BitWidthError(f"bit-width {b!r} is not supported by MBQuant; use integers {MIN_BITS}..{MAX_BITS}")
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


def branch_selection(bits: Sequence[int], selection: str = "amortised",
                     weight_slots: str = "branch", weight_interval_std: str = "chunk") -> BranchSelection:
    """The `BranchSelection` of a model built for the bit-width tuple ``bits``.

    ``weight_slots='branch'`` (default, clean): branch g uses weight interval g, the partial slice
    its parent's; ``'position'`` (the official code): the slot is the branch's position among the
    selected ones, so physical branches share intervals across bit-widths.
    ``weight_interval_std``: how `initialize_intervals` sets a weight slot, ``'chunk'`` (default,
    clean: 3 std of the chunk it quantizes) or ``'filter'`` (the code: 3 std of output filter #slot).
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
        full_weight_slot=tuple(full_slot), partial_weight_slot=tuple(partial_slot),
        weight_interval_std=weight_interval_std)


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
    `MultiBranchResNet`, with the code's channel shuffle if ``config.channel_shuffle``) for
    ``config.bits`` in 2..8, with the ``config.selection`` table and ``config.weight_slots`` layout."""
    from jaxquant.models.multibranch import MultiBranchCifarResNet, MultiBranchCNN, MultiBranchResNet
    bits = validate_bits(config.bits)
    if int(config.branches) != NUM_BRANCHES:
        raise ConfigError(f"branches={config.branches}: MBQuant's selection tables are defined for "
                          f"{NUM_BRANCHES} branches; set branches={NUM_BRANCHES}")
    if config.first_last_bits:
        raise ConfigError("MBQuant keeps the stem and classifier full precision; set first_last_bits=0")
    selection = branch_selection(bits, str(config.selection), str(config.weight_slots),
                                 str(config.weight_interval_std))
    common = dict(num_classes=num_classes, bits=bits, selection=selection,
                  partial_widths=tuple(int(p) for p in config.partial_widths),
                  conv_batching=config.conv_batching, weight_gradient=config.conv_weight_gradient)
    if config.channel_shuffle and config.model not in ("resnet18", "resnet34"):
        raise ConfigError(f"channel_shuffle is the official ImageNet ResNet-18/34's (the CIFAR code has none); "
                          f"set channel_shuffle=False for model {config.model!r}")
    if config.model == "small_cnn":
        model = MultiBranchCNN(widths=tuple(config.widths), stem_pool=config.stem_pool, **common)
    elif config.model in ("resnet18", "resnet34"):
        if config.quantize_shortcut:
            raise ConfigError("MBQuant's ImageNet ResNet has multi-branch 2-bit shortcuts; set quantize_shortcut=False")
        stages = (2, 2, 2, 2) if config.model == "resnet18" else (3, 4, 6, 3)
        model = MultiBranchResNet(stage_sizes=stages, channel_shuffle=bool(config.channel_shuffle), **common)
        model.shuffle_indices()  # partial widths the shuffle's groups cannot split fail here
    elif config.model in MODELS:
        if config.preactivation or config.quantize_shortcut:
            raise ConfigError("MBQuant's CIFAR ResNet is post-activation with multi-branch 2-bit shortcuts; "
                              "set preactivation=False and quantize_shortcut=False")
        from jaxquant.methods import whole_width
        model = MultiBranchCifarResNet(depth=int(config.model[6:]), width=whole_width(config), **common)
    else:
        model = None
    if model is not None:
        model.resolved_partial_widths()  # a bad partial_widths fails here, not inside the first trace
        return model
    raise ConfigError(f"model {config.model!r} has no MBQuant multi-branch variant yet; choose one of {MODELS}")


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
        raise ConfigError(f"interval init needs one batch per bit-width ({len(trainer.bits)}), got {len(batches)}")

    @jax.jit
    def one(params, batch_stats, images, precision, key):
        x = trainer.preprocess(images, True, key) if trainer.preprocess is not None else images
        _, updates = trainer.model.apply({"params": params, "batch_stats": batch_stats}, x, precision,
                                         train=True, mutable=["batch_stats", INTERVAL_INIT])
        return updates.get("batch_stats", batch_stats), updates[INTERVAL_INIT]

    params, batch_stats = state.params, state.batch_stats
    for i, precision in enumerate(np.argsort(np.asarray(trainer.bits), kind="stable")):
        batch_stats, fresh = one(params, batch_stats, jnp.asarray(batches[i]), jnp.int32(precision),
                                 jax.random.fold_in(key, i))
        flat = flax.traverse_util.flatten_dict(params)
        flat.update(flax.traverse_util.flatten_dict(fresh))
        params = flax.traverse_util.unflatten_dict(flat)
    return state.replace(params=params, batch_stats=batch_stats)


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
        return self.positions * self.kernel ** 2 * self.c_in * self.c_out

    @property
    def partial_macs(self) -> int:
        return self.positions * self.kernel ** 2 * self.partial_in * self.partial_out


def cifar_resnet_convs(partial_widths: Sequence[int], depth: int = 20, width: int = 1,
                       image_size: int = 32) -> list[BranchConvSpec]:
    """The multi-branch convs of a post-activation CIFAR ResNet (stages 16/32/64 times ``width``,
    1x1 projection shortcuts at the stride-2 blocks), partial widths per stage. The first conv's
    partial reads the full stem copy; the last conv's partial outputs the full width."""
    if (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
    stages = tuple(16 * width * 2 ** s for s in range(3))
    return _resnet_convs(stages, partial_widths, (depth - 2) // 6, image_size, stem=stages[0])


def resnet18_convs(partial_widths: Sequence[int] = (40, 76, 184, 396), image_size: int = 224) -> list[BranchConvSpec]:
    """The multi-branch convs of ImageNet ResNet-18 (layer1..4 after the stem and max-pool)."""
    return _resnet_convs((64, 128, 256, 512), partial_widths, 2, image_size // 4, stem=64)


def multibranch_cnn_convs(widths: Sequence[int], partial_widths: Sequence[int] = (), image_size: int = 8,
                          stem_pool: bool = False) -> list[BranchConvSpec]:
    """The multi-branch 3x3 convs of `MultiBranchCNN` (``widths`` = FP stem width, then one body
    conv per entry) on ``image_size`` squares, wired as the model: the first conv's partial reads
    the full stem copy, the last conv's partial writes the full width, a 2x2 max-pool follows each
    conv while the map is at least 4x4 (``stem_pool`` halves it first). ``partial_widths`` as the
    model's (``()``: half of each body width but the last's)."""
    from jaxquant.models.multibranch import MultiBranchCNN
    widths = tuple(int(w) for w in widths)
    partial = MultiBranchCNN(widths=widths, partial_widths=tuple(partial_widths)).resolved_partial_widths()
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
        raise ConfigError(f"give one partial width per stage ({len(stages)}), got {tuple(partial_widths)}")
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
                convs.append(BranchConvSpec(f"{name}_shortcut", size * size, 1, c_prev, c, p_prev, p))
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
    return sum((full * c.macs + (c.partial_macs if has_partial else 0)) * WEIGHT_BITS * b for c in convs)


def plain_bitops(convs: Sequence[BranchConvSpec], b: int) -> int:
    """BitOPs of one plain network at b-bit weights and activations: ``MACs * b * b``."""
    return sum(c.macs for c in convs) * b * b


def bitops_table(convs: Sequence[BranchConvSpec], bits: Sequence[int] = tuple(range(2, 9)),
                 selection: str = "amortised") -> dict[int, tuple[int, int, float]]:
    """``{b: (multi-branch BitOPs, plain b*b BitOPs, ratio)}``."""
    table = {}
    for b in bits:
        ours, plain = bitops(convs, b, selection), plain_bitops(convs, b)
        table[b] = (ours, plain, ours / plain)
    return table


def partial_fraction(convs: Sequence[BranchConvSpec]) -> float:
    """The partial branch's MACs over one full branch's (1/2 makes odd b cost exactly b*b)."""
    return sum(c.partial_macs for c in convs) / sum(c.macs for c in convs)


def derive_partial_widths(stages: Sequence[int] = (16, 32, 64), depth: int = 20,
                          image_size: int = 32) -> tuple[int, ...]:
    """The CIFAR ResNet partial widths whose per-stage partial MACs are closest to half the
    stage's branch MACs (least squares over the three stages). Exhaustive search, about 2 s."""
    if tuple(stages) != tuple(16 * (stages[0] // 16) * 2 ** s for s in range(3)) or stages[0] % 16:
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
                    cost += (sum(c.partial_macs for c in stage) / sum(c.macs for c in stage)
                             - PARTIAL_MACS_FRACTION) ** 2
                if best_cost is None or cost < best_cost - 1e-15:
                    best, best_cost = (p0, p1, p2), cost
    return best


# CIFAR_RESNET20_PARTIAL_WIDTHS (11, 23, 43), the partial-branch widths of the 16/32/64 stages
# (`derive_partial_widths`), and RESNET18_PARTIAL_WIDTHS (40, 76, 184, 396), the official code's
# ImageNet ResNet-18 widths (``oneBit_outchannel``), live with the models that use them; imported above.


def format_bitops_table(convs: Sequence[BranchConvSpec], bits: Sequence[int] = tuple(range(2, 9)),
                        selection: str = "amortised") -> str:
    """A printable table: b, multi-branch BitOPs, plain b*b BitOPs, their ratio."""
    lines = [f"partial MACs / branch MACs = {partial_fraction(convs):.4f} (target {PARTIAL_MACS_FRACTION})",
             f"{'b':>2}  {'MBQuant BitOPs':>16}  {'plain b*b BitOPs':>16}  ratio"]
    for b, (ours, plain, ratio) in bitops_table(convs, bits, selection).items():
        lines.append(f"{b:>2}  {ours:>16,}  {plain:>16,}  {ratio:.4f}")
    return "\n".join(lines)


def main() -> None:
    """Print the derivation of the CIFAR ResNet-20 partial widths and the BitOPs tables."""
    derived = derive_partial_widths()
    print(f"CIFAR ResNet-20 (16/32/64): derived partial widths {derived}")
    print(format_bitops_table(cifar_resnet_convs(derived)))
    print("\nCIFAR ResNet-20, the official code's widths (16, 24, 48) in our wiring "
          "(the official wiring, per the digest: 1.08 / 1.048 / 1.034 at b = 3 / 5 / 7):")
    print(format_bitops_table(cifar_resnet_convs((16, 24, 48))))
    print(f"\nImageNet ResNet-18, official widths {RESNET18_PARTIAL_WIDTHS}:")
    print(format_bitops_table(resnet18_convs(RESNET18_PARTIAL_WIDTHS)))


if __name__ == "__main__":
    main()
