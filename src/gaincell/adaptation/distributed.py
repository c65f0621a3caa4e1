"""What the stages do differently under ``torchrun`` / ``accelerate launch``: one rank, one barrier, one set of scalers.

Every helper is a no-op in a single process (no process group), so the stages call them unconditionally.
"""

from __future__ import annotations

import torch

from gaincell.hf.layer import gain_cell_layers


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def collective_device(model) -> torch.device:
    """Where the model's tensors go for a collective: NCCL moves only CUDA tensors."""
    device = next(model.parameters()).device
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def broadcast_scalers(model, src: int = 0) -> None:
    """With several processes, give every process the scalers of process ``src``."""
    if not is_distributed():
        return
    device = collective_device(model)
    for cell in gain_cell_layers(model):
        for parameter in cell.scalers.parameters():
            data = parameter.data.to(device)
            torch.distributed.broadcast(data, src=src)
            parameter.data.copy_(data)
