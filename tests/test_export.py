"""The vertical-layered artefact (`jaxquant.export`, `jaxquant export`): one tiny vertical run on
digits, exported once; every bit-width read back as a prefix of the file must be the trained
model at that bit-width, bit for bit, and a damaged file must say so."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from helpers import assert_user_error
from numpy.testing import assert_allclose, assert_array_equal

from jaxquant import cli, export, runs
from jaxquant import config as config_lib
from jaxquant import quantizers as q
from jaxquant.errors import BitWidthError, CheckpointError, ConfigError

BITS = tuple(range(2, 9))  # what the artefact holds (basic layer 2 bits, source 8 bits)
TINY = ["--config.epochs=1", "--config.widths=(8, 8, 8)", "--config.batch_size=64", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished vertical run (bits 2, 4, 8, FP), its artefact and the trained model for 2..8 bits
    built the way export builds it (untrained 3, 5, 6, 7 bits borrow BatchNorm)."""
    from jaxquant.data import make_preprocess
    from jaxquant.methods import build_model, get_method, vertical

    tmp = tmp_path_factory.mktemp("vertical")
    workdir = tmp / "w"
    assert (
        cli.main(
            [
                "train",
                "--config.method=vertical",
                "--config.bits=(2, 4, 8, 32)",
                *TINY,
                "--workdir",
                str(workdir),
            ]
        )
        == 0
    )
    path = tmp / "model.vl"
    summary = export.export_vertical(workdir, path, log=lambda _: None)

    config, dataset, trainer, state, step = runs.load_run(workdir, None)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables, _ = vertical.expanded_variables(
        config, dataset.num_classes, variables, BITS, dataset.image_shape
    )
    spec = get_method("vertical").quant_spec(config)
    model = build_model(config_lib.with_bits(config, BITS), dataset.num_classes, spec)
    preprocess = make_preprocess(dataset.mean, dataset.std)
    apply = jax.jit(lambda v, x, p: model.apply(v, preprocess(x, False, None), p, train=False))
    images = np.asarray(dataset.test_images[:96])
    trained = {k: np.asarray(apply(variables, images, BITS.index(k))) for k in BITS}
    return dict(
        workdir=workdir,
        path=path,
        summary=summary,
        state=state,
        images=images,
        trained=trained,
        dataset=dataset,
        data=path.read_bytes(),
    )


def header_of(path):
    with open(path, "rb") as f:
        return export._read_header(f, path)


def write(tmp_path, data: bytes, name="damaged.vl") -> pathlib.Path:
    out = tmp_path / name
    out.write_bytes(data)
    return out


# ----------------------------------------------------------------------------------------------
# Every bit-width is a prefix, and exactly the trained model.


