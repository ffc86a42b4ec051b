"""Serve MONAI Label's long-running routes off the server's event loop.

MONAI Label declares its routes ``async def`` but runs their work (an inference, a synchronous
training or scoring run, zipping the dataset) in the coroutine itself, so while one volume is
inferred the event loop is blocked and every other request — ``/info/`` health checks included —
waits. :func:`serve_off_event_loop` swaps each such route for a plain ``def`` with the same
path, parameters and OpenAPI entry: FastAPI runs plain endpoints in its worker-thread pool, so
the loop keeps answering. The HTTP contract (MONAI Label's client, the Slicer plugin, ``curl``)
does not change.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

logger = logging.getLogger(__name__)

# (method, path) of the stock routes whose body is long synchronous work
OFF_LOOP_ROUTES = frozenset(
    {
        ("POST", "/infer/{model}"),
        ("POST", "/train/"),
        ("POST", "/train/{model}"),
        ("POST", "/scoring/"),
        ("POST", "/scoring/{method}"),
        ("POST", "/activelearning/{strategy}"),
        ("GET", "/datastore/dataset"),
    }
)


def _in_worker_thread(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A plain-``def`` twin of an ``async def`` endpoint whose body never awaits: it runs the
    coroutine to completion on a private event loop in FastAPI's worker thread."""

    def threaded(**kwargs: Any) -> Any:
        return asyncio.run(endpoint(**kwargs))

    threaded.__signature__ = inspect.signature(endpoint)  # type: ignore[attr-defined]
    threaded.__name__ = endpoint.__name__
    threaded.__doc__ = endpoint.__doc__
    return threaded


def serve_off_event_loop(app: FastAPI, routers: Iterable[APIRouter], prefix: str = "") -> list[str]:
    """Replace the routes of :data:`OFF_LOOP_ROUTES` (paths under the server's API ``prefix``) in
    MONAI Label's ``routers`` (the routers the server ``app`` includes); returns what was moved.
    Idempotent: a route already served by a plain ``def`` is left alone."""
    wanted = {(method, prefix + path) for method, path in OFF_LOOP_ROUTES}
    moved = []
    for router in routers:
        for route in list(router.routes):
            if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(route.endpoint):
                continue
            if not any((method, prefix + route.path) in wanted for method in route.methods):
                continue
            router.routes.remove(route)
            # add_api_route marks the router changed, so the including app picks the new route up
            router.add_api_route(
                route.path[len(router.prefix) :],
                _in_worker_thread(route.endpoint),
                methods=sorted(route.methods),
                name=route.name,
                summary=route.summary,
                description=route.description,
                tags=route.tags,
                responses=route.responses,
                dependencies=route.dependencies,
                response_class=route.response_class,
                status_code=route.status_code,
                operation_id=route.operation_id,
                include_in_schema=route.include_in_schema,
                deprecated=route.deprecated,
            )
            moved.append(f"{'/'.join(sorted(route.methods))} {prefix + route.path}")
    app.openapi_schema = None  # rebuilt from the new routes on the next /openapi.json
    logger.info("served off the event loop: %s", ", ".join(moved) or "nothing")
    return moved
