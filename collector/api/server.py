"""The query API inside ``audit-collector serve``: uvicorn's ``Server`` on the serve
loop, next to the ingest server (one process, one command).

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers; serve owns those
signals (it drains ingest on them), so this runs uvicorn's parts instead: ``startup``
on a socket bound here (so the bound port is known, also for port 0), ``main_loop`` as
a task, and ``shutdown`` when serve stops. Forwarded-for headers are ignored
(``proxy_headers=False``): the client IP recorded for a read is the socket peer.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .context import Api, ApiSettings


class ApiError(RuntimeError):
    """The API could not start; the message says what to change."""


class ApiServer:
    def __init__(self, app: Starlette, host: str, port: int, *,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 drain_timeout: float = 10.0) -> None:
        self.app = app
        self.host, self.port = host, port
        self.config = uvicorn.Config(
            app, proxy_headers=False, lifespan="off", log_config=None, log_level="warning",
            access_log=False, server_header=False,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=max(int(drain_timeout), 1))
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._main: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise ApiError(f"cannot listen on {self.host}:{self.port} ({exc}): set "
                           f"api_listen to a free HOST:PORT, or to '' for no API") from None
        sock.setblocking(False)
        self._socket = sock
        config = self.config
        try:
            if not config.loaded:
                config.load()  # reads the TLS files, if any
            self.server.lifespan = config.lifespan_class(config)
            await self.server.startup(sockets=[sock])
        except (OSError, ValueError) as exc:
            sock.close()
            raise ApiError(f"cannot start the query API: {exc}") from None
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if config.ssl else 'http'}://{shown}:{port}"
        self._main = asyncio.create_task(self.server.main_loop())
        return self.url

    async def shutdown(self) -> None:
        self.server.should_exit = True
        if self._main is not None:
            await self._main
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        api: Api = self.app.state.api
        await asyncio.get_running_loop().run_in_executor(None, api.close)


async def start_api(store: Any, config: Any) -> ApiServer | None:
    """The API of a ``CollectorConfig``, listening; None when ``api_listen`` is empty."""
    address = config.api_address
    if address is None:
        return None
    app = create_app(ApiSettings(data_dir=config.data_dir,
                                 trace_url_template=config.trace_url_template,
                                 tls=config.api_tls_cert is not None), store)
    server = ApiServer(app, *address, tls_cert=config.api_tls_cert,
                       tls_key=config.api_tls_key, drain_timeout=config.drain_timeout)
    try:
        await server.start()
    except ApiError:
        app.state.api.close()
        raise
    return server
