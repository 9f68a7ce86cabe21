"""Export learned prompts: paste-ready .txt files + a versioned JSON/YAML record (docs/EXPORT_TRANSFER.md).

    rlprompt export runs/car_sales/20260101-120000-ppo              # → <run>/export/
    rlprompt export reports/compare/xyz --out exports/xyz           # prompts/<method>.json → one folder each
    rlprompt export runs/car_sales/20260101-120000-ppo --verify     # re-score: must equal summary.json

The export format lives in rlprompt/evaluation/export.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rlprompt.cli import guarded, setup_logging


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt export ...` and `scripts/export.py ...` (argv defaults to sys.argv[1:])."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="run folder, comparison report folder, or a prompts file")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <source>/export)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-score the export with the run's config on every split in summary.json and require equal means",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --verify")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(None if argv is None else list(argv))
    guarded(lambda: run(args), debug=args.debug)


def run(args: argparse.Namespace) -> None:
    from rlprompt.errors import UserError
    from rlprompt.evaluation.export import export, load_exported, verify_against_summary

    setup_logging()
    written = export(args.source, args.out)
    for path in written:
        prompts = load_exported(path)
        print(f"{path}  ({prompts.method} @ {prompts.source_model}, {len(prompts.per_context)} contexts)")
    if args.verify:
        import torch

        torch.set_num_threads(args.threads)
        if not (args.source / "summary.json").is_file():
            raise UserError(f"--verify needs a run folder with summary.json, got {args.source}")
        for split, (expected, got) in verify_against_summary(written[0], args.source).items():
            status = "ok" if expected == got else "MISMATCH"
            print(f"  verify {split:16s} summary {expected!r}  export {got!r}  {status}")
            if expected != got:
                raise UserError(f"exported prompts score {got!r} on {split}, summary.json says {expected!r}")
