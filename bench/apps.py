"""The baselines of the validate benchmark, each served alone by uvicorn with one worker.

``python -m bench.apps bare --port N`` serves a bare Starlette endpoint returning a small JSON;
``python -m bench.apps fastapi --port N`` a minimal FastAPI route with one header parameter.
Both answer any path they route (``/`` and the sessiond path) and are run with the uvicorn
options ``sessiond serve`` uses: uvicorn's default event loop (uvloop when installed), the
httptools HTTP parser, no access log, lifespan on, and uvicorn's proxy-header handling off
(``proxy_headers=False``: no ``ProxyHeadersMiddleware`` in front of the app). One difference:
``sessiond serve`` gives uvicorn its own subclass of the httptools protocol
(``sessiond.server.protocol``: limits on the size and arrival time of request heads), while the
baselines use uvicorn's stock httptools protocol, so that they stay free of sessiond code; what
that subclass costs counts against sessiond in the ratios.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from fastapi import FastAPI, Header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PATHS = ("/", "/api/v1/sessions/current")


async def _bare_endpoint(_request: Request) -> JSONResponse:
    return JSONResponse({"Status": "ok"})


def bare_app() -> Starlette:
    return Starlette(routes=[Route(path, _bare_endpoint) for path in PATHS])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    async def current(
        tessa_session: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        return {"Status": "ok", "HasSession": tessa_session is not None}

    for path in PATHS:
        app.add_api_route(path, current, methods=["GET"])
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.apps")
    parser.add_argument("kind", choices=["bare", "fastapi"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = bare_app() if args.kind == "bare" else fastapi_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="info",
        access_log=False,
        lifespan="on",
        proxy_headers=False,  # as sessiond serve: no ProxyHeadersMiddleware
        http="httptools",  # uvicorn's stock httptools protocol (sessiond serve: a subclass)
    )


if __name__ == "__main__":
    main()
