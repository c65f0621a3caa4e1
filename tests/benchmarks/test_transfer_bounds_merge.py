"""benchmarks/transfer_bounds.py --merge: groups of layers trained apart make one table over all their
layers, the mean weighted by layer (not by group), a row counted only where every group has it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import transfer_bounds  # noqa: E402


def group(out: Path, tag: str, layers: list[int], rows: dict[str, list[float]]) -> None:
    folder = out / f"transfer-bounds-smollm2-{tag}"
    folder.mkdir(parents=True)
    found = {
        "settings": {"layers": layers},
        "reference": {"original": 21.0, "window": 21.0},
        "rows": {
            name: {
                "per_layer": {str(i): v for i, v in zip(layers, values, strict=True)},
                "perplexity": 22.0 + len(layers),
                "train_seconds": 100.0,
                "tokens": 1000,
            }
            for name, values in rows.items()
        },
    }
    (folder / "results.json").write_text(json.dumps(found))


def test_merge_weights_every_layer_once_and_names_incomplete_rows(tmp_path):
    group(tmp_path, "a", [0, 5, 10], {"lr-x3": [0.1, 0.2, 0.3], "extra": [0.0, 0.0, 0.0]})
    group(tmp_path, "b", [1], {"lr-x3": [0.6]})
    merged = transfer_bounds.merge_groups(tmp_path, "smollm2", ["a", "b"], "all")
    row = merged["rows"]["lr-x3"]
    assert row["mean_layer"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.6) / 4)  # by layer: the group means give 0.4
    assert list(row["per_layer"]) == ["0", "1", "5", "10"]
    assert row["group_perplexity"] == {"a": 25.0, "b": 23.0}
    assert row["train_seconds"] == 200.0
    assert merged["incomplete"] == {"extra": ["b"]}
    table = (tmp_path / "transfer-bounds-smollm2-all" / "results.md").read_text()
    assert "| lr-x3 | 0.300 | 1 of 4 | L1 0.600 | 23.00–25.00 | 200 |" in table
    assert json.loads((tmp_path / "transfer-bounds-smollm2-all" / "results.json").read_text()) == merged


def test_merge_refuses_overlapping_layers_and_missing_runs(tmp_path):
    group(tmp_path, "a", [0, 1], {"paper": [0.1, 0.2]})
    group(tmp_path, "b", [1, 2], {"paper": [0.1, 0.2]})
    with pytest.raises(SystemExit, match="overlap"):
        transfer_bounds.merge_groups(tmp_path, "smollm2", ["a", "b"], "all")
    with pytest.raises(SystemExit, match="no results for tag 'c'"):
        transfer_bounds.merge_groups(tmp_path, "smollm2", ["a", "c"], "all")
