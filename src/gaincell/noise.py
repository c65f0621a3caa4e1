"""Library messages gaincell knows to be harmless, kept off the user's screen (and nothing else).

transformers warns "`loss_type=None` was set in the config but it is unrecognized" the first time a
GPT-2 computes a loss: it derives the loss name from the class name, which ``GPT2LMHeadModel`` does not
match, and then uses the causal-LM loss anyway, the one gaincell wants. The warning is filtered by its
text on the one logger that emits it; every other message passes.
"""

from __future__ import annotations

import logging

KNOWN_HARMLESS = ("`loss_type=None` was set in the config but it is unrecognized",)
EMITTER = "transformers.modeling_utils"


class _KnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in KNOWN_HARMLESS)


def filter_known_warnings() -> None:
    """Install the filter once (needs no import of transformers: loggers exist by name)."""
    logger = logging.getLogger(EMITTER)
    if not any(isinstance(existing, _KnownHarmless) for existing in logger.filters):
        logger.addFilter(_KnownHarmless())


def quiet_loading_bars() -> None:
    """No "Loading weights" / "Writing model shards" bars from transformers (the commands print their own
    lines about what they loaded and saved); the hub's download bars stay, a long download shows progress."""
    import os

    import huggingface_hub.utils
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # also switches the hub's bars off ...
    if not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        huggingface_hub.utils.enable_progress_bars()  # ... which come back unless the user turned them off