def test_every_bit_width_is_the_trained_model_exactly_and_a_growing_prefix(run):
    summary, path = run["summary"], run["path"]
    assert summary["bits"] == BITS and summary["layers"] == 2
    assert summary["file_bytes"] == path.stat().st_size
    header, _ = header_of(path)
    plane_bytes = sum(
        -(-int(np.prod(layer["shape"])) // 8) for layer in header["layers"]
    )  # 8 weights a byte
    read = []
    for k in BITS:
        loaded = export.load_vertical(path, k)
        assert loaded.bits == k and loaded.file_bytes == summary["file_bytes"]
        assert loaded.bytes_read == summary["bytes_for_bits"][k]
        read.append(loaded.bytes_read)
        assert_array_equal(np.asarray(loaded(run["images"])), run["trained"][k])
        for layer in ("conv0", "conv1"):
            trained = run["state"].params[layer]
            params = loaded.variables["params"][layer]
            assert_array_equal(
                params["codes"], q.vertical_codes(trained["kernel"], trained["weight_step"], k)
            )
            assert float(params["code_step"]) == float(trained["weight_step"]) * 2.0 ** (8 - k)
    assert all(b > a for a, b in zip(read, read[1:]))
    assert all(b - a == plane_bytes for a, b in zip(read, read[1:]))  # one enhance plane per layer
    assert read[-1] == summary["file_bytes"]  # 8 bits read the whole file
    # The trained model is not the same at every bit-width (the test above could not pass
    # trivially).
    assert not np.array_equal(run["trained"][2], run["trained"][8])


@pytest.mark.parametrize("k", [2, 3, 8])
@pytest.mark.parametrize("execution", ["integer", "bit_serial"])
def test_integer_and_bit_serial_execution_match_fake_quant(run, k, execution):
    loaded = export.load_vertical(run["path"], k, execution=execution)
    assert loaded.model.spec.execution == execution
    logits, expected = np.asarray(loaded(run["images"])), run["trained"][k]
    assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bit_widths_outside_the_file_raise(run):
    for k in (1, 9, 32):
        with pytest.raises(BitWidthError, match="holds bit-widths 2..8"):
            export.load_vertical(run["path"], k)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no artefact"):
        export.load_vertical(tmp_path / "absent.vl", 4)


# ----------------------------------------------------------------------------------------------
# Truncated and corrupted files.


def test_truncated_files_raise_checkpoint_error(run, tmp_path):
    data = run["data"]
    header, data_start = header_of(run["path"])
    cuts = {
        "empty": (0, "truncated"),
        "inside the magic": (2, "truncated"),
        "inside version and length": (10, "truncated"),
        "inside the header": (16 + (data_start - 20) // 2, "truncated inside its header"),
        "inside the header CRC": (data_start - 2, "truncated inside its header"),
        "inside the arrays": (data_start + header["arrays_end"] // 2, "truncated"),
        "before the planes": (data_start + header["arrays_end"], "truncated"),
    }
    for name, (cut, match) in cuts.items():
        damaged = write(tmp_path, data[:cut])
        for k in (2, 8):
            with pytest.raises(CheckpointError, match=match):
                export.load_vertical(damaged, k)
    # Inside the planes the 8-bit model needs: the error says how many bytes it needs.
    damaged = write(tmp_path, data[:-1])
    with pytest.raises(
        CheckpointError, match=f"needs {len(data)} bytes, the file has {len(data) - 1}"
    ):
        export.load_vertical(damaged, 8)


def test_a_truncated_file_still_serves_the_bit_widths_its_prefix_holds(run, tmp_path):
    needed = run["summary"]["bytes_for_bits"]
    damaged = write(tmp_path, run["data"][: needed[4]])
    for k in (2, 4):
        loaded = export.load_vertical(damaged, k)
        assert loaded.bytes_read == needed[k]
        assert_array_equal(np.asarray(loaded(run["images"])), run["trained"][k])
    for k in (5, 8):
        with pytest.raises(CheckpointError, match="truncated"):
            export.load_vertical(damaged, k)
    damaged = write(tmp_path, run["data"][: needed[6] - 1])  # one byte short of 6 bits
    export.load_vertical(damaged, 5)
    with pytest.raises(CheckpointError, match=f"the 6-bit model needs {needed[6]} bytes"):
        export.load_vertical(damaged, 6)


def flipped(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0xFF
    return bytes(damaged)


def test_corrupted_bytes_raise_checkpoint_error(run, tmp_path):
    data = run["data"]
    header, data_start = header_of(run["path"])
    array = header["arrays"][len(header["arrays"]) // 2]
    cases = {
        "magic": (1, "bad magic"),
        "version": (4, "format version"),
        "header length, low byte": (8, "corrupted"),
        "header length, high bytes": (11, "corrupted"),  # (asked read() for 4 GB before the fix)
        "header length, byte 4": (12, "corrupted"),
        "header length, top byte": (
            15,
            "corrupted",
        ),  # (MemoryError / OverflowError before the fix)
        "header JSON": (16 + 30, "corrupted header"),
        "header CRC": (data_start - 1, "corrupted header"),
        "an array": (data_start + array["offset"] + array["nbytes"] // 2, "CRC mismatch"),
    }
    for name, (at, match) in cases.items():
        damaged = write(tmp_path, flipped(data, at))
        for k in (2, 8):
            with pytest.raises(CheckpointError, match=match):
                export.load_vertical(damaged, k)


def test_a_corrupted_plane_breaks_only_the_bit_widths_that_read_it(run, tmp_path):
    header, data_start = header_of(run["path"])
    plane = header["layers"][1]["planes"][5]  # the 6th plane (0-based 5) of the second layer
    at = data_start + plane["offset"] + 3
    damaged = write(tmp_path, flipped(run["data"], at))
    assert_array_equal(
        np.asarray(export.load_vertical(damaged, 5)(run["images"])), run["trained"][5]
    )
    for k in (6, 8):
        with pytest.raises(
            CheckpointError, match=f"CRC mismatch at byte {data_start + plane['offset']}"
        ):
            export.load_vertical(damaged, k)


# ----------------------------------------------------------------------------------------------
# What cannot be exported.


def test_only_a_floor_cascade_vertical_run_exports_and_nothing_is_overwritten(run, tmp_path):
    import shutil

    out = tmp_path / "keep.vl"
    out.write_bytes(b"the user's file")
    # A round-clip cascade has the same parameters (the checkpoint restores) but no bit planes.
    round_clip = tmp_path / "round_clip"
    shutil.copytree(run["workdir"], round_clip)
    config = json.loads((round_clip / "config.json").read_text())
    (round_clip / "config.json").write_text(json.dumps({**config, "cascade": "round_clip"}))
    with pytest.raises(ConfigError, match="cascade 'round_clip'"):
        export.export_vertical(round_clip, out, dataset=run["dataset"], log=lambda _: None)
    with pytest.raises(BitWidthError, match="basic_bits"):
        export.export_vertical(
            run["workdir"], out, basic_bits=9, dataset=run["dataset"], log=lambda _: None
        )
    # A trained LSQ run.
    lsq = tmp_path / "lsq"
    assert (
        cli.main(
            [
                "train",
                "--config.method=lsq",
                "--config.bits=(4,)",
                "--config.epochs=1",
                "--config.widths=(8, 8, 8)",
                "--config.batch_size=479",
                "--no-progress",
                "--workdir",
                str(lsq),
            ]
        )
        == 0
    )
    with pytest.raises(ConfigError, match="trained method 'lsq'"):
        export.export_vertical(lsq, out, dataset=run["dataset"], log=lambda _: None)
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.vl", "lsq", "round_clip"]


def test_a_smaller_basic_layer_is_a_longer_file_with_the_same_models(run, tmp_path):
    summary = export.export_vertical(
        run["workdir"], tmp_path / "b1.vl", basic_bits=1, dataset=run["dataset"], log=lambda _: None
    )
    assert summary["bits"] == tuple(range(1, 9))
    header, _ = header_of(tmp_path / "b1.vl")
    assert header["basic_bits"] == 1 and header["bits"] == list(range(1, 9))
    # Same planes, one more set of per-precision rows: the 8-bit model reads the whole file.
    assert summary["bytes_for_bits"][8] == summary["file_bytes"] > run["summary"]["file_bytes"]
    loaded = export.load_vertical(tmp_path / "b1.vl", 4)
    assert_array_equal(np.asarray(loaded(run["images"])), run["trained"][4])


# ----------------------------------------------------------------------------------------------
# The CLI.


def test_cli_export_prints_one_row_per_bit_width(run, tmp_path, capsys):
    out = tmp_path / "cli.vl"
    code = cli.main(["export", "--workdir", str(run["workdir"]), "--out", str(out)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert out.read_bytes() == run["data"]  # the export is deterministic
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [int(c[0]) for c in cells] == list(BITS)
    assert [int(c[1].replace(",", "")) for c in cells] == [
        run["summary"]["bytes_for_bits"][k] for k in BITS
    ]
    assert cells[-1][2] == "100.0%"
    # The loaded models are the trained ones: the same test accuracy as training reported.
    accuracy = json.loads((run["workdir"] / "results.json").read_text())["accuracy"]
    assert [c[3] for c in cells] == [f"{100.0 * accuracy[str(k)]:.2f}" for k in BITS]


def test_cli_export_of_a_missing_workdir_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "x.vl"
    code = cli.main(["export", "--workdir", str(tmp_path / "absent"), "--out", str(out)])
    _, err = capsys.readouterr()
    assert_user_error(code, err, "config.json")
    assert not out.exists()


def test_cli_eval_of_a_vertical_run_reports_every_bit_width_and_names_the_untrained(run, capsys):
    """Trained on (2, 4, 8, FP), evaluated at 2..8 and FP; the untrained 3, 5, 6, 7 are named, and
    each accuracy equals the model loaded from the artefact at that bit-width."""
    assert cli.main(["eval", "--workdir", str(run["workdir"])]) == 0
    out = capsys.readouterr().out
    assert "not trained, run from the cascade with borrowed BatchNorm: 3, 5, 6, 7-bit" in out
    results = json.loads((run["workdir"] / "results.json").read_text())
    assert results["trained_bits"] == [2, 4, 8, 32]
    assert sorted(int(b) for b in results["accuracy"]) == [*BITS, 32]
    dataset = run["dataset"]
    for k in BITS:
        loaded = export.load_vertical(run["path"], k)
        predictions = np.argmax(np.asarray(loaded(dataset.test_images)), -1)
        assert results["accuracy"][str(k)] == pytest.approx(
            np.mean(predictions == dataset.test_labels), abs=1e-12
        )


def test_a_run_config_written_before_a_key_existed_gets_its_default(tmp_path):
    from jaxquant.configs.base import base_config

    old = base_config().to_dict()
    del old["image_size"], old["data_workers"]  # keys added with ImageNet streaming
    old["bits"] = [2, 32]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = runs.config_from_json(tmp_path / "config.json")
    assert config.image_size == 224 and config.data_workers == 8 and config.bits == (2, 32)
