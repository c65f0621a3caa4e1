"""What tests/op/test_triton.py runs in worker processes (not collected: no ``test_`` prefix).

Triton fixes, when it is first imported, whether kernels are interpreted on the CPU
(``TRITON_INTERPRET=1``) or compiled for a GPU, so each mode gets its own spawned process:
:func:`start_interpreter` / :func:`start_compiler` set the variable before anything imports triton.
The pytest process itself never runs a kernel, so the rest of the suite is unaffected.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from reference import reference_attention

from gaincell import Scalers, gain_cell_attention, gain_cell_attention_equations, preset
from gaincell.chip.config import CellConfig, QuantizerConfig

ADC_STEP = 2 / 31
#: sm_90's shared memory per block (H100, H200): 227 KiB.
SM90_SHARED = 227 * 1024


def start_interpreter() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)


def start_compiler() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)


def config_for(kind, length, window, rows, leakage, gradient, changes):
    config = preset(kind, window=window, subtile_rows=rows, block_size=16, leakage=leakage, gradient=gradient)
    return config.replace(**changes)


def inputs(heads, length, dim, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(1, heads, length, dim, generator=generator) * 1.1 - 0.05
    k = torch.rand(1, heads, length, dim, generator=generator) - 0.5
    v = torch.rand(1, heads, length, dim, generator=generator) - 0.5
    scalers = Scalers(heads)
    with torch.no_grad():
        for p in scalers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return [x.to(dtype).requires_grad_() for x in (q, k, v)], scalers


def _run(op, q, k, v, scalers, config, weight, **kwargs):
    leaves = [q, k, v, *scalers.parameters()]
    for x in leaves:
        x.grad = None
    out = op(q, k, v, scalers, config, **kwargs)
    (out.float() * weight).sum().backward()
    return out.detach(), [x.grad.clone() for x in leaves]


def assert_within_one_step(fast, ref, scalers, what):
    """The ADC rounds, so float rounding may move an output by one step: mean difference small, at most
    0.1 % of outputs one step apart, none more. One step at the output is |a_o|·2/31 (output scaler)."""
    scale = scalers.a_o.detach().abs()[None, :, None, None]
    steps = ((fast.double() - ref.double()).abs() / (scale * ADC_STEP)).flatten()
    off = int((steps > 0.5).sum())
    assert steps.mean() <= 1e-3, f"{what}: mean difference {steps.mean():.2e} steps"
    assert off <= 1e-3 * steps.numel(), f"{what}: {off} of {steps.numel()} outputs a step apart"
    assert steps.max() <= 1.01, f"{what}: an output {steps.max():.2f} steps apart"
    return off


def assert_gradients_close(fast, ref, what, tolerance=1e-4):
    for index, (a, b) in enumerate(zip(fast, ref, strict=True)):
        error = ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
        assert error <= tolerance, f"{what}: gradient {index} relative error {error:.2e}"


def check_case(case, heads=2, dim=8, version="v2") -> dict:
    """The fused kernel (``version``) against the SPEC reference, the equations and the torch form:
    values, gradients."""
    from gaincell.op.kernels import fused

    with fused.variant(version):
        return _check_case(case, heads, dim)


def check_case_factorised_backward(case) -> dict:
    """:func:`check_case` with v2's gradient kernels factorising the decay in fp32 (on a GPU only the
    16-bit modes do: ``fused.SPLIT_BACKWARD``), held to the fp32 rule."""
    from gaincell.op.kernels import fused

    saved = set(fused.SPLIT_BACKWARD)
    fused.SPLIT_BACKWARD.add("ieee")
    try:
        return check_case(case)
    finally:
        fused.SPLIT_BACKWARD.clear()
        fused.SPLIT_BACKWARD.update(saved)


def _check_case(case, heads, dim) -> dict:
    name, kind, length, window, rows, leakage, gradient, changes = case
    config = config_for(kind, length, window, rows, leakage, gradient, changes)
    (q, k, v), scalers = inputs(heads, length, dim)
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    fused_out, fused_grads = _run(gain_cell_attention, q, k, v, scalers, config, weight, kernel="triton")
    assert fused_out.abs().max() > 0, f"{name}: the readout is all zero"
    off = {}
    for op, what in (
        (reference_attention, "reference"),
        (gain_cell_attention_equations, "equations"),
        (lambda *args: gain_cell_attention(*args, kernel="torch"), "torch"),
    ):
        out, grads = _run(op, q, k, v, scalers, config, weight)
        off[what] = assert_within_one_step(fused_out, out, scalers, f"{name} vs {what}")
        assert_gradients_close(fused_grads, grads, f"{name} vs {what}")
    return off


def check_generation(case, heads=2, dim=8, dtype_name="float32") -> dict:
    """Generation through a memory whose steps run the fused kernels (the front end and write in one launch,
    the read in the forward kernel's one-query form, ``RING``): a third of the tokens prefilled, then one
    step per token, against the same with the torch steps and against the SPEC reference of the parallel
    op, the projections in ``dtype_name`` (a bf16 model's are loaded as they are by the kernels, cast by the
    torch step). Returns the outputs a step apart in each comparison."""
    from gaincell import GainCellMemory

    name, kind, length, window, rows, leakage, gradient, changes = case
    config = config_for(kind, length, window, rows, leakage, gradient, changes)
    (q, k, v), scalers = inputs(heads, length, dim, dtype=getattr(torch, dtype_name))
    q, k, v = (x.detach() for x in (q, k, v))
    cut = max(1, length // 3)
    outputs = {}
    for kernel in ("triton", "torch"):
        memory = GainCellMemory(config, scalers, 1, heads, dim, kernel=kernel)
        assert memory.form == kernel, (kernel, memory.form)
        with torch.no_grad():
            prompt = memory.prefill(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut])
            steps = [memory.step(*(x[:, :, t : t + 1] for x in (q, k, v))) for t in range(cut, length)]
        outputs[kernel] = torch.cat([prompt, *steps], 2).float()
    with torch.no_grad():
        reference = reference_attention(q.float(), k.float(), v.float(), scalers, config).to(q.dtype).float()
    return {
        "vs_torch_steps": assert_within_one_step(outputs["triton"], outputs["torch"], scalers, f"{name}: fused steps"),
        "vs_reference": assert_within_one_step(outputs["triton"], reference, scalers, f"{name}: fused steps vs SPEC"),
    }


def check_ends_grid() -> None:
    config = preset("paper", window=16, subtile_rows=8, leakage=0.01)
    ends = dataclasses.replace(config.periphery.adc, grid="ends")
    config = config.replace(periphery=dataclasses.replace(config.periphery, adc=ends))
    (q, k, v), scalers = inputs(1, 24, 8)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config, kernel="triton")
        ref = reference_attention(q, k, v, scalers, config)
    assert_within_one_step(fast, ref, scalers, "ends grid")


def check_ties() -> None:
    """Read-outs exactly halfway between two ADC levels round to the even level (SPEC: torch.round)."""
    from gaincell.op.kernels.fused import fused_readout

    # A linear cell of slope 1, ADC step 1 (the levels are the integers) and read-out gain S_sat, so
    # one query (Q = e_0) on one key (k~ = e_0) gives S = 1 and Y = S·v~ = v~ exactly.
    config = preset("linear", window=4, subtile_rows=4, leakage=0.0, cell=CellConfig(kind="linear", alpha=1.0))
    adc = QuantizerConfig(-8.0, 8.0, 17)
    config = config.replace(periphery=dataclasses.replace(config.periphery, adc=adc, readout_gain=config.periphery.s_sat))
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 4.25])
    basis = torch.zeros(1, 1, 1, 8)
    basis[..., 0] = 1.0
    out = fused_readout(basis, basis, halves.view(1, 1, 1, 8), config).flatten()
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0, 4.0], out.tolist()
    assert torch.equal(out, torch.round(halves))


def check_half_precision(dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    config = preset("paper", window=16, subtile_rows=8, leakage=0.01)
    (q, k, v), scalers = inputs(2, 20, 8, dtype=dtype)
    with torch.no_grad():
        fast = gain_cell_attention(q, k, v, scalers, config, kernel="triton")
        banded = gain_cell_attention(q, k, v, scalers, config, kernel="torch")
    assert fast.dtype == dtype
    assert_within_one_step(fast, banded, scalers, dtype_name)


def structure_config(cell: str, gradient: str, leakage: float, rows: int = 64):
    return preset("paper", leakage=leakage, gradient=gradient, cell=CellConfig(kind=cell), subtile_rows=rows)


def compile_sm90(
    kernel: str, config, dim: int, precision: str, quantise=True, save=True, small_tiles=False, version="v2", ring=False
) -> dict:
    """Compile one kernel configuration of ``version`` for sm_90 (cubin) on this CPU; returns what the
    build uses: shared memory (bytes), registers and stack (spilled) bytes per thread. ``ring``: v2's
    forward kernel in its one-query generation form, as :func:`fused_step.fused_step_readout` launches it."""
    import triton
    from triton.backends.compiler import GPUTarget

    from gaincell.op.kernels import fused

    fn = getattr(fused.kernels(version), kernel)
    plan = fused.make_fused_plan(config)
    blocks, structure = fused._launch(plan, dim, small_tiles, precision, kernel.removesuffix("_kernel"), version)
    if ring:
        from gaincell.op.kernels.fused_step import STEP_QUERIES

        blocks["BT"] = STEP_QUERIES
        structure = plan.constexprs("v2", max(STEP_QUERIES, blocks["BN"]))
    options = {key: blocks.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in blocks}
    constexprs = {**structure, **blocks, "DOT": precision}
    if kernel == "forward_kernel":
        constexprs = {key: constexprs[key] for key in ("POWERS", "NP", "CONST", "LEAK", "DOT", "BT", "BN", "BD", "WORD")}
        constexprs.update(QUANT=quantise, SAVE=save and not ring)
        if version == "v2":
            constexprs["RING"] = ring
    integers = {"T", "D", "M", "R", "NSUB", "CHUNKS", "CH", "START", "QT", "KT"}
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in integers:
            signature[arg] = "i32"
        elif arg.isupper():
            signature[arg] = "*i32" if arg == "PASS" else "*fp32"
        else:
            signature[arg] = "fp32"
    source = triton.compiler.ASTSource(fn, signature, constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert compiled.asm["cubin"], f"{kernel}: no cubin"
    assert compiled.metadata.shared <= SM90_SHARED, f"{kernel}: {compiled.metadata.shared} B of shared memory"
    return {"shared": compiled.metadata.shared, **_registers(compiled.asm["cubin"])}


def compile_sm90_front_end(dtype: str) -> dict:
    """v2's generation front end (:func:`fused_step.fused_step_front_end`) built for sm_90 with q, k, v in ``dtype``
    (``fp32``, ``bf16``, ``fp16``: a model's projections as the kernel loads them)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from gaincell.op.kernels import fused

    fn = fused.kernels("v2").step_front_end_kernel
    signature = {name: f"*{dtype}" for name in ("Q", "K", "V")}
    signature |= {name: "*fp32" for name in ("A", "B", "PULSES", "KEYS", "VALUES")}
    signature |= {name: "i32" for name in ("slot", "H", "D", "M")}
    signature |= {name: "fp32" for name in ("q_low", "q_high", "q_step", "kv_low", "kv_high", "kv_step", "offset")}
    signature["BD"] = "constexpr"
    source = triton.compiler.ASTSource(fn, signature, {"BD": 64})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    assert compiled.asm["cubin"], "step_front_end_kernel: no cubin"
    return {"shared": compiled.metadata.shared, **_registers(compiled.asm["cubin"])}


def compile_sm90_tiles(kernel: str, precision: str, tile: tuple, leakage: float = 1.6e-4) -> dict:
    """:func:`compile_sm90` of v2's ``kernel`` (paper preset, D = R = 64) with ``tile`` in place of
    today's (BT, BN, warps[, stages]) for ``precision``: a candidate of the device run's tile search."""
    from gaincell.op.kernels import fused

    key = fused.tile_key("v2", precision)
    saved = fused.TILES["v2"][key][kernel.removesuffix("_kernel")]
    fused.TILES["v2"][key][kernel.removesuffix("_kernel")] = tuple(tile)
    try:
        return compile_sm90(kernel, preset("paper", leakage=leakage), 64, precision)
    finally:
        fused.TILES["v2"][key][kernel.removesuffix("_kernel")] = saved


def _registers(cubin: bytes) -> dict:
    """Registers, stack and spill bytes per thread of a cubin, from the cuobjdump that triton ships."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([str(tool), "-res-usage", file.name], capture_output=True, text=True).stdout
    return {key.lower(): int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


def precision_shares(precision: str, leakage: float, length=40, dim=16) -> dict:
    """Outputs of the fused kernel in one dot ``precision`` against the torch form: the share one ADC
    step apart, the largest distance in steps, the worst gradient's relative error."""
    from gaincell.op.kernels import fused

    config = preset("paper", window=24, subtile_rows=8, leakage=leakage)
    (q, k, v), scalers = inputs(2, length, dim)
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    with fused.precision(precision):
        fast, fast_grads = _run(gain_cell_attention, q, k, v, scalers, config, weight, kernel="triton")
    ref, ref_grads = _run(gain_cell_attention, q, k, v, scalers, config, weight, kernel="torch")
    scale = scalers.a_o.detach().abs()[None, :, None, None]
    steps = ((fast.double() - ref.double()).abs() / (scale * ADC_STEP)).flatten()
    errors = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(fast_grads, ref_grads, strict=True)]
    return {"share": float((steps > 0.5).float().mean()), "max_steps": float(steps.max()), "grad_error": max(errors)}


def check_model(tiny_config: dict) -> dict:
    """A converted tiny GPT-2 trains through the fused kernels as through the torch form: same loss,
    logits and parameter gradients (the layer, the scalers and the kernel choice wired together)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gaincell import convert
    from gaincell.op.kernels import dispatch

    torch.manual_seed(0)
    model = convert(GPT2LMHeadModel(GPT2Config(**tiny_config)), "paper", window=16, subtile_rows=8, leakage=0.01)
    model.eval()  # no dropout: both runs see the same network
    ids = torch.randint(0, tiny_config["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(2))
    runs = []
    for kernel in ("torch", "triton"):
        dispatch.set_kernel(kernel)
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        runs.append((out.loss.item(), out.logits.detach(), [p.grad.clone() for p in model.parameters()]))
    dispatch.set_kernel("auto")
    (loss, logits, grads), (fused_loss, fused_logits, fused_grads) = runs
    assert abs(fused_loss - loss) <= 1e-5 * abs(loss), (fused_loss, loss)
    assert (fused_logits - logits).abs().max() <= 1e-4 * logits.abs().max()
    assert_gradients_close(fused_grads, grads, "tiny GPT-2")
    return {"loss": loss, "fused_loss": fused_loss}
