"""An output head of its own for a model whose input embedding and output head share one matrix.

Small pre-trained models often tie the two (stories260K, SmolLM2). RADLADS (arXiv 2505.03005) found
that such models distil badly while tied: the one matrix must serve the changed attention's inputs and
the logits at once. Untying gives the head a copy to train on its own; the model then saves both
matrices and ``tie_word_embeddings = false``, so a reload keeps them apart.
"""

from __future__ import annotations

from torch import nn

from gaincell.errors import GainCellError


def untie_embeddings(model) -> bool:
    """Give ``model``'s output head a trainable copy of the input embedding; False if they were not tied."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None:
        raise GainCellError(f"untie_embeddings: {type(model).__name__} has no output head (a causal LM is expected)")
    if outputs.weight is not inputs.weight:
        return False
    outputs.weight = nn.Parameter(inputs.weight.detach().clone(), requires_grad=inputs.weight.requires_grad)
    model.config.tie_word_embeddings = False  # save_pretrained writes it; from_pretrained then ties nothing
    model.config.get_text_config().tie_word_embeddings = False  # the same object, except in multimodal configs
    return True
