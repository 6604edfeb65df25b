"""`jaxquant compare`: the digits compare end to end (every method row and bit-width column, the
JSON equal to the runs' results, the plots, a rerun that trains nothing), its cost definitions,
the CIFAR-10 config's plan, and bad compare configs as one-line errors (exit 2)."""

import json
import math
import pathlib
import time

import pytest

from jaxquant import cli, compare
from jaxquant.configs.compare import every_method
from jaxquant.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "experiments" / "configs" / "compare_digits.py"
CIFAR = ROOT / "experiments" / "configs" / "compare_cifar10_cpu.py"
CIFAR_EQUAL = ROOT / "experiments" / "configs" / "compare_cifar10_equal_epochs_cpu.py"
PNGS = ("accuracy_vs_bits.png", "accuracy_vs_bytes.png", "accuracy_vs_bitops.png")


def _mtimes(workdir: pathlib.Path) -> dict[str, int]:
    """Every checkpoint file's and PTQ result's modification time."""
    paths = [p for p in workdir.glob("*/checkpoints/**/*") if p.is_file()]
    paths += list(workdir.glob("*/ptq_results.json")) + list(workdir.glob("*/results.json"))
    return {str(p): p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compare") / "digits"
    start = time.perf_counter()
    assert cli.main(["compare", str(DIGITS), "--workdir", str(workdir), "--no-progress"]) == 0
    print(f"compare_digits: {time.perf_counter() - start:.0f} s")
    return workdir


@pytest.mark.slow
def test_digits_table_json_and_plots(digits):
    config = compare.load(DIGITS)
    entries = compare.plan(config, digits)
    table = (digits / "compare.md").read_text()
    print(table)
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for column in ("2-bit", "4-bit", "8-bit", "FP", "bytes (2, 4, 8-bit)", "BitOPs 2-bit"):
        assert f"| {column} |" in header
    payload = json.loads((digits / "compare.json").read_text())
    assert payload["columns"] == [2, 4, 8, 32]
    for entry in entries:
        row = next(line for line in table.splitlines() if line.startswith(f"| {entry.label} |"))
        numbers = payload["entries"][entry.name]
        if entry.kind == "train":
            expected, seconds = {}, 0.0
            for run in entry.runs:
                results = json.loads((run.workdir / "results.json").read_text())
                keep = [str(run.bits)] if run.bits else ["2", "4", "8", "32"]
                expected.update({b: a for b, a in results["accuracy"].items() if b in keep})
                seconds += results["train_seconds"]
            assert numbers["train_seconds"] == round(seconds, 1)
        else:
            results = json.loads((entry.runs[0].workdir / "ptq_results.json").read_text())
            expected = {
                s[1:].split("A")[0]: a for s, a in results["accuracy"][entry.method].items()
            }
        assert numbers["accuracy"] == expected, entry.name
        assert len(row.split("|")) == len(header.split("|"))
        if entry.name != "fp":  # every integer bit-width has an accuracy and BitOPs
            assert sorted(numbers["accuracy"], key=int)[:3] == ["2", "4", "8"]
            assert sorted(numbers["bitops"], key=int) == ["2", "4", "8"]
    for png in PNGS:
        assert (digits / png).stat().st_size > 1000


@pytest.mark.slow
def test_digits_costs(digits):
    """Bytes and BitOPs by their definitions (docs/compare.md), recomputed by hand for the
    SmallCNN 8 -> 16 -> 16 on 8x8 digits (body: conv0 8->16 at 8x8, conv1 16->16 at 4x4)."""
    rows = json.loads((digits / "compare.json").read_text())["entries"]
    macs = 64 * 9 * 8 * 16 + 16 * 9 * 16 * 16
    body = 9 * 8 * 16 + 9 * 16 * 16
    for name in ("lsq", "lsq_br", "anyprecision", "vertical", "bitsplit", "rtn"):
        assert rows[name]["bitops"] == {str(b): b * b * macs for b in (2, 4, 8)}, name
    # MBQuant (4 -> 8 -> 8, four 2-bit branches): floor(b/2) branches of 2 x b bits.
    branch_macs = 64 * 9 * 4 * 8 + 16 * 9 * 8 * 8
    assert rows["mbquant"]["bitops"] == {str(b): (b // 2) * 2 * b * branch_macs for b in (2, 4, 8)}
    # FP: every parameter and BatchNorm statistic float32 (its LSQ steps too, unused at 32 bits);
    # a dedicated b-bit model packs its body kernels at b bits.
    fp = rows["fp"]["bytes"]["32"]
    lsq = rows["lsq"]["bytes"]
    for b in (2, 4, 8):
        assert lsq[str(b)] == fp - 4 * body + math.ceil(body * b / 8)
    assert rows["lsq"]["bytes_all"] == sum(lsq.values())
    assert rows["vertical"]["bytes_all"] == rows["vertical"]["bytes"]["8"]
    assert rows["vertical"]["bytes"]["8"] - rows["vertical"]["bytes"]["4"] == 4 * (
        math.ceil(9 * 8 * 16 / 8) + math.ceil(9 * 16 * 16 / 8)
    )
    assert rows["anyprecision"]["bytes_all"] > fp  # latent FP weights and 3 BatchNorm rows


@pytest.mark.slow
def test_digits_rerun_trains_nothing(digits, capsys):
    before = _mtimes(digits)
    start = time.perf_counter()
    assert cli.main(["compare", str(DIGITS), "--workdir", str(digits), "--no-progress"]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "jaxquant train" not in out and "jaxquant ptq" not in out
    assert out.count(": finished, reading") == 12
    heads = [line.split(",")[0] for line in out.splitlines() if line.startswith("=== [")]
    assert heads == [f"=== [{k}/12" for k in range(1, 13)]  # each run counted
    assert _mtimes(digits) == before
    assert seconds < 60


def test_cifar10_config_loads_and_plans(tmp_path):
    config = compare.load(CIFAR, {"base.data_dir": "/nowhere"})
    entries = compare.plan(config, tmp_path)
    assert [e.name for e in entries] == [
        "lsq", "lsq_br", "anyprecision", "vertical", "mbquant", "fp", "bitsplit", "rtn",
    ]  # fmt: skip
    assert [r.name for r in entries[0].runs] == ["lsq_2", "lsq_3", "lsq_4", "lsq_8"]
    assert entries[1].runs[0].config.epochs == 6
    assert tuple(entries[4].runs[0].config.widths) == (8, 16, 32, 32)
    assert entries[6].runs[0].config.settings == ("W2A2", "W3A3", "W4A4", "W8A8")
    assert all(r.config.data_dir == "/nowhere" for e in entries[:6] for r in e.runs)
    assert not list(tmp_path.iterdir())  # planning writes nothing


def test_cifar10_equal_epochs_config_changes_only_the_budgets(tmp_path):
    """Every trained run of the equal-epochs compare has the base's epochs; the runs that already
    had them are the same configs as in the CIFAR-10 compare, so its runs can be reused."""
    first = compare.plan(compare.load(CIFAR, {"base.data_dir": "/nowhere"}), tmp_path)
    equal = compare.plan(compare.load(CIFAR_EQUAL, {"base.data_dir": "/nowhere"}), tmp_path)
    assert [e.name for e in equal] == [e.name for e in first]
    for a, b in zip(first, equal):
        for run_a, run_b in zip(a.runs, b.runs):
            if b.kind == "train":
                assert run_b.config.epochs == 4, run_b.name
            same = a.name in ("lsq", "vertical", "fp", "bitsplit", "rtn")
            assert (run_a.config.to_dict() == run_b.config.to_dict()) == same, run_b.name
    assert equal[1].runs[0].config.binreg.start_epochs == -1.0


def test_every_method_merges_overrides_and_refuses_unknown_names():
    entries = every_method(mbquant={"widths": (4, 8, 8), "method": "mbquant"})
    by_name = {e["name"]: e for e in entries}
    assert list(by_name) == [
        "lsq", "lsq_br", "anyprecision", "vertical", "mbquant", "fp", "bitsplit", "rtn",
    ]  # fmt: skip
    assert by_name["mbquant"]["overrides"] == {"method": "mbquant", "widths": (4, 8, 8)}
    assert by_name["lsq_br"] == dict(
        name="lsq_br",
        label="LSQ + BR (one model per bit-width)",
        kind="train",
        per_bits=True,
        overrides={"method": "binreg"},
    )
    assert by_name["fp"]["overrides"] == {"method": "lsq", "bits": (32,)}
    assert {by_name[n]["source"] for n in ("bitsplit", "rtn")} == {"fp"}
    # the dicts are fresh: changing one call's entries leaves the next call's alone
    by_name["lsq"]["overrides"]["epochs"] = 1
    assert every_method()[0]["overrides"] == {"method": "lsq"}
    with pytest.raises(ConfigError, match=r"unknown train entries \['bitsplit'\]"):
        every_method(bitsplit={"epochs": 1})


BAD_ENTRIES = {
    "dict(name='a', kind='qat')": "kind must be one of",
    "dict(name='a b', kind='train')": "name must be an identifier",
    "dict(name='a', kind='train', overrides={'nope': 1})": "unknown config key 'nope'",
    "dict(name='a', kind='train', overrides={'epochs': 'x'})": "config.epochs expects",
    "dict(name='a', kind='train', per_bits=True, overrides={'method': 'mbquant'}, x=1)": (
        "unknown key(s) ['x']"
    ),
    "dict(name='a', kind='ptq', source='b', method='bitsplit')": "source must name a train entry",
    "dict(name='a', kind='train', overrides={'method': 'mbquant', 'bits': (2, 32)})": (
        "compare entry 'a'"
    ),
}


@pytest.mark.parametrize("entry", sorted(BAD_ENTRIES))
def test_bad_entry_is_one_line(tmp_path, capsys, entry):
    path = tmp_path / "bad.py"
    path.write_text(
        "import ml_collections\nfrom jaxquant.configs.base import base_config\n\n"
        "def get_config():\n    c = ml_collections.ConfigDict()\n    c.base = base_config()\n"
        f"    c.bits = (2, 4)\n    c.entries = ({entry},)\n    return c\n"
    )
    workdir = tmp_path / "runs"
    assert cli.main(["compare", str(path), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and BAD_ENTRIES[entry] in err, err
    assert not workdir.exists()


def test_bad_compare_configs(tmp_path, capsys):
    assert cli.main(["compare", str(ROOT / "jaxquant" / "configs" / "default.py")]) == 2
    assert "is not a compare config" in capsys.readouterr().err
    assert cli.main(["compare", str(DIGITS), "--config.bits=(1,)"]) == 2
    assert "bits must be bit-widths" in capsys.readouterr().err
    entry = "dict(name='fp', kind='train', overrides={'bits': (2,)}), "
    entry += "dict(name='p', kind='ptq', source='fp', method='bitsplit')"
    path = tmp_path / "bad.py"
    path.write_text(
        "import ml_collections\nfrom jaxquant.configs.base import base_config\n\n"
        "def get_config():\n    c = ml_collections.ConfigDict()\n    c.base = base_config()\n"
        f"    c.bits = (2, 4)\n    c.entries = ({entry})\n    return c\n"
    )
    assert cli.main(["compare", str(path), "--workdir", str(tmp_path / "w")]) == 2
    assert "must be one run with 32 among its bits" in capsys.readouterr().err
