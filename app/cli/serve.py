"""``serve``: the HTTP API."""

from __future__ import annotations

import os
from typing import Any, Optional

import typer

from app.core.config import Settings, get_settings


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
    # And the registry database's schema: upgraded here, once, when it is behind this version (before any worker
    # opens it), refused with the revisions named when it is ahead (app.registry.schema).
    from app.cli.console import open_registry

    open_registry().close()
    uvicorn.run("app.main:create_app", factory=True, **server_options(settings, host, port))


def server_options(settings: Settings, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """uvicorn's options as ``serve`` runs it (the tests start a server with these too).

    ``X-Forwarded-For`` is trusted only from the proxies ``HM_FORWARDED_ALLOW_IPS`` names (a proxy on
    the same machine: ``127.0.0.1``); then the client address, which the wrong-key limit counts by, is
    the one the proxy saw. With none, uvicorn's own default (trust 127.0.0.1) is not used: a client
    could choose its address, and behind an unnamed proxy every user shares the proxy's.
    """
    proxies = settings.forwarded_allow_ips.strip()
    return {"host": host or settings.host, "port": port or settings.port, "proxy_headers": bool(proxies),
            "forwarded_allow_ips": proxies or None, "workers": settings.workers}
