"""Shared entry-point plumbing: user errors print one clear line (``debug=true`` shows the traceback)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from rlprompt.errors import UserError


def guarded(main: Callable[[], object], debug: bool = False) -> object:
    """Run `main`; a `UserError` exits with status 2 and its message, without a traceback."""
    try:
        return main()
    except UserError as err:
        if debug or "--debug" in sys.argv or "debug=true" in sys.argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:  # `rlprompt` console script
    print(
        "rlprompt: use `accelerate launch scripts/train.py`, `python scripts/compare.py`, "
        "`python scripts/score.py`, `python scripts/export.py` or `python scripts/transfer.py`."
    )
