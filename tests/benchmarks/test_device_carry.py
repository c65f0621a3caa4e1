"""benchmarks/device_carry.py: what the two device calls carry (docs/benchmarks.md), checked without the
network or the shared data: the wheels' needs against the device image, the GGUF's halves, the commands."""

import importlib.util
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_carry.py"


@pytest.fixture(scope="module")
def carry():
    spec = importlib.util.spec_from_file_location("device_carry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder: Path, name: str, *requires: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    lines = [f"Name: {name}", *(f"Requires-Dist: {line}" for line in requires)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_a_wheels_need_is_met_by_the_image_or_another_carried_wheel_else_named(carry, tmp_path):
    datasets = _wheel(tmp_path, "datasets", "pyarrow>=24.0.0", "dill<0.4.2,>=0.3.0", "huggingface-hub<3.0,>=1.31.0",
                      "multiprocess<0.70.20", "pytest; extra == 'tests'")  # fmt: skip
    assert carry.unmet([datasets]) == []  # pyarrow, huggingface-hub: the image; dill, multiprocess: carried
    lonely = _wheel(tmp_path, "lm_eval", "numpy", "sqlitedict", "word2number; python_version >= '3'")
    assert carry.unmet([lonely]) == ["lm_eval-1.0-py3-none-any.whl: sqlitedict",
                                     "lm_eval-1.0-py3-none-any.whl: word2number; python_version >= '3'"]  # fmt: skip


def test_the_gguf_halves_join_to_the_whole_and_each_carries_every_sum(carry, tmp_path):
    whole = tmp_path / carry.GGUF
    whole.write_bytes(bytes(range(256)) * 41 + b"odd")
    sums = carry.split_gguf(whole, tmp_path / "carry")
    first = (tmp_path / "carry" / "gguf-1" / f"{carry.GGUF}.1").read_bytes()
    second = (tmp_path / "carry" / "gguf-2" / f"{carry.GGUF}.2").read_bytes()
    assert first + second == whole.read_bytes() and abs(len(first) - len(second)) <= 1
    for index in (1, 2):
        listed = (tmp_path / "carry" / f"gguf-{index}" / "SHA256SUMS").read_text().splitlines()
        assert sorted(line.split("  ")[1] for line in listed) == sorted(sums) and len(sums) == 3


def test_the_commands_fit_the_tool_and_keep_the_first_half_for_the_second_call(carry):
    first, second = carry.commands("abc1234", 370, 370)
    assert len(first) <= 2000 and len(second) <= 2000
    assert "cp .device-carry/gguf-1/* /tmp/gc/" in first and "--parts g,a,c,b,d,f --f-models stories --budget-s 335" in first
    assert f"cat {carry.GGUF}.1 {carry.GGUF}.2 > {carry.GGUF} && sha256sum -c SHA256SUMS" in second
    assert f"GAINCELL_SMOLLM2_GGUF=/tmp/gc/{carry.GGUF}" in second
    assert "--parts f --f-models smollm2 --budget-s 325" in second
    for command in (first, second):  # the wheels installed as the device README says, and nothing fetched
        assert carry.PIP_INSTALL + " .device-carry/whl/*.whl && export PYTHONPATH=/tmp/site" in command
        assert "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 GAINCELL_COMMIT=abc1234" in command


def test_the_commands_ask_device_run_for_parts_and_models_it_has(carry):
    """Call 1 tunes the kernels (g) before checking (a) and timing (c, b) them, then training (d) and part f for
    stories260K; call 2 runs part f for SmolLM2 alone. Each within its timeout, less a margin."""
    import re

    spec = importlib.util.spec_from_file_location("device_run", SCRIPT.parent / "device_run.py")
    device_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_run)
    first, second = carry.commands("abc1234", 370, 370)
    for command, parts, models in ((first, "g,a,c,b,d,f", "stories"), (second, "f", "smollm2")):
        assert re.search(r"--parts (\S+)", command).group(1) == parts
        assert set(parts.split(",")) <= set(device_run.PARTS)
        found = re.search(r"--f-models (\S+)", command)
        assert (found and found.group(1)) == models and set((models or "").split(",")) - {""} <= set(device_run.F_MODELS)
        assert 300 <= float(re.search(r"--budget-s (\S+)", command).group(1)) <= 370 - 30
