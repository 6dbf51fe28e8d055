"""``serve``: the HTTP API."""

from __future__ import annotations

import os
from typing import Optional

import typer

from app.core.config import get_settings


def serve(
    host: Optional[str] = typer.Option(None, help="Default: HM_HOST (127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Default: HM_PORT (8000)."),
    workers: Optional[int] = typer.Option(None, min=1, help="uvicorn worker processes (default: HM_WORKERS, 1)."),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.core.threads import intra_op_threads, set_thread_environment

    settings = get_settings()
    if workers is not None and workers != settings.workers:
        # Worker processes read their settings from the environment: they must know how many share the cores.
        os.environ["HM_WORKERS"] = str(workers)
        get_settings.cache_clear()
        settings = get_settings()
    threads = intra_op_threads(settings)
    if threads:  # before the workers load any library: OpenMP pools size themselves when loaded
        set_thread_environment(threads)
    # The model settings and weights are checked here, where an error is one clear line: inside the
    # server's start-up it would come out as a traceback (main() prints an AppError's message).
    from app.embedding import create_encoder

    create_encoder(settings).weights_path()
    proxies = settings.forwarded_allow_ips.strip()
    uvicorn.run("app.main:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None,
                workers=settings.workers)
