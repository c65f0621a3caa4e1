"""The prepared device run (benchmarks/device_run.py) in its ``--dry-run``: every part at tiny sizes on
the CPU, as the device machine would run it: lm-eval and gguf, which that machine lacks, made
unimportable; datasets importable, as the wheel carried to it makes it there (docs/benchmarks.md). A GPU
session then runs the same code at full size."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_run.py"
#: What the tests that take the ``shared_data`` fixture read (the fixture is per module, so the mark is too).
pytestmark = pytest.mark.needs_data("models/stories260K")
#: What a CPU cannot do, recorded as such rather than failing the run.
EXPECTED_ON_CPU = ("FlexAttention does not support backward on CPU",)


def _run(out: Path, *options: str, **environment: str) -> dict:
    blocked = "import sys, runpy; sys.modules.update(dict.fromkeys(('lm_eval', 'gguf')))"
    command = f"{blocked}; sys.argv = {[str(SCRIPT), *options]!r}; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **environment}
    done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "device_run.json").read_text())


def _problems(case: dict) -> list[str]:
    found = [case["error"]] if "error" in case else []
    found += [case[which]["error"] for which in ("fwd", "fwd+bwd") if "error" in case.get(which, {})]
    return [problem for problem in found if not any(expected in problem for expected in EXPECTED_ON_CPU)]


def _has_stories() -> bool:
    """Whether the dry run finds stories260K, as device_run.py looks for it (the CI has ../shared/data)."""
    from gaincell.datadir import data_dir

    return data_dir() is not None and (data_dir() / "models" / "stories260K").is_dir()


def test_the_dry_run_runs_every_part_and_writes_the_json_and_table(tmp_path):
    results = _run(tmp_path, "--dry-run", "--out", str(tmp_path))
    assert list(results["parts"]) == ["a", "b", "c", "d", "e", "f", "g"]
    assert results["environment"]["dry_run"] and results["environment"]["device"] == "cpu"
    if _has_stories():
        _check_part_f(results["parts"]["f"], tmp_path)
    else:
        assert results["parts"].pop("f")["skipped"] == "needs stories260K (set GAINCELL_DATA)"
    for letter, part in results["parts"].items():
        assert "error" not in part and "skipped" not in part, (letter, part)
        assert part["cases"], letter
        for key, case in part["cases"].items():
            assert "skipped" not in case and not _problems(case), (letter, key, case)
    checks = [case for case in results["parts"]["a"]["cases"].values() if "passed" in case]
    assert checks and all(case["passed"] for case in checks)
    assert results["parts"]["a"]["summary"]["held_to_the_rule"] == f"{len(checks)} of {len(checks)} pass"
    assert all("ms" in case["fwd"] for key, case in results["parts"]["b"]["cases"].items() if "unavailable" not in case)
    assert results["parts"]["b"]["ratios"]  # gain-cell over SDPA at each (B, T, pass)
    decode = results["parts"]["c"]["cases"]
    assert all(case["tokens_per_s"] > 0 for key, case in decode.items() if "ops-per-token" not in key)
    assert (
        decode["gpt2-shape/ops-per-token/gaincell"]["ops_per_token"]
        > decode["gpt2-shape/ops-per-token/softmax"]["ops_per_token"]
        > 0
    )
    assert set(results["parts"]["d"]["cases"]) == {"smollm2-shape/softmax", "smollm2-shape/gaincell"}
    assert next(iter(results["parts"]["e"]["cases"].values()))["measured"]["latency_step_s"] > 0
    table = (tmp_path / "device_run.md").read_text()
    profiles = [case for key, case in results["parts"]["g"]["cases"].items() if "/profile/" in key]
    assert profiles[-1]["kernels"] and profiles[-1]["total_ms"] > 0  # the torch form's; the others need CUDA
    assert table.startswith("# gaincell device run") and table.count("## ") == 7
    assert results["elapsed_s"] < results["budget_s"]  # about 15 s on one busy core, and part f's 25 s


def _check_part_f(part: dict, out: Path) -> None:
    """stories260K's rows in order, each scored on the four texts, the recipes and (a′) given the sized budget."""
    cases = part["cases"]
    rows = ["a", "e-transfer", "a-prime", "e-paper"]
    assert list(cases) == ["stories/setup", "stories/a", "stories/throughput", "stories/budget",
                           *(f"stories/{row}" for row in rows[1:])]  # fmt: skip
    budget = cases["stories/budget"]
    assert budget["steps"] == 2 and budget["budget_tokens"] == 2 * budget["batch"] * budget["block"]
    assert budget["epochs"] == round(budget["budget_tokens"] / budget["train_tokens"], 2) and budget["max_epochs"] == 2
    assert all(seconds > 0 for seconds in cases["stories/throughput"]["tokens_per_s"].values())
    assert cases["stories/throughput"]["transfer_batch"] == 2 and cases["stories/throughput"]["transfer_step_s"] > 0
    for row in rows:
        case = cases[f"stories/{row}"]
        assert case["row"] == row and set(case["ppl"]) == {"in-domain", "pydoc", "shakespeare", "wikitext-raw"}
        assert all(math.isfinite(value) and value > 1 for value in case["ppl"].values()), case
    assert cases["stories/a"]["tokens"] == 0 and math.isfinite(cases["stories/a"]["held_out_ppl"])
    for row in rows[1:]:  # the budget, spent by each: two steps of the batch
        assert cases[f"stories/{row}"]["tokens"] == budget["budget_tokens"], row
        assert cases[f"stories/{row}"]["sample"].startswith("Once upon a time")
    assert cases["stories/e-transfer"]["curve_points"] > 0
    assert "lm-eval" in part["table1"] and "dry run" in part["smollm2"]
    written = json.loads((out / "real-models-stories.json").read_text())
    assert [row["row"] for row in written["rows"]] == ["a", "a-prime", "e-paper", "e-transfer"]  # real_models' order
    assert written["settings"]["mixed_precision"] == "no" and (out / "real-models-stories.md").is_file()
    for row in written["rows"][1:]:  # --ood-curve: every trained row's curve also on the texts none trains on
        scored = [point["ood_ppl"] for point in row["curve"] if "ood_ppl" in point]
        assert scored and all(set(s) == {"pydoc", "shakespeare", "wikitext-raw"} for s in scored), row["row"]
    assert written["budget_rule"] == budget["budget_rule"] == "dry run: 2 steps"


