"""What bounds the per-layer attention transfer (SPEC §4.4): the chip's constraints lifted one at a time.

For a model, the usual data-driven initialisation (:func:`gaincell.adaptation.initialise.initialise_scalers`)
then attention transfer (the loss, optimiser and schedule of
:func:`gaincell.adaptation.transfer.transfer_stage`) run once with the ``paper`` preset and once per
row below, each with ONE constraint of the chip lifted; ``all-lifted`` lifts them all (what the
trainable attention can reach at all). Lever rows keep the ``paper`` chip and change the transfer
(:class:`~gaincell.adaptation.settings.TransferConfig` options). Every row reports, on held-out
blocks:

- per layer, the relative MSE of the attention block's output (after o_proj), pooled over the blocks
  (Σ|y_s − y_t|² / Σ|y_t|²), and their mean: the transfer loss measured on text it did not train on;
- per head, the relative error of the head's *contribution* to that output: head h's output before
  o_proj through its own columns of o_proj, W_h·o_h, student against teacher, |W_h(o_s − o_t)|² /
  |W_h o_t|² (each model's own W_o: o_proj trains too). That is the layer's metric restricted to what
  one head writes, so heads that matter little are not weighted up by a tiny output;
- the mean of that error by head type, the type read off the *original* model's softmax attention on
  held-out blocks (queries that see the whole window): ``sink`` (mean mass on token 0 ≥ 0.5),
  ``previous`` (mean mass on token t−1 ≥ 0.5), ``broad`` (mean entropy ≥ 0.5 of its maximum
  log(t+1)), ``focused`` (the rest);
- the perplexity of the transferred model before any distillation on the in-domain held-out text.
  With a layer subset (``--layers``) only those layers are gain-cell, the others keep the
  sliding-window softmax of the teacher: the perplexity says what those layers' residual error costs.

The teacher is the sliding-window softmax at the row's window (the recipe's default teacher), so the
``no-window`` row imitates the full model. The teacher's layer inputs and outputs are recorded once
per teacher and replayed for every row (exactly what AttentionTransfer does each step, without
repeating the teacher's forwards); with ``--layers`` the teacher's forward stops after the last one.

How each constraint is lifted (only config fields, nothing else changes). For the pulse clamp the
config needs no new field: φ(S)·gain = clamp(S/S_sat, 0, 1)·gain equals max(S, 0)·gain/S_sat below
saturation, so scaling S_sat and the read-out gain together leaves every product as it was while the
upper (S_sat) clamp never acts; the lower one (a pulse is never negative) stays.

| row | change |
|---|---|
| no-kv-quant | ``periphery.kv.levels = None`` (the DAC's [0, 0.9] clamp stays) |
| no-q-quant | ``periphery.q.levels = None`` (the [0, 1] clamp stays) |
| no-adc | ``periphery.adc`` = no levels, range ±1e6: no clamp, no rounding of the sub-tile read-outs |
| linear-cell | ``cell.kind = "linear"`` (SPEC §3.3) |
| no-window | ``window`` = the block length (every query sees its whole context) |
| no-pulse-clamp | ``s_sat`` and ``readout_gain`` both × 1e6 (below) |
| no-leakage | ``leakage = 0`` |

Rows ending in ``+normaliser`` turn on the chip option ``periphery.normaliser`` (a named deviation
from the paper, issue 24 part 3; :mod:`gaincell.op.normaliser`): one extra column per V sub-tile that
stores the constant c = kv.high − offset for every token, read by the same pulses through the same
cells and leakage; its read-out, summed over sub-tiles with an ideal (unclamped, unquantised)
converter, is den_t ≈ g(c)·Σ_n φ(S_tn), and a digital divider gives read-out_t / den_t before the
output scaler: softmax's normalisation, with φ in place of exp. (Until 2026-12-04 this script
monkeypatched the op for it; the option gives the same outputs bit for bit on a tiny model, so the
recorded rows mean the same.)

Rows land one by one in ``--work`` (resumable: a finished row is read back, not rerun) and the table
is rewritten after each: ``benchmarks/results/transfer-bounds-MODEL[-TAG]/results.{json,md}``. Layers
train apart (each on its own teacher inputs), so a model's layers can run in groups, in parallel or across
sessions, and ``--merge TAG ... --tag ALL`` puts the groups' tables together (:func:`merge_groups`).

    python benchmarks/transfer_bounds.py stories --steps 100 --eval-tokens 16384 --rows paper no-adc ...
    python benchmarks/transfer_bounds.py smollm2 --layers 0 10 20 --steps 24 --batch 1 --init-blocks 2 \
        --eval-blocks 2 --eval-tokens 2048 --rows paper all-lifted paper+normaliser channel-affine ...

(the recorded runs: docs/real-models.md, "What bounds the attention transfer").

Not run in CI. One thread (``--threads``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from gaincell.adaptation.data import corpus_blocks, load_text_corpus, split_blocks
from gaincell.adaptation.initialise import initialise_scalers
from gaincell.adaptation.settings import InitialiseConfig, TransferConfig
from gaincell.adaptation.train import learning_rate, parameter_groups
from gaincell.adaptation.transfer import make_teacher, prepare_transfer, transfer_loss, transfer_parameters
from gaincell.atomic import atomic_file
from gaincell.chip.config import CellConfig, GainCellConfig, QuantizerConfig, preset
from gaincell.datadir import data_dir
from gaincell.evaluation.perplexity import strided_perplexity
from gaincell.hf.convert import attention_modules
from gaincell.hf.layer import gain_cell_layers
from gaincell.hf.pretrained import load_pretrained, load_pretrained_tokenizer
from gaincell.hf.taps import capture_attention_io, replay, tap_attention

ROOT = Path(__file__).resolve().parents[1]
HEAD_TYPES = ("sink", "previous", "broad", "focused")


def _periphery(hardware: GainCellConfig, **changes) -> GainCellConfig:
    return hardware.replace(periphery=dataclasses.replace(hardware.periphery, **changes))


def lift(hardware: GainCellConfig, name: str, context: int) -> GainCellConfig:
    """``hardware`` with the constraint ``name`` lifted (the module docstring's table)."""
    p = hardware.periphery
    if name == "no-kv-quant":
        return _periphery(hardware, kv=dataclasses.replace(p.kv, levels=None))
    if name == "no-q-quant":
        return _periphery(hardware, q=dataclasses.replace(p.q, levels=None))
    if name == "no-adc":
        return _periphery(hardware, adc=QuantizerConfig(-1e6, 1e6, None))
    if name == "linear-cell":
        return hardware.replace(cell=CellConfig(kind="linear"))
    if name == "no-window":
        return hardware.replace(window=context)
    if name == "no-pulse-clamp":
        return _periphery(hardware, s_sat=p.s_sat * 1e6, readout_gain=p.readout_gain * 1e6)
    if name == "no-leakage":
        return hardware.replace(leakage=0.0)
    raise ValueError(name)


CONSTRAINTS = ("no-kv-quant", "no-q-quant", "no-adc", "linear-cell", "no-window", "no-pulse-clamp", "no-leakage")

#: Lever rows: the paper's chip, transfer options changed (TransferConfig fields; "lr"/"steps" scale the run's).
LEVERS: dict[str, dict] = {
    "lr-x2": {"lr_scale": 2.0},
    "lr-x3": {"lr_scale": 3.0},
    "lr-x5": {"lr_scale": 5.0},
    "lr-x10": {"lr_scale": 10.0},
    "lr-x0.3": {"lr_scale": 0.3},
    "steps-x2": {"steps_scale": 2.0},
    "steps-x4": {"steps_scale": 4.0},  # epochs over the same recorded batches: steps without new tokens
    "variance-loss": {"loss": "variance"},
    "channel-affine": {"hardware": {"output_scaler": "channel"}},
    "sigmas-4": {"init_sigmas": 4.0},
    "sigmas-3": {"init_sigmas": 3.0},
    "normaliser": {"hardware": {"normaliser": True}},  # a chip option, not a transfer one (periphery.normaliser)
}


def row_plan(name: str, base: GainCellConfig, context: int) -> tuple[GainCellConfig, dict]:
    """The chip and the transfer options of row ``name``: ``paper``, a constraint, ``all-lifted`` or a lever,
    then optionally ``+lever`` parts (``paper+channel-affine+variance-loss``, ``all-lifted+normaliser``)."""
    head, *levers = name.split("+")
    if head == "paper":
        hardware = base
    elif head == "all-lifted":
        hardware = base
        for constraint in CONSTRAINTS:
            hardware = lift(hardware, constraint, context)
    elif head in CONSTRAINTS:
        hardware = lift(base, head, context)
    else:
        hardware, levers = base, [head, *levers]
    options: dict = {}
    chip: dict = {}  # the levers' periphery fields, merged (channel-affine+normaliser sets two)
    for lever in levers:
        lever_options = dict(LEVERS[lever])
        chip.update(lever_options.pop("hardware", {}))
        options.update(lever_options)
    return _periphery(hardware, **chip), options


# -- data -------------------------------------------------------------------------------------------


def setup(args) -> dict:
    """Model, training and held-out blocks, the in-domain perplexity text, window and context."""
    if args.model == "stories":
        import sys

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from real_models import stories_setup

        found = stories_setup(argparse.Namespace(data=args.data, work=args.work, stories=args.stories))
        model, text, eval_ids = found["model"], found["train_text"], found["eval_ids"]
        window, context, stride = 64, 256, 128
    else:
        import sys

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from fetch_models import fetch_smollm2

        model = str(fetch_smollm2(args.cache))
        tokenizer = load_pretrained_tokenizer(model)
        text = str(args.data / "wikitext2-valid.txt")
        test = (args.data / "wikitext2-test.txt").read_text()
        eval_ids = torch.tensor(tokenizer(test, add_special_tokens=False)["input_ids"][: args.eval_tokens])
        window, context, stride = 512, 512, 256
    tokenizer = load_pretrained_tokenizer(model)
    blocks = corpus_blocks(load_text_corpus(text), tokenizer, context)
    train_blocks, held_blocks = split_blocks(blocks, 0.02)
    eval_ids = eval_ids[: args.eval_tokens]
    return {"model": model, "train": train_blocks, "held": held_blocks[: args.eval_blocks], "eval_ids": eval_ids,
            "window": window, "context": context, "stride": stride, "train_text": text}  # fmt: skip


class _Stop(Exception):
    pass


def _stop(*_):
    raise _Stop


@torch.no_grad()
def record_teacher(teacher, blocks: torch.Tensor, layers: list[int], batch: int, with_heads: bool) -> list[dict]:
    """Per batch of blocks: the chosen layers' recorded calls (and, ``with_heads``, the teacher's per-head
    attention outputs before o_proj, (B, H, T, D)). The forward stops after the last chosen layer."""
    modules = attention_modules(teacher)
    cells = gain_cell_layers(teacher)
    last = modules[max(layers)]
    out = []
    for start in range(0, len(blocks) - batch + 1, batch):
        heads: dict[int, torch.Tensor] = {}
        hooks = []
        if with_heads:
            for index in layers:
                hooks.append(
                    cells[index].register_forward_hook(lambda m, a, o, i=index, d=heads: d.__setitem__(i, o.detach()))
                )
        with capture_attention_io(teacher) as calls:
            hooks.append(last.register_forward_hook(_stop))  # after capture's own hook: the output is recorded
            try:
                teacher.base_model(input_ids=blocks[start : start + batch].long(), use_cache=False)
            except _Stop:
                pass
            chosen = {index: calls[index] for index in layers}
        for hook in hooks:
            hook.remove()
        out.append({"calls": chosen, "heads": heads})
    return out


@torch.no_grad()
def head_types(model_path: str, blocks: torch.Tensor, window: int) -> list[list[dict]]:
    """Per layer, per query head of the original model: mass on token 0, on token t−1, normalised entropy,
    over queries 1 … min(T, M) − 1 (those that see their whole past, in the window and out of it)."""
    model = load_pretrained(model_path).eval()
    sums: dict[int, torch.Tensor] = {}

    def record(module, query, key, value, output) -> None:
        groups = query.shape[1] // key.shape[1]
        n = min(query.shape[2], window)
        q, k = query[:, :, :n].float(), key.repeat_interleave(groups, dim=1)[:, :, :n].float()
        scores = (q @ k.transpose(-1, -2)) * module.scaling
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        p = scores.softmax(-1)[:, :, 1:]  # queries 1 … n−1
        t = torch.arange(1, n)
        sink = p[..., 0].mean((0, 2))
        previous = p[:, :, torch.arange(n - 1), t - 1].mean((0, 2))
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1) / torch.log(t + 1.0)
        stats = torch.stack([sink, previous, entropy.mean((0, 2)), torch.ones_like(sink)])
        sums[module.layer_idx] = sums.get(module.layer_idx, 0) + stats

    with tap_attention(model, record):
        for block in blocks:
            model(input_ids=block[None].long(), use_cache=False)
    result = []
    for index in sorted(sums):
        sink, previous, entropy, count = sums[index]
        layer = []
        for h in range(len(sink)):
            s, pr, e = float(sink[h] / count[h]), float(previous[h] / count[h]), float(entropy[h] / count[h])
            kind = "sink" if s >= 0.5 else "previous" if pr >= 0.5 else "broad" if e >= 0.5 else "focused"
            layer.append({"sink": round(s, 4), "previous": round(pr, 4), "entropy": round(e, 4), "type": kind})
        result.append(layer)
    return result


