"""The fused Triton kernels (v2, the default, and v1, kept for side-by-side timing), without a GPU.

Run by the Triton interpreter on CPU tensors against the dense SPEC reference (tests/reference.py),
the equations module and the torch banded form, values and gradients, over a grid of configs; and
compiled ahead of time for sm_90 on the CPU (code generation errors the interpreter accepts, e.g. a
dot smaller than 16, and shared memory beyond an H100/H200's). Triton picks its mode when first
imported, so the kernels run in two spawned worker processes (tests/op/triton_worker.py), one per
mode; this process only checks the dispatcher's decisions.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import triton_worker

from gaincell import CellGains, GainCellError, Scalers, gain_cell_attention, preset
from gaincell.chip.config import CellConfig, PeripheryConfig
from gaincell.op.kernels import dispatch, fused

pytest.importorskip("triton", reason="triton is not installed (pip install gaincell[gpu])")

#: A converter that saturates at a fifth of the paper's charge and a read-out gain 8× the paper's:
#: some S > S_sat and some read-outs beyond the ADC's range, so both gradient masks matter.
SATURATING = PeripheryConfig(s_sat=16.0, readout_gain=0.2)
#: (id, preset, T, window M, sub-tile rows R, leakage, gradient, other config changes)
CASES = [
    ("paper T<M leak surrogate", "paper", 37, 48, 16, 3e-3, "surrogate", {}),
    ("paper T>M M%R!=0 exact", "paper", 40, 24, 16, 0.0, "exact", {}),
    ("paper T>M R<M leak exact", "paper", 33, 20, 8, 0.01, "exact", {}),
    ("linear T>M R=M leak", "linear", 40, 16, 16, 0.05, "surrogate", {}),
    ("linear T<M no leak exact", "linear", 20, 32, 8, 0.0, "exact", {}),
    ("ideal no ADC grid", "ideal", 30, 16, 8, 0.02, "surrogate", {}),
    ("quintic cell leak", "paper", 29, 16, 8, 0.02, "exact", {"cell": CellConfig(kind="quintic")}),
    ("paper S and ADC saturate", "paper", 36, 16, 8, 0.01, "exact", {"periphery": SATURATING}),
    ("linear S and ADC saturate", "linear", 30, 12, 8, 0.0, "surrogate", {"periphery": SATURATING}),
    ("paper large leakage", "paper", 24, 16, 8, 12.0, "exact", {}),
    ("one token", "paper", 1, 16, 8, 1.6e-4, "surrogate", {}),
]
#: Larger grid (minutes in the interpreter): every cell the kernel takes × gradient × leakage × geometry.
SLOW_CASES = [
    (f"{cell} {gradient} eps={leakage} T={length} M={window} R={rows}", "paper", length, window, rows, leakage, gradient,
     {"cell": CellConfig(kind=cell)})
    for cell, gradient, leakage, (length, window, rows) in itertools.product(
        ("linear", "polynomial", "cubic", "quintic"), ("surrogate", "exact"), (0.0, 0.05),
        ((40, 64, 16), (61, 24, 16), (50, 17, 4)),
    )
]  # fmt: skip
#: Every structure the dispatcher can hand the kernels: (cell, gradient) pairs with distinct power sets.
STRUCTURES = [
    ("linear", "surrogate"),
    ("polynomial", "surrogate"),
    ("polynomial", "exact"),
    ("cubic", "surrogate"),
    ("cubic", "exact"),
    ("quintic", "surrogate"),
    ("quintic", "exact"),
]


def _worker(initializer):
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=initializer)
    yield pool
    pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module")
def interpreter():
    """A process whose triton interprets kernels on CPU tensors (``TRITON_INTERPRET=1``)."""
    yield from _worker(triton_worker.start_interpreter)


@pytest.fixture(scope="module")
def compiler():
    """A process whose triton compiles kernels (no ``TRITON_INTERPRET``), for sm_90 here."""
    yield from _worker(triton_worker.start_compiler)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_reference_equations_and_torch_form(interpreter, case):
    interpreter.submit(triton_worker.check_case, case).result()


GENERATION_CASES = [case for case in CASES if case[2] > 1]


@pytest.mark.parametrize("case", GENERATION_CASES, ids=[c[0] for c in GENERATION_CASES])
def test_generation_steps_through_the_fused_kernel_equal_the_torch_steps_and_the_reference(interpreter, case):
    """A memory whose steps read all its slots in one launch of the v2 forward kernel (one query, keys at
    slot n mod M) gives what the torch step gives and what the SPEC reference gives, position by position,
    over T < M, the slots' wrap-around (T > M), R < M, leakage, the ADC's clamp and the quintic cell."""
    interpreter.submit(triton_worker.check_generation, case).result()


@pytest.mark.parametrize("case", [CASES[2], CASES[7]], ids=[CASES[i][0] for i in (2, 7)])
def test_generation_steps_through_the_fused_kernels_take_a_bf16_models_projections(interpreter, case):
    interpreter.submit(triton_worker.check_generation, case, 2, 8, "bfloat16").result()


@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[8]], ids=[CASES[i][0] for i in (1, 6, 8)])
def test_first_kernels_stay_selectable_and_exact(interpreter, case):
    """v1, kept for side-by-side timing, still computes the op (T > M with M % R ≠ 0, leakage, saturation)."""
    interpreter.submit(triton_worker.check_case, case, 2, 8, "v1").result()


@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=[CASES[i][0] for i in (2, 3)])
def test_factorised_gradient_kernels_in_fp32(interpreter, case):
    """v2's gradient kernels with the decay factorised (the 16-bit modes' form), at fp32 exactness."""
    interpreter.submit(triton_worker.check_case_factorised_backward, case).result()


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_fused_equals_references_over_cells_and_geometries(interpreter, case):
    interpreter.submit(triton_worker.check_case, case, 1, 16).result()


def test_wide_heads_keep_their_adc_masks_in_several_words(interpreter):
    """D = 40: 64 feature columns, the pass masks packed in two 32-bit words per row, 24 columns masked."""
    case = ("paper D=40 saturating", "paper", 20, 12, 8, 0.01, "exact", {"periphery": SATURATING})
    interpreter.submit(triton_worker.check_case, case, 1, 40).result()


def test_adc_on_the_ends_grid(interpreter):
    interpreter.submit(triton_worker.check_ends_grid).result()


def test_adc_ties_round_half_to_even(interpreter):
    interpreter.submit(triton_worker.check_ties).result()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_compute_in_float32(interpreter, dtype):
    interpreter.submit(triton_worker.check_half_precision, dtype).result()


def test_converted_model_trains_through_the_fused_kernels(interpreter):

    interpreter.submit(
        triton_worker.check_model,
        dict(n_embd=32, n_layer=1, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0, eos_token_id=0),
    ).result()


def test_triton_refuses_what_it_does_not_compute(monkeypatch):
    """Each refusal names its reason; none of these checks runs a kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors pass the device check
    q, k, v = torch.rand(3, 1, 2, 12, 4).unbind(0)
    scalers = Scalers(2)
    config = preset("paper", window=8, subtile_rows=4)
    noisy = config.replace(noise=dataclasses.replace(config.noise, read_noise=0.01))
    with pytest.raises(GainCellError, match="kernel='triton' cannot run: read noise"):
        gain_cell_attention(q, k, v, scalers, noisy, kernel="triton")
    gains = CellGains.sample(config.replace(noise=dataclasses.replace(config.noise, variability=0.1)), 2, 4)
    with pytest.raises(GainCellError, match="cell variability"):
        gain_cell_attention(q, k, v, scalers, config, gains=gains, kernel="triton")
    with pytest.raises(GainCellError, match="degree 15"):
        gain_cell_attention(q, k, v, scalers, config.replace(cell=CellConfig(kind="sigmoid")), kernel="triton")
    with pytest.raises(GainCellError, match="float64"):
        gain_cell_attention(q.double(), k.double(), v.double(), scalers.double(), config, kernel="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(GainCellError, match="needs CUDA tensors, got cpu"):
        gain_cell_attention(q, k, v, scalers, config, kernel="triton")


def test_auto_picks_triton_on_cuda_only_where_supported():
    config, cuda = preset("paper"), torch.device("cuda")

    def choose(requested="auto", device=cuda, gains=False, read_noise=0.0, config=config, dtype=torch.float32):
        return dispatch.choose_kernel(requested, device, gains=gains, read_noise=read_noise, config=config, dtype=dtype)

    assert choose() == "triton"
    assert choose(dtype=torch.bfloat16) == "triton"
    assert choose(read_noise=0.01) == "torch"
    assert choose(gains=True) == "torch"
    assert choose(config=config.replace(cell=CellConfig(kind="exp"))) == "torch"
    assert choose(dtype=torch.float64) == "torch"
    assert choose(device=torch.device("cpu")) == "torch"  # the interpreter is for tests, never picked by auto
    assert choose("torch") == "torch"


def test_precision_is_one_of_the_named_modes():
    with pytest.raises(GainCellError, match="precision must be auto or one of ieee, tf32, tf32x3, fp16, bf16"):
        fused.set_precision("fp8")
    with pytest.raises(GainCellError, match="variant must be one of v1, v2"):
        fused.set_variant("v3")


def test_auto_precision_is_the_fastest_exact_enough_mode_on_cuda():
    """H200, 2026-12-04 (device_run call1/call3): tf32x3 had no output a step off and ran 3x faster than
    ieee, which was slower than the torch form; the interpreter keeps fp32 products."""
    assert fused.resolve_precision("auto", torch.device("cuda")) == "tf32x3"
    assert fused.resolve_precision("auto", torch.device("cpu")) == "ieee"
    assert fused.resolve_precision("fp16", torch.device("cuda")) == "fp16"
    with fused.precision("auto"), fused.variant("v1"):
        assert (fused._precision, fused._variant) == ("auto", "v1")


def test_v2_is_the_default_variant():
    """H200, 2026-12-04 (second run): v2 held to the rule on all 12 GPU geometries and ran 1.03-1.11x
    faster than v1 forward + backward; without $GAINCELL_TRITON_VARIANT it is the one that runs."""
    import os

    if "GAINCELL_TRITON_VARIANT" not in os.environ:
        assert fused._variant == "v2"


def test_large_leakage_takes_the_direct_decay():
    """v2 factorises λ^(p·age) only where every factor stays within e^±4 (fp16's range with room)."""
    assert fused.leak_mode(0.0, 3, 64) == 0
    assert fused.leak_mode(1.6e-4, 3, 64) == 1
    assert fused.leak_mode(0.05, 5, 16) == 1
    assert fused.leak_mode(0.05, 3, 64) == 2


@pytest.mark.parametrize("version", fused.VARIANTS)
@pytest.mark.parametrize(
    ("kernel", "cell", "gradient", "leakage", "precision", "quantise", "save"),
    [
        ("forward_kernel", "polynomial", "surrogate", 1.6e-4, "ieee", True, True),
        ("forward_kernel", "linear", "surrogate", 0.0, "tf32", False, False),
        ("grad_queries_kernel", "polynomial", "surrogate", 1.6e-4, "ieee", True, True),
        ("grad_queries_kernel", "quintic", "exact", 0.0, "tf32x3", True, True),
        ("grad_stored_kernel", "polynomial", "exact", 1.6e-4, "ieee", True, True),
        ("grad_stored_kernel", "cubic", "surrogate", 0.0, "tf32", True, True),
        ("grad_queries_kernel", "cubic", "exact", 1.6e-4, "fp16", True, True),  # v2: factorised gradients
        ("grad_stored_kernel", "polynomial", "exact", 0.3, "bf16", True, True),  # v2: direct decay
    ],
)
def test_kernels_compile_for_sm90(compiler, kernel, cell, gradient, leakage, precision, quantise, save, version):
    """Each kernel of each variant, each constexpr value at least once, at the smallest tiles (seconds each)."""
    config = triton_worker.structure_config(cell, gradient, leakage)
    compiler.submit(triton_worker.compile_sm90, kernel, config, 8, precision, quantise, save, True, version).result()


@pytest.mark.parametrize("precision", fused.PRECISIONS)
@pytest.mark.parametrize(("cell", "leakage"), [("polynomial", 1.6e-4), ("linear", 0.0), ("quintic", 0.3)])
def test_the_generation_step_kernel_compiles_for_sm90(compiler, precision, cell, leakage):
    """The forward kernel in its one-query form (RING, BT = 16), as a memory's step launches it on a GPU."""
    config = triton_worker.structure_config(cell, "surrogate", leakage)
    built = compiler.submit(triton_worker.compile_sm90, "forward_kernel", config, 64, precision, True, False, False,
                            "v2", True).result()  # fmt: skip
    assert built["shared"] <= triton_worker.SM90_SHARED


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_the_generation_front_end_kernel_compiles_for_sm90(compiler, dtype):
    assert compiler.submit(triton_worker.compile_sm90_front_end, dtype).result()["shared"] <= triton_worker.SM90_SHARED


def _device_run():
    """benchmarks/device_run.py as a module (part g's tile candidates)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "device_run_tiles", Path(__file__).resolve().parents[2] / "benchmarks" / "device_run.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PART_G = _device_run()
TILE_CANDIDATES = [
    (precision, kernel, tile)
    for precision in _PART_G.G_PRECISIONS
    for kernel, tiles in _PART_G.G_TILES.items()
    for tile in tiles
]


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "kernel", "tile"), TILE_CANDIDATES, ids=[
    f"{p}-{k}-{'x'.join(map(str, t))}" for p, k, t in TILE_CANDIDATES
])  # fmt: skip
def test_every_tile_candidate_of_the_device_run_compiles_for_sm90(compiler, precision, kernel, tile):
    """What part g of the device run times on a GPU builds for sm_90 within its shared memory (a build
    that does not would cost the device a compilation and record an error)."""
    built = compiler.submit(triton_worker.compile_sm90_tiles, f"{kernel}_kernel", precision, tile).result()
    assert built["shared"] <= triton_worker.SM90_SHARED
    if len(tile) > 4 and "reg" in built:
        assert built["reg"] <= tile[4]


@pytest.mark.slow
@pytest.mark.parametrize("version", fused.VARIANTS)
@pytest.mark.parametrize("kernel", ["forward_kernel", "grad_queries_kernel", "grad_stored_kernel"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=["-".join(s) for s in STRUCTURES])
@pytest.mark.parametrize("leakage", [0.0, 1.6e-4, 0.3])
@pytest.mark.parametrize("precision", fused.PRECISIONS)
def test_every_kernel_configuration_compiles_for_sm90(compiler, kernel, structure, leakage, precision, version):
    """Every structure the dispatcher can pick (cell powers × gradient model × leakage × dot precision,
    and for the forward ADC rounding × saved masks), at the smallest tiles; ε = 0.3 is v2's direct decay."""
    config = triton_worker.structure_config(*structure, leakage)
    modes = itertools.product((True, False), (True, False)) if kernel == "forward_kernel" else [(True, True)]
    for quantise, save in modes:
        compiler.submit(triton_worker.compile_sm90, kernel, config, 8, precision, quantise, save, True, version).result()


@pytest.mark.slow
@pytest.mark.parametrize("version", fused.VARIANTS)
@pytest.mark.parametrize("kernel", ["forward_kernel", "grad_queries_kernel", "grad_stored_kernel"])
@pytest.mark.parametrize(("dim", "rows"), [(64, 64), (64, 16), (128, 64), (32, 64)])
@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_gpu_tiles_compile_for_sm90_within_its_shared_memory(compiler, kernel, dim, rows, precision, version):
    """The tiles a GPU run takes (the paper's cell, exact gradient: the most dots) fit an H100/H200;
    fp16, bf16 and tf32x3 share tf32's tiles (tf32x3's extra dots are the largest of them)."""
    config = triton_worker.structure_config("polynomial", "exact", 1.6e-4, rows)
    for mode in (precision,) if precision == "ieee" else ("tf32", "tf32x3", "bf16"):
        compiler.submit(triton_worker.compile_sm90, kernel, config, dim, mode, version=version).result()


@pytest.mark.parametrize("leakage", [0.0, 1.6e-4])
def test_fp16_dots_stay_within_one_adc_step(interpreter, leakage):
    """The fastest named mode rounds the dots' operands to fp16: at most 1 % of outputs one ADC step
    from the torch form (0 of 1280 measured here), none more, gradients within 0.5 %."""
    shares = interpreter.submit(triton_worker.precision_shares, "fp16", leakage).result()
    assert shares["share"] <= 0.01 and shares["max_steps"] <= 1.01, shares
    assert shares["grad_error"] <= 5e-3, shares
