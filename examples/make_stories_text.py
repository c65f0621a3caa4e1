"""Write examples/data/stories260K-samples.txt: held-out evaluation text for the example sweep.

stories260K was trained on TinyStories, which is not on these machines; text sampled from the model
itself (temperature 1, no top-k, fixed seed) is in its own distribution, as in the SPEC §4.4 probe.
Its perplexity under the original model is about 4 (TinyStories itself: about 3.4).

Usage: ``python examples/make_stories_text.py [MODEL_DIR]``
(default: models/stories260K in $GAINCELL_DATA, else ../shared/data).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gaincell.datadir import require_data_dir

ROOT = Path(__file__).resolve().parent
MODEL = Path(sys.argv[1]) if len(sys.argv) > 1 else require_data_dir("make_stories_text.py") / "models" / "stories260K"
SEQUENCES, TOKENS, SEED = 12, 511, 0


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    torch.manual_seed(SEED)
    start = torch.full((SEQUENCES, 1), tokenizer.bos_token_id, dtype=torch.long)
    with torch.no_grad():
        out = model.generate(start, max_new_tokens=TOKENS, do_sample=True, temperature=1.0, top_k=0, pad_token_id=0)
    stories = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
    target = ROOT / "data" / "stories260K-samples.txt"
    target.parent.mkdir(exist_ok=True)
    target.write_text("\n\n".join(stories) + "\n")
    print(f"wrote {target}: {sum(len(s) for s in stories)} characters")


if __name__ == "__main__":
    main()
