"""Run gaincell.adaptation.train in a fresh process, for the kill/resume and multi-process tests.

usage: train_worker.py BLOCKS.pt OUTPUT_DIR MAX_STEPS [--resume] [--slow-after STEP]

Trains the tiny GPT-2 the tests use on the saved (train, eval) blocks and writes
``OUTPUT_DIR/result-rank{RANK}.json`` with the final losses and a digest of the weights.
``--slow-after`` sleeps after each later step so that a test can kill the run mid-way.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gaincell.adaptation.settings import TrainConfig
from gaincell.adaptation.train import train


class SlowDown:
    def __init__(self, after: int) -> None:
        self.after = after

    def on_step_end(self, step, model, metrics) -> None:
        if step > self.after:
            time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("blocks")
    parser.add_argument("output_dir")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow-after", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = torch.load(args.blocks)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=data["vocab_size"], bos_token_id=0, eos_token_id=0
        )
    )
    config = TrainConfig(
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=4,
        max_steps=args.max_steps,
        batch_size=4,
        grad_accum=2,
        eval_every=10,
        eval_batches=4,
        checkpoint_every=10,
        log_every=1,
        progress_bar=False,
    )
    callbacks = [SlowDown(args.slow_after)] if args.slow_after is not None else []
    result = train(model, data["train"], data["eval"], config, args.output_dir, resume=args.resume, callbacks=callbacks)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    summary = {
        "num_processes": world,
        "step": result.step,
        "loss": result.loss,
        "eval_loss": result.eval_loss,
        "weights": digest.hexdigest(),
        "first_loss": result.history[0]["loss"] if result.history else None,
    }
    Path(args.output_dir, f"result-rank{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
