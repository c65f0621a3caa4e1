"""benchmarks/budget_to_target.py: the power law g = c·N^(−α) fitted to a gap curve, the budget it names for
a target gap, and the whole table read off the committed real-model results."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import budget_to_target  # noqa: E402


def test_the_fit_recovers_a_known_power_law():
    points = [(n, 2.0 * n**-0.3) for n in (1e3, 1e4, 1e5, 1e6)]
    fit = budget_to_target.fit_power_law(points)
    assert fit["alpha"] == pytest.approx(0.3)
    assert fit["c"] == pytest.approx(2.0)
    assert fit["points"] == 4 and fit["tokens"] == [1e3, 1e6]


def test_the_fit_refuses_what_has_no_logarithm_or_no_spread():
    assert budget_to_target.fit_power_law([(1e3, 0.5), (1e4, -0.1)])["alpha"] is None
    assert budget_to_target.fit_power_law([(1e3, 0.5), (1e3, 0.4)])["alpha"] is None


def test_a_growing_gap_gets_a_negative_exponent_and_no_budget():
    fit = budget_to_target.fit_power_law([(1e6, 0.4), (4e6, 0.5), (8e6, 0.6)])
    assert fit["alpha"] < 0
    budget = budget_to_target.budget_for(1e6, 0.6, 0.4, fit["alpha"])
    assert budget["tokens"] is None and "does not shrink" in budget["why"]


def test_the_budget_is_the_end_scaled_by_the_gap_ratio_to_the_power_one_over_alpha():
    # g = c·N^(−½): halving the gap takes four times the tokens
    assert budget_to_target.budget_for(1e5, 1.0, 0.5, 0.5) == {"tokens": pytest.approx(4e5), "why": None}
    met = budget_to_target.budget_for(1e5, 0.3, 0.5, 0.5)
    assert met["tokens"] == 1e5 and met["why"] == "met at the measured budget"


def test_the_committed_results_give_a_table_a_plot_and_the_measured_state(tmp_path):
    found = budget_to_target.main(["--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", "curves.png"}
    assert json.loads((tmp_path / "results.json").read_text())["estimates"] == found["estimates"]
    assert {e["run"] for e in found["estimates"]} == set(budget_to_target.SMOLLM2_RUNS)
    by_goal = {(e["text"], e["goal"]): e for e in found["estimates"] if e["run"] == "lr9e-3"}
    # in domain the best SmolLM2 run (73.44) is inside 2× (a′) = 2 × 38.24 and outside 1.3× (a′)
    resolve, target = by_goal[("in-domain", "2× (a′)")], by_goal[("in-domain", "1.3× (a′)")]
    assert resolve["ppl_wanted"] == pytest.approx(2 * 38.24, rel=1e-3)
    assert all(b["why"] == "met at the measured budget" for b in resolve["budgets"].values())
    assert all(b["tokens"] > target["tokens_end"] for b in target["budgets"].values())
    # every estimate follows the formula from its own fit
    for estimate in found["estimates"]:
        gap_end = math.log(estimate["ppl_end"] / estimate["ppl_original"])
        gap_wanted = math.log(estimate["ppl_wanted"] / estimate["ppl_original"])
        for source, budget in estimate["budgets"].items():
            alpha = found["fits"][source][estimate["text"]]["alpha"]
            if budget["why"] is None:
                assert budget["tokens"] == pytest.approx(estimate["tokens_end"] * (gap_end / gap_wanted) ** (1 / alpha))
    # Table 1 falls as perplexity rises, and "within 2 points" asks for a lower perplexity than "within 5"
    line = found["table1"]
    assert line["slope_points_per_e_fold"] < 0
    assert line["ppl_needed"][2.0] < line["ppl_needed"][5.0]


def test_each_smollm2_run_gets_its_own_curve_and_budgets(tmp_path):
    """Two runs read side by side (here the same results under two tags) each give their own fit and table."""
    results = tmp_path / "results"
    results.mkdir()
    committed = budget_to_target.RESULTS
    for name in (*budget_to_target.STORIES_BUDGETS, budget_to_target.SMOLLM2_FAIR, "real-models-smollm2-lr9e-3"):
        (results / name).symlink_to(committed / name)
    (results / "real-models-smollm2-again").symlink_to(committed / "real-models-smollm2-lr9e-3")
    out = tmp_path / "out"
    found = budget_to_target.main(["--results", str(results), "--out", str(out), "--smollm2", "lr9e-3", "again"])
    first, second = (found["fits"][budget_to_target.run_source(tag)] for tag in ("lr9e-3", "again"))
    assert first == second
    by_run = {tag: [e for e in found["estimates"] if e["run"] == tag] for tag in ("lr9e-3", "again")}
    assert len(by_run["lr9e-3"]) == len(by_run["again"]) == 10
    assert [e["budgets"][budget_to_target.STORIES_SOURCE] for e in by_run["lr9e-3"]] == [
        e["budgets"][budget_to_target.STORIES_SOURCE] for e in by_run["again"]
    ]
    assert "run `again`" in (out / "results.md").read_text()
