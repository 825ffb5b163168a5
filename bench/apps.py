"""The baselines of the validate benchmark, each served alone by uvicorn with one worker.

``python -m bench.apps bare --port N`` serves a bare Starlette endpoint returning a small JSON;
``python -m bench.apps fastapi --port N`` a minimal FastAPI route with one header parameter.
Both answer any path they route (``/`` and the sessiond path) and are run with the same
uvicorn options as ``sessiond serve`` (default loop and HTTP parser, no access log).
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
    )


if __name__ == "__main__":
    main()
