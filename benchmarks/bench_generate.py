"""Generation speed: ``model.generate`` through ``GainCellCache`` against softmax with transformers' cache.

Prints one JSON object. Slow-downs are softmax tokens/s over gain-cell tokens/s, in wall time and in
process CPU time (the fairer one on a machine shared with other jobs; with ``--threads 1`` it is the
compute spent). Each case (model, attention, prompt length, batch) runs in a fresh subprocess
so its peak memory is clean: peak RSS during one ``generate`` (sampled every millisecond) minus RSS
just before it; the ``--repeats`` timed generations run after it, without the sampler. Greedy
decoding, every sequence forced to ``--new-tokens`` tokens (``min_new_tokens``), random prompt
tokens from a fixed seed.

- ``gaincell``: the model converted with the ``paper`` preset, window ``--window`` (default 256): each
  layer reads a gain-cell memory of M slots (SPEC §3.6);
- ``softmax``: the same model unconverted, transformers' default (dynamic) cache over every token.

Models: ``stories260K`` (a real Llama, 5 layers, 8 heads / 4 kv heads, D = 8; ``--stories PATH``)
and ``gpt2-shape`` (GPT-2 small's shape, 12 layers, 12 heads, D = 64, random weights).
``--long N`` adds, per model and attention, one generation of N tokens after a 128-token prompt and
reports tokens/s over its first and last 64 tokens (per-step timestamps): with a full window the
gain-cell memory's cost per token must not grow.

Usage: ``python benchmarks/bench_generate.py [--quick] [--threads 2] [--long 2048] [--device cuda --dtype bfloat16]``;
a recorded run goes in a folder of its own, ``> benchmarks/results/bench-generate-MACHINE/results.json``
(``bench-generate-quiet-1thread``, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from gaincell.devices import parse_device, parse_dtype, synchronize


def _default_stories() -> Path | None:
    """stories260K in the shared data folder ($GAINCELL_DATA, else ../shared/data)."""
    from gaincell.datadir import data_dir

    folder = data_dir()
    return folder / "models" / "stories260K" if folder else None


GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=4096)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples RSS every millisecond in a thread: the peak during a block, above its start."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


class _StepClock:
    """A logits processor that only records when each new token's logits arrive (on a GPU, once they are
    computed: it synchronises the device first)."""

    def __init__(self, device: torch.device):
        self.times: list[float] = []
        self.device = device

    def __call__(self, input_ids, scores):
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def build_model(name: str, attention: str, window: int, stories: str, shape: dict | None = None):
    """``stories260K`` from ``stories``, or a GPT-2-architecture model of random weights (``GPT2_SHAPE``,
    or ``shape``'s fields over it), converted to the ``paper`` chip for ``gaincell``."""
    from transformers import AutoModelForCausalLM, GPT2Config

    import gaincell

    if name == "stories260K":
        model = AutoModelForCausalLM.from_pretrained(stories)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(GPT2Config(**{**GPT2_SHAPE, **(shape or {})}))
    model.eval()
    if attention == "gaincell":
        gaincell.convert(model, "paper", window=window)
    return model


def run_case(
    name: str, attention: str, prompt: int, batch: int, new: int, window: int, stories: str, repeats: int = 1,
    device: str = "cpu", dtype: str = "float32", shape: dict | None = None,
) -> dict:  # fmt: skip
    """One model: a warm-up, one generation under the RSS sampler (peak memory; on CUDA the allocator's
    peak), then ``repeats`` timed generations without it (a thread waking every millisecond would tax
    the timings); the fastest is reported. On CUDA each timing ends with a device synchronisation."""
    from transformers import LogitsProcessorList

    place = parse_device(device)
    model = build_model(name, attention, window, stories, shape).to(device=place, dtype=parse_dtype(dtype))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), generator=generator).to(place)
    options = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    runs = []
    with torch.no_grad():
        model.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, **options)  # warm-up
        synchronize(place)
        if place.type == "cuda":
            torch.cuda.reset_peak_memory_stats(place)
            base = torch.cuda.memory_allocated(place)
        with _PeakRss() as rss:
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, **options)
        growth = torch.cuda.max_memory_allocated(place) - base if place.type == "cuda" else rss.growth
        for _ in range(repeats):
            clock = _StepClock(place)
            start, cpu_start = time.perf_counter(), time.process_time()
            model.generate(
                ids, max_new_tokens=new, min_new_tokens=new, logits_processor=LogitsProcessorList([clock]), **options
            )
            synchronize(place)
            runs.append((time.perf_counter() - start, time.process_time() - cpu_start, clock.times))
    seconds, cpu_seconds, steps = min(runs, key=lambda run: run[0])
    result = {
        "model": name,
        "attention": attention,
        "prompt": prompt,
        "batch": batch,
        "new_tokens": new,
        "window": window if attention == "gaincell" else None,
        "seconds": seconds,
        "tokens_per_s": batch * new / seconds,
        "cpu_seconds": cpu_seconds,  # on a shared machine: compute spent, less what waiting for a core adds
        "tokens_per_cpu_s": batch * new / cpu_seconds,
        "decode_tokens_per_s": batch * (len(steps) - 1) / (steps[-1] - steps[0]),
        "peak_memory_growth_mb": growth / 2**20,
        "device": str(place),
        "dtype": dtype,
        "repeats": repeats,
        "tokens_per_s_all": [round(batch * new / run[0], 2) for run in runs],
    }
    if new >= 256:
        span = 64
        result["first_64_tokens_per_s"] = batch * span / (steps[span] - steps[0])
        result["last_64_tokens_per_s"] = batch * span / (steps[-1] - steps[-1 - span])
    return result


