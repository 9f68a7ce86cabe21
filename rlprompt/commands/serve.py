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

from collections.abc import Sequence

from omegaconf import DictConfig

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, run_hydra


def main(cfg: DictConfig) -> None:
    guarded(lambda: serve(cfg))


COMMAND = HydraCommand("serve", __doc__ or "", main, config_name="gateway")


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt serve ...` and `scripts/serve.py ...`."""
    run_hydra(COMMAND, argv, prog)


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
