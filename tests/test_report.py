import json

from jaxquant.report import bits_label, format_table, plot_accuracy, save_results


def test_table_has_one_column_per_bit_width_and_blank_cells_for_missing():
    table = format_table({"a": {2: 0.5, 32: 0.9}, "b": {4: 0.75}}, title="T")
    lines = table.splitlines()
    assert lines[0] == "**T**"
    assert lines[2] == "| run | 2-bit | 4-bit | FP |"
    assert lines[4] == "| a | 50.00 |  | 90.00 |"
    assert lines[5] == "| b |  | 75.00 |  |"
    assert bits_label(32) == "FP" and bits_label(8) == "8-bit"


def test_results_json_and_plot(tmp_path):
    path = save_results(tmp_path, {2: 0.5, 32: 0.875}, {"method": "x"})
    assert json.loads(path.read_text()) == {"accuracy": {"2": 0.5, "32": 0.875}, "method": "x"}
    png = plot_accuracy({"a": {2: 0.5, 4: 0.6, 32: 0.9}}, tmp_path / "p.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
