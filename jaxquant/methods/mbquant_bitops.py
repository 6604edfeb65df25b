"""MBQuant's cost: BitOPs per bit-width of a multi-branch network against a plain b-bit one,
and the derivation of the partial-branch widths (``python -m jaxquant.methods.mbquant_bitops``
prints the tables).

A b-bit network runs ``floor(b/2)`` full 2-bit branches and, for odd b, a partial slice of
``f`` of a branch's MACs: ``BitOPs = MACs * 2 b (floor(b/2) + f)`` against ``MACs * b * b``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from jaxquant.errors import ConfigError
from jaxquant.methods.mbquant import (
    FULL_BRANCHES,
    PARTIAL_BRANCH,
    PARTIAL_MACS_FRACTION,
    WEIGHT_BITS,
    check_selection,
    validate_bits,
)
from jaxquant.models.multibranch import RESNET18_PARTIAL_WIDTHS

__all__ = [
    "BranchConvSpec",
    "cifar_resnet_convs",
    "resnet18_convs",
    "resnet50_convs",
    "mobilenet_v1_convs",
    "multibranch_cnn_convs",
    "bitops",
    "plain_bitops",
    "bitops_table",
    "partial_fraction",
    "derive_partial_widths",
    "format_bitops_table",
    "main",
]


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
    depthwise: bool = False  # MobileNetV1's depthwise convs: b-bit weights (c_in = partial_in = 1)

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


def resnet50_convs(
    partial_widths: Sequence[int] = (208, 416, 832, 2048),
    mid_partial_widths: Sequence[int] = (40, 80, 160, 320),
    image_size: int = 224,
) -> list[BranchConvSpec]:
    """The multi-branch convs of the ImageNet ResNet-50 (`MultiBranchBottleneckResNet`)."""
    convs, size, c_prev, p_prev = [], image_size // 4, 64, 64
    for s, blocks in enumerate((3, 4, 6, 3)):
        mid, p, pm = 64 * 2**s, partial_widths[s], mid_partial_widths[s]
        out = 4 * mid
        for blk in range(blocks):
            stride = 2 if s > 0 and blk == 0 else 1
            name = f"stage{s}_block{blk}"
            convs.append(BranchConvSpec(f"{name}_conv0", size * size, 1, c_prev, mid, p_prev, pm))
            size //= stride
            convs.append(BranchConvSpec(f"{name}_conv1", size * size, 3, mid, mid, pm, pm))
            last = s == 3 and blk == blocks - 1
            convs.append(
                BranchConvSpec(f"{name}_conv2", size * size, 1, mid, out, pm, out if last else p)
            )
            if blk == 0:
                convs.append(
                    BranchConvSpec(f"{name}_shortcut", size * size, 1, c_prev, out, p_prev, p)
                )
            c_prev, p_prev = out, p
    return convs


def mobilenet_v1_convs(
    partial_widths: Sequence[int] = (), image_size: int = 224
) -> list[BranchConvSpec]:
    """The convs of the multi-branch MobileNetV1 (`MultiBranchMobileNetV1`): per block a b-bit
    depthwise 3x3 (``depthwise=True``) and a multi-branch 2-bit pointwise 1x1."""
    from jaxquant.models.multibranch_mobilenet import mobilenet_v1_blocks

    _, blocks = mobilenet_v1_blocks(1.0, partial_widths)
    convs, size = [], image_size // 2
    for i, (c_in, c_out, stride, p_in, p_out) in enumerate(blocks):
        size //= stride
        convs.append(BranchConvSpec(f"block{i}_dw", size * size, 3, 1, c_in, 1, p_in, True))
        convs.append(BranchConvSpec(f"block{i}_pw", size * size, 1, c_in, c_out, p_in, p_out))
    return convs


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
    branch plus ``partial MACs * 2 * b`` for the partial slice (odd b); a depthwise conv's
    weights are b-bit, so ``MACs * b * b`` per selected chunk."""
    check_selection(selection)
    (b,) = validate_bits((b,))
    full = int(FULL_BRANCHES[selection][b].sum())
    has_partial = PARTIAL_BRANCH[selection][b] >= 0
    return sum(
        (full * c.macs + (c.partial_macs if has_partial else 0))
        * (b if c.depthwise else WEIGHT_BITS)
        * b
        for c in convs
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
# ImageNet ResNet-18 widths (``oneBit_outchannel``), live with the models that use them.


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
        "(the official wiring: 1.08 / 1.048 / 1.034 at b = 3 / 5 / 7):"
    )
    print(format_bitops_table(cifar_resnet_convs((16, 24, 48))))
    print(f"\nImageNet ResNet-18, official widths {RESNET18_PARTIAL_WIDTHS}:")
    print(format_bitops_table(resnet18_convs(RESNET18_PARTIAL_WIDTHS)))
    print("\nImageNet ResNet-50, official widths (208, 416, 832, 2048) / (40, 80, 160, 320):")
    print(format_bitops_table(resnet50_convs()))
    convs = mobilenet_v1_convs()
    print(
        "\nImageNet MobileNetV1, official widths (52, 40, 101, ..., 892, 1024); depthwise b-bit "
        "weights on the selected chunks, pointwise 2-bit branches:"
    )
    print(format_bitops_table(convs))
    print("  of which pointwise only:")
    print(format_bitops_table([c for c in convs if not c.depthwise]))


if __name__ == "__main__":
    main()