def ops_per_token(
    name: str, attention: str, window: int, stories: str, shape: dict | None = None, prompt: int = 16,
    device: str = "cpu", dtype: str = "float32",
) -> dict:  # fmt: skip
    """Tensor operations per generated token: a generation of 3 new tokens minus one of 2, counted by a
    dispatch mode, so prefill and set-up cancel and one decode step remains. ``computing_ops`` leaves out
    views and allocations (no kernel): on a GPU each of the rest is at least one kernel launch, the cost
    of a decode step at small batch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    free = {"empty", "new_empty", "empty_like", "empty_strided", "detach", "lift_fresh", "alias"}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = self.computing = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            self.computing += not (func.is_view or func.overloadpacket.__name__ in free)
            return func(*args, **(kwargs or {}))

    place = parse_device(device)
    model = build_model(name, attention, window, stories, shape).to(device=place, dtype=parse_dtype(dtype))
    ids = torch.randint(3, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0)).to(place)
    options = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    counts = []
    with torch.no_grad():
        for new in (2, 3):
            with Count() as count:
                model.generate(ids, max_new_tokens=new, min_new_tokens=new, **options)
            counts.append((count.calls, count.computing))
    return {"model": name, "attention": attention, "ops_per_token": counts[1][0] - counts[0][0],
            "computing_ops_per_token": counts[1][1] - counts[0][1], "layers": model.config.num_hidden_layers}  # fmt: skip


def _subprocess(case: dict, threads: int) -> dict:
    argv = [sys.executable, __file__, "--case", json.dumps(case), "--threads", str(threads)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {**case, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cases(args: argparse.Namespace) -> list[dict]:
    prompts, batches, new = ((128,), (1,), 64) if args.quick else ((128, 1024), (1, 8), args.new_tokens)
    prompts, batches = args.prompts or prompts, args.batches or batches
    models = args.models
    common = dict(window=args.window, stories=str(args.stories), repeats=args.repeats, device=args.device, dtype=args.dtype)
    grid = [
        dict(name=m, attention=a, prompt=p, batch=b, new=new, **common)
        for m in models
        for p in prompts
        for b in batches
        for a in ("gaincell", "softmax")
    ]
    if args.long:
        grid += [
            dict(name=m, attention=a, prompt=128, batch=1, new=args.long, **{**common, "repeats": 1})
            for m in models
            for a in ("gaincell", "softmax")
        ]
    return grid


def ratios(results: list[dict]) -> list[dict]:
    """Softmax tokens/s over gain-cell tokens/s for every case measured both ways (> 1: gain cells slower)."""
    keyed = {(r["model"], r["prompt"], r["batch"], r["new_tokens"], r["attention"]): r for r in results if "error" not in r}
    rows = []
    for (model, prompt, batch, new, attention), gain in keyed.items():
        soft = keyed.get((model, prompt, batch, new, "softmax"))
        if attention != "gaincell" or soft is None:
            continue
        row = {"model": model, "prompt": prompt, "batch": batch, "new_tokens": new}
        row["gaincell_tokens_per_s"] = round(gain["tokens_per_s"], 1)
        row["softmax_tokens_per_s"] = round(soft["tokens_per_s"], 1)
        row["slowdown"] = round(soft["tokens_per_s"] / gain["tokens_per_s"], 2)
        row["slowdown_cpu_time"] = round(soft["tokens_per_cpu_s"] / gain["tokens_per_cpu_s"], 2)
        row["slowdown_decode_only"] = round(soft["decode_tokens_per_s"] / gain["decode_tokens_per_s"], 2)
        if "last_64_tokens_per_s" in gain:
            row["gaincell_first_last_64"] = [round(gain["first_64_tokens_per_s"], 1), round(gain["last_64_tokens_per_s"], 1)]
            row["softmax_first_last_64"] = [round(soft["first_64_tokens_per_s"], 1), round(soft["last_64_tokens_per_s"], 1)]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prompt 128, batch 1, 64 new tokens")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--window", type=int, default=256, help="gain-cell window M (default 256)")
    parser.add_argument("--long", type=int, default=0, metavar="N", help="also one N-token generation per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=["stories260K", "gpt2-shape"], choices=["stories260K", "gpt2-shape"])
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths (default: 128 1024)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: 1 8)")
    parser.add_argument("--stories", type=Path, help="the stories260K model directory (default: the shared data folder's)")
    parser.add_argument("--repeats", type=int, default=1, help="generations per case, the fastest kept (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="the models' weights: float32 | bfloat16 | float16")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return
    parse_device(args.device), parse_dtype(args.dtype)  # a device this machine lacks: one line, before any case
    args.stories = args.stories or _default_stories()
    if args.stories is None and "stories260K" in args.models:
        parser.error("--stories: no stories260K here; set GAINCELL_DATA to the shared data folder or pass --stories DIR")
    results = []
    for case in cases(args):
        results.append(_subprocess(case, args.threads))
        print(json.dumps(results[-1]), file=sys.stderr)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "torch": torch.__version__,
        "greedy": True,
        "ratios": ratios(results),
        "cases": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
