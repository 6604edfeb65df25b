"""The verdict rule of experiments/seeded_claims.py: ahead by more than twice the standard error
of the difference of means holds, behind by as much does not, else within noise."""

import importlib.util
import math
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "seeded_claims.py"
spec = importlib.util.spec_from_file_location("seeded_claims", SCRIPT)
seeded_claims = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeded_claims)


def test_verdicts_follow_twice_the_standard_error():
    # means 61 and 60, sample variances 1 and 1, n = 3: standard error sqrt(2/3) = 0.816
    difference, se, word = seeded_claims.verdict([60.0, 61.0, 62.0], [59.0, 60.0, 61.0])
    assert difference == pytest.approx(1.0) and se == pytest.approx(math.sqrt(2 / 3))
    assert word == "within noise"
    assert seeded_claims.verdict([62.0, 62.5, 63.0], [60.0, 60.5, 61.0])[2] == "holds"
    assert seeded_claims.verdict([60.0, 60.5, 61.0], [62.0, 62.5, 63.0])[2] == "does not hold"
    assert seeded_claims.verdict([60.0], [59.0])[2] == "one seed: no verdict"


def test_table_lists_every_bit_width_and_seed():
    runs = {
        "A": [{2: 60.0, 4: 65.0}, {2: 61.0, 4: 66.0}],
        "B": [{2: 59.0, 4: 66.0}, {2: 58.0, 4: 65.5}],
    }
    text = seeded_claims.table("t", "A", "B", runs)
    assert "| 2 | 60.50 ± 0.71 | 58.50 ± 0.71 | +2.00 |" in text
    assert "| 4 | 65.50 ± 0.71 | 65.75 ± 0.35 | -0.25 |" in text
    assert "- A, seed by seed: 60.00 / 65.00; 61.00 / 66.00" in text
