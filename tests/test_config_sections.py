"""Method config sections (``config.<method>.<key>``) and the deprecated flat keys of earlier
releases: config files, command-line overrides, configs built in code and stored runs."""

from __future__ import annotations

import json
import pathlib

import ml_collections
import pytest

from jaxquant import config as config_lib
from jaxquant.configs.base import base_config
from jaxquant.errors import ConfigError
from jaxquant.methods import METHODS, binreg, build_trainer, mbquant, vertical
from jaxquant.runs import config_from_json


def test_each_method_section_has_its_files_defaults():
    config = base_config()
    assert config.mbquant.to_dict() == dict(mbquant.SECTION)
    assert config.vertical.to_dict() == dict(vertical.SECTION)
    assert config.binreg.to_dict() == dict(binreg.SECTION)
    flat = {old for m in METHODS.values() for old in m.legacy_keys}
    assert flat and not flat & set(config.keys())  # no flat method key remains at the top
    assert {"selection", "cascade", "binreg_lambda"} <= flat


def test_a_config_file_with_flat_keys_loads_into_the_sections(tmp_path, capsys):
    path = tmp_path / "old.py"
    path.write_text(
        "from jaxquant.configs.base import base_config\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.method = 'mbquant'\n"
        "    c.selection = 'naive'\n"
        "    c.partial_widths = [3]\n"
        "    c.binreg_lambda = 0.25\n"
        "    return c\n"
    )
    config = config_lib.load_config(path)
    assert config.mbquant.selection == "naive" and config.mbquant.partial_widths == (3,)
    assert config.binreg.lambda_ == 0.25
    assert not {"selection", "partial_widths", "binreg_lambda"} & set(config.keys())
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all("deprecated" in line for line in lines)
    assert any(
        "config.selection is deprecated" in line and "use config.mbquant.selection" in line
        for line in lines
    )


def test_a_flat_override_sets_the_section(capsys):
    config = base_config()
    config_lib.override(config, "cascade", "round_clip")
    config_lib.override(config, "binreg_schedule", "joint")
    config_lib.override(config, "mbquant.weight_slots", "position")
    assert config.vertical.cascade == "round_clip" and config.binreg.schedule == "joint"
    assert config.mbquant.weight_slots == "position"
    err = capsys.readouterr().err
    assert err.count("deprecated") == 2 and "use config.vertical.cascade" in err
    with pytest.raises(ConfigError, match="unknown config key 'mbquant.nope'"):
        config_lib.override(config, "mbquant.nope", "1")


def test_a_config_built_in_code_with_a_flat_key_is_honoured(capsys):
    from jaxquant.data import load_dataset

    config = base_config()
    config.method, config.bits, config.widths, config.epochs = "mbquant", (2, 4), (4, 8), 1
    config.selection = "naive"  # an older flat key, set in code
    trainer = build_trainer(config, load_dataset("digits"), 2)
    assert config.mbquant.selection == "naive" and "selection" not in config
    assert trainer.model.selection == mbquant.branch_selection((2, 4), "naive")
    assert "config.selection is deprecated" in capsys.readouterr().err


def test_a_run_written_with_flat_keys_loads_silently(tmp_path: pathlib.Path, capsys):
    old = base_config().to_dict()
    for name in ("mbquant", "vertical", "binreg"):
        del old[name]
    old.update(method="vertical", cascade="round_clip", source_bits=6, binreg_lambda=0.5)
    old["partial_widths"] = [5, 9]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = config_from_json(tmp_path / "config.json")
    assert isinstance(config, ml_collections.ConfigDict)
    assert (config.vertical.cascade, config.vertical.source_bits) == ("round_clip", 6)
    assert config.binreg.lambda_ == 0.5 and config.mbquant.partial_widths == (5, 9)
    assert config.mbquant.selection == "amortised"  # keys it did not have take their defaults
    assert capsys.readouterr().err == ""
