"""Decoder shapes the cost model knows by name (``gaincell hw --model``), for SPEC-hardware §6.3.3.

A shape sets the attention workload (layers, heads, head size) and, for the whole-model (Amdahl) view,
the weights that stay on the GPU: the Q/K/V/output projections, the MLP and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

from gaincell.errors import GainCellError


@dataclass(frozen=True)
class DecoderShape:
    """Public architecture of a decoder-only transformer."""

    name: str
    layers: int
    d_model: int
    heads: int
    head_dim: int
    ffn: int  # MLP hidden width
    mlp_matrices: int  # 2 for GELU MLPs (GPT-2), 3 for SwiGLU (Llama)
    vocab: int
    source: str

    @property
    def weights_per_layer(self) -> int:
        """Projection and MLP weights of one layer: 4 x d_model x H·D + mlp_matrices x d_model x ffn."""
        return 4 * self.d_model * self.heads * self.head_dim + self.mlp_matrices * self.d_model * self.ffn

    @property
    def lm_head_weights(self) -> int:
        """The output projection to the vocabulary, read once per decode step."""
        return self.vocab * self.d_model


_GPT2 = "Hugging Face config.json of openai-community/{}; Radford et al. 2019"
DECODERS: dict[str, DecoderShape] = {
    "gpt2": DecoderShape("gpt2", 12, 768, 12, 64, 3072, 2, 50257, _GPT2.format("gpt2")),
    "gpt2-medium": DecoderShape("gpt2-medium", 24, 1024, 16, 64, 4096, 2, 50257, _GPT2.format("gpt2-medium")),
    "gpt2-large": DecoderShape("gpt2-large", 36, 1280, 20, 64, 5120, 2, 50257, _GPT2.format("gpt2-large")),
    "gpt2-xl": DecoderShape("gpt2-xl", 48, 1600, 25, 64, 6400, 2, 50257, _GPT2.format("gpt2-xl")),
    "llama-7b": DecoderShape(
        "llama-7b", 32, 4096, 32, 128, 11008, 3, 32000, "Touvron et al. 2023 (LLaMA), Table 2: 7B; SwiGLU MLP"
    ),
}


def decoder(name: str) -> DecoderShape:
    """Look a decoder up by name; the error lists the names known."""
    try:
        return DECODERS[name]
    except KeyError:
        raise GainCellError(f"--model: unknown model {name!r}; choose from {sorted(DECODERS)}") from None
