"""Calibrate one tiny gain-cell GPT-2 per process, for the multi-process calibration test (SPEC §4.2).

usage: torchrun --nproc_per_node 2 calibrate_worker.py OUTPUT_DIR [nan-on-last]

Every rank builds the same model (seed 0) with the same hand-set targets and calibrates it on its
own batch: first alone (no process group: the scalers this rank would keep by itself), then again
from scratch with the gloo group, where the scalers of the rank with the lowest loss are broadcast.
The model is biased towards token 5 and the last rank's batch is mostly 5s, so the last rank has
the lowest loss: a broadcast from rank 0 by mistake cannot pass the test. With ``nan-on-last``
the last rank's model holds a NaN weight, so its loss is NaN and it must not be chosen.
Writes ``OUTPUT_DIR/result-rank{RANK}.pt``.
"""

import os
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import gaincell
from gaincell.adaptation.calibration import calibrate
from gaincell.adaptation.settings import CalibrationConfig
from gaincell.errors import GainCellError
from gaincell.hf.layer import gain_cell_layers

FAVOURED_TOKEN = 5


def build_model(poisoned: bool = False):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    gaincell.convert(model, "paper", window=16, subtile_rows=8, block_size=16)
    with torch.no_grad():
        favoured = model.transformer.wte.weight[FAVOURED_TOKEN]
        model.transformer.ln_f.bias.copy_(8 * favoured / favoured.norm() ** 2)  # its logit +8 at every position
        for cell in gain_cell_layers(model):  # targets the nonlinear model does not meet on its own
            cell.target_count.fill_(1)
            cell.target_mean.zero_()
            cell.target_std.fill_(0.5)
        if poisoned:
            model.transformer.ln_f.weight[0] = float("nan")
    return model


def batch(rank: int, world: int) -> torch.Tensor:
    tokens = torch.randint(1, 300, (4, 32), generator=torch.Generator().manual_seed(100 + rank))
    if rank == world - 1:
        tokens[:, ::4] = tokens[:, 1::4] = tokens[:, 2::4] = FAVOURED_TOKEN
    return tokens


def scalers(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters() if ".gaincell.scalers." in name}


def main() -> None:
    torch.set_num_threads(1)
    output_dir = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # set by torchrun
    poisoned = sys.argv[2:] == ["nan-on-last"] and rank == world - 1
    config = CalibrationConfig(max_iterations=20)
    tokens = batch(rank, world)
    alone_model = build_model(poisoned)
    try:  # before the process group exists: nothing is shared
        alone = calibrate(alone_model, tokens, config)
        alone_loss, alone_errors = alone.loss, alone.errors
    except GainCellError:  # alone, the poisoned process's calibration stops: its loss is not finite
        alone_loss, alone_errors = float("nan"), []
    torch.distributed.init_process_group("gloo")
    model = build_model(poisoned)
    result = calibrate(model, tokens, config)
    torch.save(
        {
            "world": torch.distributed.get_world_size(),
            "alone_scalers": scalers(alone_model),
            "alone_loss": alone_loss,
            "scalers": scalers(model),
            "loss": result.loss,
            "losses": result.losses,
            "errors": result.errors,
            "alone_errors": alone_errors,
            "chosen_rank": result.rank,
        },
        output_dir / f"result-rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