def test_part_f_without_the_shared_data_is_skipped_and_says_why(tmp_path):
    results = _run(tmp_path, "--dry-run", "--parts", "f", "--out", str(tmp_path), GAINCELL_DATA=str(tmp_path / "none"))
    assert results["parts"]["f"] == {
        "title": results["parts"]["f"]["title"],
        "skipped": "needs stories260K (set GAINCELL_DATA)",
        "wall_s": results["parts"]["f"]["wall_s"],
    }


@pytest.fixture(scope="module")
def device_run():
    """The script as a module, its alarm handler installed (as its main does) for the module's tests."""
    spec = importlib.util.spec_from_file_location("device_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    previous = signal.signal(signal.SIGALRM, module._out_of_time)
    yield module
    signal.signal(signal.SIGALRM, previous)


def test_smollm2_runs_only_from_the_whole_gguf_and_says_why_not(device_run, tmp_path):
    """The two device calls each carry half of the GGUF: a half alone (the machine went back between them) is
    refused by its sha256, before any model loads."""
    run = device_run.Run(tmp_path, torch.device("cpu"), budget_s=60, dry=False)
    half = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert device_run.smollm2_refused(run, half).startswith("not run: no GGUF at")
    half.write_bytes(b"GGUF" + bytes(1000))
    assert "has sha256" in device_run.smollm2_refused(run, half)
    dry = device_run.Run(tmp_path, torch.device("cpu"), budget_s=60, dry=True)
    assert device_run.smollm2_refused(dry, half) == "not in the dry run (stories260K only)"


def _part(device_run, tmp_path, budget_s: float):
    run = device_run.Run(tmp_path, torch.device("cpu"), budget_s=budget_s, dry=True)
    run.part = run.results["parts"]["b"] = {"title": "a part"}
    return run


def test_a_spent_budget_skips_cases_and_says_why(device_run, tmp_path):
    run = _part(device_run, tmp_path, budget_s=0.5)
    device_run.part_b(run)
    cases = run.part["cases"]
    assert cases and all("skipped" in case for case in cases.values())
    assert "needs about" in next(iter(cases.values()))["skipped"]


def test_a_case_past_its_parts_time_is_stopped_and_recorded(device_run, tmp_path):
    run = _part(device_run, tmp_path, budget_s=2.0)
    result = run.case("hangs", lambda: time.sleep(30) or {})
    after = run.case("after", lambda: {"done": True})
    assert result["error"].startswith("OutOfTime") and result["wall_s"] < 5
    assert "skipped" in after  # nothing left of the part's time
    saved = json.loads((tmp_path / "device_run.json").read_text())
    assert set(saved["parts"]["b"]["cases"]) == {"hangs", "after"}


def test_part_a_checks_the_default_everywhere_first_and_the_named_fast_modes_on_one_geometry(
    device_run, tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        device_run, "check_kernel", lambda run, config, length, kernel, shared: calls.append((length, kernel)) or {}
    )
    run = device_run.Run(tmp_path, torch.device("cpu"), budget_s=60, dry=True)
    run.part = run.results["parts"]["a"] = {"title": "a"}
    device_run.part_a(run)
    by_kernel = {kernel: [length for length, k in calls if k == kernel] for kernel in dict.fromkeys(k for _, k in calls)}
    for kernel in ("torch", "triton-tf32x3", "triton-ieee"):  # 2 cells × leakage × 3 geometries
        assert sorted(by_kernel[kernel]) == sorted([37, 157, 300] * 4), kernel
    for kernel in ("triton-tf32", "triton-fp16", "triton-bf16"):
        assert by_kernel[kernel] == [157] * 4, kernel
    assert {kernel for _, kernel in calls[:24]} == {"torch", "triton-tf32x3"}  # the GPU's default before the rest


def test_a_named_fast_mode_is_reported_as_measured_never_as_failed(device_run):
    fast = {"mode": "named fast mode: measured, not held to the rule", "within_tolerance": False, "share_apart": 0.0158,
            "vs_equations": "mean |diff| 1.58e-02 steps, 1.577 % ≥ ½ step", "gradient_max_relative": 0.106,
            "gradient_within_tolerance": False}  # fmt: skip
    held = {"mode": "held to the rule", "within_tolerance": True, "share_apart": 0.0, "gradient_max_relative": 3e-7,
            "passed": True}  # fmt: skip
    cases = {"paper/leak/T=157,M=48,R=16/triton-tf32": fast, "paper/leak/T=157,M=48,R=16/triton-ieee": held,
             "paper/leak/T=157,M=48,R=16/triton-bf16": fast | {"share_apart": 0.0228, "gradient_max_relative": 0.06},
             "paper/leak/T=300,M=128,R=32/triton-ieee": held | {"passed": False},
             "paper/leak/T=37,M=64,R=16/torch": {"skipped": "needs about 2 s, 1 s left in this part"}}  # fmt: skip
    summary = device_run.part_a_summary(cases)
    assert summary["held_to_the_rule"] == "1 of 2 pass" and summary["failed"] == ["paper/leak/T=300,M=128,R=32/triton-ieee"]
    assert summary["named_fast_modes"] == {
        "triton-tf32": {"cases": 1, "max_share_apart": 0.0158, "max_gradient": 0.106},
        "triton-bf16": {"cases": 1, "max_share_apart": 0.0228, "max_gradient": 0.06},
    }
    assert summary["not_checked"] == 1
    shown = device_run.cell(fast)
    assert "named fast mode" in shown and "within_tolerance False" in shown and "passed" not in shown


def test_the_rows_budget_is_capped_in_epochs_of_the_training_text(device_run):
    """SmolLM2's first GPU run: 4.03M tokens on wikitext2-valid's ~250k, 16 epochs. Capped at two epochs."""
    steps, bounds = device_run.budget_steps(300.0, 0.5, 8 * 512, 250_000)
    assert steps == bounds["epochs"] == 2 * 250_000 // (8 * 512) and bounds["time"] == 600
    steps, bounds = device_run.budget_steps(30.0, 0.5, 256 * 256, 7_500_000)  # short of time: what fits
    assert steps == bounds["time"] == 60 < bounds["epochs"]
    assert device_run.budget_steps(0.1, 0.5, 4096, 250_000)[0] == 2  # at least two steps


def test_part_f_samples_a_models_own_text_from_one_opening(device_run, shared_data, tmp_path):
    """SmolLM2's training text on the GPU is its own samples, each from the document separator alone
    (``F_SAMPLES``); here the same code on stories260K on the CPU, from an opening of its own."""
    assert device_run.F_SAMPLES["opening"] == "<|endoftext|>"
    out = tmp_path / "samples.txt"
    model = shared_data / "models" / "stories260K"
    found = device_run.own_samples(torch.device("cpu"), model, out, seconds=0.0, opening="Once upon a time")
    assert found["sequences"] == 2 and found["bytes"] == len(out.read_bytes()) > 0
    texts = [text for text in out.read_text().split("\n\n") if text]
    assert len(texts) == 2 and all(text.startswith("Once upon a time") for text in texts)


def test_part_g_times_every_tile_candidate_and_applies_the_fastest_for_the_rest_of_the_run(
    device_run, tmp_path, monkeypatch
):
    """On the CPU the fused op runs as the torch form, so each candidate is timed, and the part keeps the
    fastest of each kernel and mode in fused.TILES (restored after this test), today's tiles timed first."""
    import copy

    from gaincell import gain_cell_attention
    from gaincell.op.kernels import fused

    monkeypatch.setattr(fused, "TILES", copy.deepcopy(fused.TILES))
    before = copy.deepcopy(fused.TILES)
    read = []

    def as_torch(q, k, v, scalers, config, precision):
        read.append(dict(fused.TILES["v2"][fused.tile_key("v2", precision)]))
        return gain_cell_attention(q, k, v, scalers, config, kernel="torch")

    monkeypatch.setattr(device_run, "_fused", as_torch)
    run = device_run.Run(tmp_path, torch.device("cpu"), budget_s=120, dry=True)
    run.part = run.results["parts"]["g"] = {"title": "g"}
    device_run.part_g(run)
    cases = run.part["cases"]
    for precision in device_run.G_PRECISIONS:
        key = fused.tile_key("v2", precision)
        assert cases[f"B=2/T=64/profile/{precision}"]["kernels"]
        for kernel, candidates in device_run.G_TILES.items():
            current = before["v2"][key][kernel]
            timed = [k for k in cases if k.startswith(f"B=2/T=64/{precision}/{kernel}/")]
            labels = ["x".join(map(str, tile)) for tile in dict.fromkeys((current, *candidates))]
            assert [k.rsplit("/", 1)[1] for k in timed] == labels  # today's first, each once
            assert all(cases[k]["ms"] > 0 for k in timed)
            applied = run.part["applied"][f"{precision}/{kernel}"]
            assert applied["was"] == list(current) and applied["speedup"] >= 1
            best = min(timed, key=lambda k: cases[k]["ms"])
            assert "x".join(map(str, applied["tiles"])) == best.rsplit("/", 1)[1]
            assert fused.TILES["v2"][key][kernel] == tuple(applied["tiles"])
    assert any(tiles["forward"] == (128, 64, 8) for tiles in read)  # a candidate was in place while it ran
