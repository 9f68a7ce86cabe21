"""Serve learned prompts on live traffic and keep learning from outcomes (docs/SERVE.md).

    rlprompt serve                                                  # task's base + seed prompts, SQLite
    rlprompt serve serve.portfolio=[runs/car_sales/<run>/export] serve.port=8000
    rlprompt serve target=openai target.base_url=http://127.0.0.1:9000/v1 target.model=m
    rlprompt serve "serve.database='postgresql+psycopg://user@/rlprompt?host=/run/postgresql'"  # replicas

An OpenAI-compatible gateway (POST /v1/chat/completions, POST /v1/feedback, GET /v1/arms,
GET /dashboard) that picks a prompt arm per conversation by contextual Thompson sampling, logs
every call and feedback to the database, and evolves the portfolio (serve.evolve_every).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from omegaconf import DictConfig

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, _defaults, command_help, run_hydra
from rlprompt.config import config_dir


def main(cfg: DictConfig) -> None:
    guarded(lambda: serve(cfg))


COMMAND = HydraCommand("serve", __doc__ or "", main, config_name="gateway")


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt serve ...` and `scripts/serve.py ...`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(serve_help(prog or os.path.basename(sys.argv[0]), args))
        return
    run_hydra(COMMAND, argv, prog)


def serve_help(prog: str, args: Sequence[str]) -> str:
    """The shared help, with the defaults of configs/gateway.yaml starred (the generic help stars
    config.yaml's, which said `ppo*` although serve runs the bandit)."""
    text = command_help(COMMAND, prog, args)
    for group, option in _defaults(config_dir() / f"{COMMAND.config_name}.yaml").items():
        group = group.removeprefix("override ").strip()
        if option is None:
            continue

        def restar(match: re.Match, option: str = option) -> str:
            options = [o.rstrip("*") for o in match.group(2).split(", ")]
            return match.group(1) + ", ".join(f"{o}*" if o == option else o for o in options)

        text = re.sub(rf"(?m)^(  {re.escape(group)} +)(.*)$", restar, text)
    return text


def serve(cfg: DictConfig) -> None:
    import logging

    import uvicorn

    from rlprompt.build import build_cache, build_target, set_threads
    from rlprompt.config import validate
    from rlprompt.serve.app import create_app
    from rlprompt.serve.gateway import Gateway
    from rlprompt.task import load_task

    setup_logging()
    run = validate(cfg)
    set_threads(run)
    task = load_task(run.task.name, run.task.path)
    target = build_target(run.target, build_cache(run.cache), role="gateway")
    gateway = Gateway(run, task, target)
    logging.getLogger(__name__).info(
        "serving %d arms on http://%s:%d (database %s)",
        len(gateway.portfolio.arms),
        run.serve.host,
        run.serve.port,
        gateway.engine.url.render_as_string(hide_password=True),
    )
    try:
        uvicorn.run(
            create_app(gateway),
            host=run.serve.host,
            port=run.serve.port,
            log_config=None,
            access_log=run.serve.access_log,
            timeout_graceful_shutdown=10,
        )
    finally:
        gateway.close()