# -- one row ----------------------------------------------------------------------------------------


def run_row(name: str, args, data: dict, teachers: dict, types: list[list[dict]]) -> dict:
    """Initialise, transfer the chosen layers, measure on held-out blocks and the in-domain perplexity."""
    base = preset("paper", window=data["window"])
    hardware, options = row_plan(name, base, data["context"])
    lr = args.lr * options.pop("lr_scale", 1.0)
    steps = round(args.steps * options.pop("steps_scale", 1.0))
    sigmas = options.pop("init_sigmas", InitialiseConfig.sigmas)
    config = TransferConfig(max_steps=steps, batch_size=args.batch, lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20),
                            weight_decay=0.0, mixed_precision="no", **options)  # fmt: skip
    started = time.perf_counter()
    torch.manual_seed(0)
    student = load_pretrained(data["model"])
    init = InitialiseConfig(batch_size=args.batch, batches=max(1, args.init_blocks // args.batch), sigmas=sigmas)
    initialise_scalers(student, load_pretrained(data["model"]), data["train"], init, hardware)
    prepare_transfer(student, config, hardware)
    student.train()
    modules = attention_modules(student)
    chosen = [modules[i] for i in args.layers]
    parameters = [
        p for p in transfer_parameters(student, config.parameters) if any(p is q for m in chosen for q in m.parameters())
    ]
    for parameter in student.parameters():
        parameter.requires_grad_(any(parameter is p for p in parameters))
    optimizer = torch.optim.AdamW(parameter_groups(student, config.weight_decay), lr=lr, betas=config.betas)
    train_calls = teachers[hardware.window]["train"]
    curve = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        record = train_calls[step % len(train_calls)]["calls"]
        losses = torch.stack(
            [transfer_loss(replay(modules[i], record[i]), record[i].output, config.loss) for i in args.layers]
        )
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            curve.append(
                {
                    "step": step + 1,
                    "tokens": (step + 1) * args.batch * data["context"],
                    "loss": float(losses.detach().mean()),
                }
            )
            print(f"  {name} step {step + 1}/{steps} loss {curve[-1]['loss']:.4f}", flush=True)
    train_seconds = time.perf_counter() - started
    student.eval()
    measured = held_out_errors(student, args.layers, teachers[hardware.window]["held"], types)
    # perplexity: the chosen layers on the chip, the others the teacher's sliding-window softmax
    cells = gain_cell_layers(student)
    for index, cell in enumerate(cells):
        if index not in args.layers:
            cell.set_config(preset("softmax", window=hardware.window))
    with torch.no_grad():
        ppl = strided_perplexity(student, data["eval_ids"], data["context"], data["stride"], batch_size=4)["ppl"]
    return {"row": name, "hardware": hardware.to_dict(), "transfer": {k: v for k, v in dataclasses.asdict(config).items()
            if k in ("lr", "min_lr", "max_steps", "batch_size", "warmup_steps", "loss")}, "init_sigmas": sigmas,
            "tokens": steps * args.batch * data["context"], "train_seconds": round(train_seconds, 1),
            "curve": curve, "perplexity": ppl, **measured}  # fmt: skip


@torch.no_grad()
def held_out_errors(student, layers: list[int], held: list[dict], types: list[list[dict]]) -> dict:
    """Pooled per-layer relative MSE; per-head relative error of each head's contribution through o_proj."""
    modules, cells = attention_modules(student), gain_cell_layers(student)
    error = {i: [0.0, 0.0] for i in layers}
    head_error = {i: None for i in layers}
    for record in held:
        heads: dict[int, torch.Tensor] = {}
        hooks = [cells[i].register_forward_hook(lambda m, a, o, i=i, d=heads: d.__setitem__(i, o)) for i in layers]
        outputs = {i: replay(modules[i], record["calls"][i]) for i in layers}
        for hook in hooks:
            hook.remove()
        for i in layers:
            target = record["calls"][i].output
            error[i][0] += float((outputs[i] - target).square().sum())
            error[i][1] += float(target.square().sum())
            w_student, w_teacher = modules[i].o_proj.weight, record["o_proj"][i]
            n_heads, dim = heads[i].shape[1], heads[i].shape[3]
            sums = torch.zeros(2, n_heads, dtype=torch.float64)
            for h in range(n_heads):
                columns = slice(h * dim, (h + 1) * dim)
                mine = heads[i][:, h] @ w_student[:, columns].T
                theirs = record["heads"][i][:, h] @ w_teacher[:, columns].T
                sums[0, h] += float((mine - theirs).square().sum())
                sums[1, h] += float(theirs.square().sum())
            head_error[i] = sums if head_error[i] is None else head_error[i] + sums
    per_layer = {str(i): error[i][0] / error[i][1] for i in layers}
    per_head = {str(i): (head_error[i][0] / head_error[i][1].clamp_min(1e-30)).tolist() for i in layers}
    by_type: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in HEAD_TYPES}
    for i in layers:  # (relative error, error energy, output energy), energies as fractions of the layer's output
        for h, value in enumerate(per_head[str(i)]):
            by_type[types[i][h]["type"]].append((value, float(head_error[i][0, h]) / error[i][1],
                                                 float(head_error[i][1, h]) / error[i][1]))  # fmt: skip
    total_error = sum(e for rows in by_type.values() for _, e, _ in rows)
    total_output = sum(o for rows in by_type.values() for _, _, o in rows)
    summary = {kind: {"heads": len(rows), "mean": sum(r for r, _, _ in rows) / len(rows) if rows else None,
                      "error_share": sum(e for _, e, _ in rows) / total_error,
                      "output_share": sum(o for _, _, o in rows) / total_output}
               for kind, rows in by_type.items()}  # fmt: skip
    head_energy = {str(i): (head_error[i] / error[i][1]).tolist() for i in layers}
    return {"per_layer": per_layer, "mean_layer": sum(per_layer.values()) / len(per_layer), "per_head": per_head,
            "per_head_energy": head_energy, "by_type": summary}  # fmt: skip


# -- table ------------------------------------------------------------------------------------------


def teacher_records(args, data: dict, hardware: GainCellConfig) -> dict:
    """The teacher's recorded layer calls for training and held-out blocks, kept in --work (a rerun reads them)."""
    path = args.work / f"teacher-window{hardware.window}-steps{args.steps}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    started = time.perf_counter()
    teacher = make_teacher(load_pretrained(data["model"]), "window", hardware)
    needed = max(1, min(args.steps, len(data["train"]) // args.batch))
    train = record_teacher(teacher, data["train"][: needed * args.batch], args.layers, args.batch, False)
    held = record_teacher(teacher, data["held"], args.layers, 1, True)
    modules = attention_modules(teacher)
    for record in held:
        record["o_proj"] = {i: modules[i].o_proj.weight.detach() for i in args.layers}
    records = {"train": train, "held": held}
    with atomic_file(path, "wb") as handle:
        torch.save(records, handle)
    print(f"teacher window {hardware.window}: {len(train)} batches in {time.perf_counter() - started:.0f} s", flush=True)
    return records


def results_folder(out: Path, model: str, tag: str) -> Path:
    """Where a run's (or a merge's) tables go: ``OUT/transfer-bounds-MODEL[-TAG]/``."""
    return out / f"transfer-bounds-{model}{'-' + tag if tag else ''}"


def write_tables(args, data: dict, types, rows: dict, baseline: dict) -> None:
    folder = results_folder(args.out, args.model, args.tag)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / "results"
    settings = {"model": data["model"], "train_text": data["train_text"], "layers": args.layers, "steps": args.steps,
                "batch": args.batch, "context": data["context"], "window": data["window"], "lr": args.lr,
                "held_out_blocks": len(data["held"]), "init_blocks": args.init_blocks, "threads": args.threads,
                "eval_tokens": int(len(data["eval_ids"]))}  # fmt: skip
    with atomic_file(stem.with_suffix(".json")) as handle:
        json.dump({"settings": settings, "reference": baseline, "head_types": types, "rows": rows}, handle, indent=1)
    counts = {
        kind: sum(types[i][h]["type"] == kind for i in args.layers for h in range(len(types[i]))) for kind in HEAD_TYPES
    }
    lines = [f"# Transfer bounds: {args.model}", "",
             f"Layers {args.layers}, {args.steps} steps × {args.batch} blocks × {data['context']} tokens "
             f"(lr {args.lr}), window {data['window']}; held out: {len(data['held'])} blocks; perplexity on "
             f"{len(data['eval_ids'])} in-domain tokens (context {data['context']}, stride {data['stride']}).",
             f"Reference perplexity: original {baseline['original']:.3f}, sliding-window softmax "
             f"{baseline['window']:.3f}. Head types ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
             "per type: the mean over its heads of each head's contribution error |W_h(o_s − o_t)|²/|W_h o_t|², and "
             "(in brackets) its share of the summed head error energy.", "",
             "| row | tokens | mean layer MSE | " + " | ".join(f"L{i}" for i in args.layers) + " | "
             + " | ".join(HEAD_TYPES) + " | ppl | s |",
             "|---" * (5 + len(args.layers) + len(HEAD_TYPES)) + "|"]  # fmt: skip
    for name, row in rows.items():
        by_type = [row["by_type"][k] for k in HEAD_TYPES]
        lines.append(
            f"| {name} | {row['tokens']:,} | {row['mean_layer']:.3f} | "
            + " | ".join(f"{row['per_layer'][str(i)]:.3f}" for i in args.layers) + " | "
            + " | ".join("–" if v["mean"] is None else f"{v['mean']:.2f} ({100 * v['error_share']:.0f} %)" for v in by_type)
            + f" | {row['perplexity']:.2f} | {row['train_seconds']:.0f} |"
        )  # fmt: skip
    with atomic_file(stem.with_suffix(".md")) as handle:
        handle.write("\n".join(lines) + "\n")


def merge_groups(out: Path, model: str, tags: list[str], tag: str) -> dict:
    """One table over the layers of several runs (``--merge TAG ...``): each layer trains only on its own
    teacher inputs, so layer groups run apart measure what one run over all of them would (apart from the
    shared gradient clipping). A row counts where every group has it; the others are named as incomplete.
    Writes ``transfer-bounds-MODEL-TAG/results.{json,md}`` and returns the JSON."""
    groups = {}
    for name in tags:
        path = results_folder(out, model, name) / "results.json"
        if not path.is_file():
            raise SystemExit(f"--merge: no results for tag {name!r} ({path})")
        groups[name] = json.loads(path.read_text())
    layers = [layer for found in groups.values() for layer in found["settings"]["layers"]]
    if len(set(layers)) != len(layers):
        raise SystemExit(f"--merge: the groups' layers overlap ({sorted(layers)}); each layer must be in one group")
    names = list(dict.fromkeys(row for found in groups.values() for row in found["rows"]))
    complete = [row for row in names if all(row in found["rows"] for found in groups.values())]
    rows = {}
    for row in complete:
        per_layer = {str(i): found["rows"][row]["per_layer"][str(i)] for found in groups.values()
                     for i in found["settings"]["layers"]}  # fmt: skip
        ppl = {name: found["rows"][row]["perplexity"] for name, found in groups.items()}
        rows[row] = {"per_layer": dict(sorted(per_layer.items(), key=lambda item: int(item[0]))),
                     "mean_layer": sum(per_layer.values()) / len(per_layer),
                     "train_seconds": sum(found["rows"][row]["train_seconds"] for found in groups.values()),
                     "tokens_per_group": sorted({found["rows"][row]["tokens"] for found in groups.values()}),
                     "group_perplexity": ppl}  # fmt: skip
    incomplete = {row: [name for name, found in groups.items() if row not in found["rows"]]
                  for row in names if row not in complete}  # fmt: skip
    result = {"settings": {"groups": {name: found["settings"]["layers"] for name, found in groups.items()},
                           "layers": sorted(layers)},
              "reference": {name: found["reference"] for name, found in groups.items()},
              "rows": rows, "incomplete": incomplete}  # fmt: skip
    folder = results_folder(out, model, tag)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "results.json") as handle:
        json.dump(result, handle, indent=1)
    lines = [f"# Transfer bounds: {model}, {len(layers)} layers from {len(groups)} runs", "",
             "Runs (tag: layers): " + "; ".join(f"{name}: {found['settings']['layers']}" for name, found in groups.items())
             + ". Each run trained and measured its own layers; the others kept the teacher's attention there, so the "
             "perplexities are per run (its layers on the chip).", "",
             "| row | mean layer MSE | layers ≤ 0.15 | worst layer | perplexity per run | s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row, found in rows.items():
        worst = max(found["per_layer"], key=found["per_layer"].get)
        low, high = min(found["group_perplexity"].values()), max(found["group_perplexity"].values())
        below = sum(value <= 0.15 for value in found["per_layer"].values())
        lines.append(f"| {row} | {found['mean_layer']:.3f} | {below} of {len(layers)} | L{worst} "
                     f"{found['per_layer'][worst]:.3f} | {low:.2f}–{high:.2f} | {found['train_seconds']:.0f} |")  # fmt: skip
    lines += ["", "| layer | " + " | ".join(rows) + " |", "|---" * (1 + len(rows)) + "|"]
    for layer in sorted(layers):
        lines.append(f"| {layer} | " + " | ".join(f"{found['per_layer'][str(layer)]:.3f}" for found in rows.values()) + " |")
    if incomplete:
        lines += [
            "",
            "Incomplete rows (missing in): " + "; ".join(f"{row} ({', '.join(miss)})" for row, miss in incomplete.items()),
        ]
    with atomic_file(folder / "results.md") as handle:
        handle.write("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("stories", "smollm2"))
    parser.add_argument("--data", type=Path, default=data_dir())
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "models")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "transfer-bounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--rows", nargs="+", default=["paper", *CONSTRAINTS, "all-lifted"])
    parser.add_argument("--layers", nargs="+", type=int, help="layers to transfer (default all)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--stories", type=int, default=2048)
    parser.add_argument("--eval-blocks", type=int, default=8)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--init-blocks", type=int, default=32, help="blocks the scaler statistics come from")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--merge", nargs="+", metavar="TAG",
                        help="no training: one table over these runs' layers, written under --tag")  # fmt: skip
    args = parser.parse_args()
    if args.merge:
        if not args.tag:
            parser.error("--merge needs --tag: the merged table's own folder")
        merge_groups(args.out, args.model, args.merge, args.tag)
        return
    torch.set_num_threads(args.threads)
    data = setup(args)
    args.work = args.work / f"{args.model}{'-' + args.tag if args.tag else ''}"
    args.work.mkdir(parents=True, exist_ok=True)
    pretrained = load_pretrained(data["model"])
    n_layers = len(attention_modules(pretrained))
    args.layers = sorted(args.layers or range(n_layers))
    types = head_types(data["model"], data["held"][:4], data["window"])
    reference = args.work / "reference.json"
    if reference.is_file():
        baseline = json.loads(reference.read_text())
    else:
        with torch.no_grad():
            original = strided_perplexity(pretrained, data["eval_ids"], data["context"], data["stride"], 4)["ppl"]
            windowed = make_teacher(load_pretrained(data["model"]), "window", preset("paper", window=data["window"]))
            window = strided_perplexity(windowed, data["eval_ids"], data["context"], data["stride"], 4)["ppl"]
        baseline = {"original": original, "window": window}
        with atomic_file(reference) as handle:
            json.dump(baseline, handle)
    rows: dict = {}
    teachers: dict = {}
    for name in args.rows:
        path = args.work / f"{name}.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
            continue
        hardware, _ = row_plan(name, preset("paper", window=data["window"]), data["context"])
        if hardware.window not in teachers:
            teachers[hardware.window] = teacher_records(args, data, hardware)
        print(f"row {name}", flush=True)
        rows[name] = run_row(name, args, data, teachers, types)
        with atomic_file(path) as handle:
            json.dump(rows[name], handle)
        write_tables(args, data, types, rows, baseline)
        print(f"row {name}: mean layer {rows[name]['mean_layer']:.4f}, ppl {rows[name]['perplexity']:.3f}", flush=True)
    write_tables(args, data, types, rows, baseline)


if __name__ == "__main__":
    main()
