"""experiments/same_run.py: runs of one config and seed compare equal; another seed does not."""

from __future__ import annotations

import importlib.util
import pathlib

from jaxquant import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("same_run", ROOT / "experiments" / "same_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_config_and_seed_give_zero_and_another_seed_does_not(tmp_path, capsys):
    args = [
        "--config.method=lsq",
        "--config.bits=(4,)",
        "--config.epochs=1",
        "--config.widths=(8, 8)",
    ]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        workdir = str(tmp_path / name)
        assert (
            cli.main(
                ["train", "--workdir", workdir, "--no-progress", f"--config.seed={seed}", *args]
            )
            == 0
        )
    same_run = _script()
    capsys.readouterr()
    assert same_run.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "params: same structure True, max |difference| 0\n" in out
    assert "batch_stats: same structure True, max |difference| 0\n" in out
    same_run.main([str(tmp_path / "a"), str(tmp_path / "c")])
    assert "params: same structure True, max |difference| 0\n" not in capsys.readouterr().out
