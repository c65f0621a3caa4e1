"""The shared checks and JSON helpers (gaincell.validation)."""

import json
import math

import pytest

from gaincell.errors import GainCellError
from gaincell.validation import check_output_file, first_difference, json_ready, merge_tables


def test_json_ready_turns_non_finite_numbers_into_null_with_a_reason():
    report = {"model": "m", "perplexity": {"ppl": math.nan, "nll": math.inf, "tokens": 5}, "rows": [1.0, -math.inf]}
    text = json.dumps(json_ready(report), allow_nan=False)  # strict JSON: no NaN / Infinity
    parsed = json.loads(text)
    assert parsed["perplexity"] == {"ppl": None, "nll": None, "tokens": 5} and parsed["rows"] == [1.0, None]
    assert parsed["non_finite"] == {
        "perplexity.ppl": "nan (not a finite number)",
        "perplexity.nll": "inf (not a finite number)",
        "rows.1": "-inf (not a finite number)",
    }
    assert json_ready({"a": 1.0}) == {"a": 1.0}  # nothing to explain: no extra field


def test_merge_tables_keeps_siblings_at_any_depth():
    base = {"periphery": {"adc": {"low": -1.0, "high": 1.0, "levels": 32}, "s_sat": 80.0}, "window": 1024}
    merged = merge_tables(base, {"periphery": {"adc": {"levels": 16}}, "window": 64})
    assert merged == {"periphery": {"adc": {"low": -1.0, "high": 1.0, "levels": 16}, "s_sat": 80.0}, "window": 64}
    assert base["periphery"]["adc"]["levels"] == 32  # the base is not changed


def test_first_difference_names_the_dotted_field():
    assert first_difference({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ("a.c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1}) is None


def test_an_output_file_may_be_in_a_new_folder_but_not_under_a_file(tmp_path):

    check_output_file("--output", str(tmp_path / "new" / "deeper" / "results.json"))  # folders are made on writing
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(
        GainCellError, match=r"^--output must be a file in a folder, got '.*notes.txt/r.json \(.*notes.txt is a file\)'$"
    ):
        check_output_file("--output", str(tmp_path / "notes.txt" / "r.json"))
    for value in ("", ".", str(tmp_path)):
        with pytest.raises(GainCellError, match="^--output must be a file name to write the results to"):
            check_output_file("--output", value)
