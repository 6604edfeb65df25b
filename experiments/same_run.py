r"""Do two training runs end with the same parameters? Prints, for the latest checkpoint of each
workdir, whether the parameter and BatchNorm trees have the same structure and the largest
absolute difference of any leaf: the check that a refactor changed no behaviour (the same
config and seed before and after must give 0).

  python experiments/same_run.py RUN_A RUN_B

For example, the digits default before and after a change:

  git worktree add /tmp/before REV && (cd /tmp/before && PYTHONPATH=. python -m jaxquant.cli \
      train --workdir /tmp/a --no-progress)
  jaxquant train --workdir /tmp/b --no-progress && python experiments/same_run.py /tmp/a /tmp/b
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxquant.runs import load_run


def compare(a, b) -> dict[str, tuple[bool, float]]:
    """``{collection: (same tree structure, max |a - b| over its leaves)}`` for two states."""
    out = {}
    for name in ("params", "batch_stats"):
        left, right = getattr(a, name), getattr(b, name)
        same = jax.tree_util.tree_structure(left) == jax.tree_util.tree_structure(right)
        diff = float("nan")
        if same:
            leaves = zip(jax.tree_util.tree_leaves(left), jax.tree_util.tree_leaves(right))
            diff = max(
                (float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves),
                default=0.0,
            )
        out[name] = (same, diff)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    _, _, _, state_a, step_a = load_run(args.run_a)
    _, _, _, state_b, step_b = load_run(args.run_b)
    print(f"steps: {step_a} and {step_b}")
    for name, (same, diff) in compare(state_a, state_b).items():
        print(f"{name}: same structure {same}, max |difference| {diff:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
