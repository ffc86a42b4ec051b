"""Serve MONAI Label's routes the way a server should: off the event loop where the work is long,
and with a 4xx answer, not a 500, for what a client sent wrong.

MONAI Label declares its routes ``async def`` but runs their work (an inference, a synchronous
training or scoring run, zipping the dataset) in the coroutine itself, so while one volume is
inferred the event loop is blocked and every other request — ``/info/`` health checks included —
waits. And it has no exception handler: a malformed JSON form field, an unknown image id, an
unknown checksum algorithm or a request without an image end as 500 "Internal Server Error".

:func:`serve_routes` swaps each route of MONAI Label's routers for a wrapper with the same path,
parameters and OpenAPI entry: the routes of :data:`OFF_LOOP_ROUTES` become plain ``def``
endpoints (FastAPI runs those in its worker-thread pool, so the loop keeps answering), and every
route answers client mistakes with 4xx and a message. The HTTP contract (MONAI Label's client,
the Slicer plugin, ``curl``) does not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pydantic
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.routing import APIRoute
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelException

logger = logging.getLogger(__name__)

# (method, path) of the stock routes whose body is long synchronous work
OFF_LOOP_ROUTES = frozenset(
    {
        ("POST", "/infer/{model}"),
        ("POST", "/batch/infer/{model}"),
        ("POST", "/train/"),
        ("POST", "/train/{model}"),
        ("POST", "/scoring/"),
        ("POST", "/scoring/{method}"),
        ("POST", "/activelearning/{strategy}"),
        ("GET", "/datastore/dataset"),
    }
)

#: MONAI Label's own 500 answers that are the client's mistake
UPSTREAM_CLIENT_ERRORS = {
    "Neither Image nor File not Session ID input is provided": "give an image id (?image=), a file or a session id",
}

_DETAIL = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
#: the error body every answer of these routes may carry: FastAPI's validation list, or a message
ERROR_BODY = {
    "description": "The request was refused; ``detail`` says why",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": _DETAIL},
                "required": ["detail"],
            }
        }
    },
}


def _check_fields(kwargs: dict[str, Any]) -> None:
    """Form fields MONAI Label parses without checking: JSON objects (``params``, ``info``, ``wsi``)
    and the ``check_sum`` of ``HEAD /datastore/image`` (``[algorithm:]hexdigest``)."""
    for key in ("params", "info", "wsi"):
        value = kwargs.get(key)
        if isinstance(value, str) and value:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as err:
                raise HTTPException(422, detail=f"{key}: not valid JSON ({err.msg} at character {err.pos})") from None
            if not isinstance(parsed, dict):
                raise HTTPException(422, detail=f"{key}: expected a JSON object, got {type(parsed).__name__}")
    check_sum = kwargs.get("check_sum")
    if isinstance(check_sum, str) and check_sum:
        fields = check_sum.split(":")
        algorithm = "sha256" if len(fields) == 1 else fields[0]
        if len(fields) > 2 or algorithm.lower() not in hashlib.algorithms_available:
            raise HTTPException(422, detail=f"check_sum {check_sum!r}: expected [algorithm:]hexdigest, e.g. sha256:…")


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """MONAI Label's exceptions for a missing image/label -> 404, its other errors -> 400, a request
    field its models refuse and its 500s that are the client's mistake -> 422; anything else
    passes unchanged."""
    try:
        yield
    except HTTPException as err:
        if err.status_code == 500 and err.detail in UPSTREAM_CLIENT_ERRORS:
            raise HTTPException(422, detail=f"{err.detail}: {UPSTREAM_CLIENT_ERRORS[err.detail]}") from None
        raise
    except pydantic.ValidationError as err:  # a request field MONAI Label parses into its models
        raise HTTPException(422, detail=f"invalid request field: {err.errors()[0].get('msg', err)}") from None
    except (ImageNotFoundException, LabelNotFoundException) as err:
        raise HTTPException(404, detail=str(err.msg)) from None
    except MONAILabelException as err:
        raise HTTPException(400, detail=str(err.msg)) from None


#: A check of a route's arguments run before its endpoint; it raises ``HTTPException`` to refuse.
Precheck = Callable[[dict[str, Any]], None]


def _wrap(endpoint: Callable[..., Any], threaded: bool, precheck: Precheck | None = None) -> Callable[..., Any]:
    """The endpoint with checked fields and 4xx answers; ``threaded``: as a plain ``def`` that runs
    the ``async def`` endpoint (whose body never awaits) on a private loop in a worker thread."""

    def check(kwargs: dict[str, Any]) -> None:
        _check_fields(kwargs)
        if precheck is not None:
            precheck(kwargs)

    if threaded and inspect.iscoroutinefunction(endpoint):

        def route(**kwargs: Any) -> Any:
            check(kwargs)
            with _client_errors():
                return asyncio.run(endpoint(**kwargs))

    elif inspect.iscoroutinefunction(endpoint):

        async def route(**kwargs: Any) -> Any:  # type: ignore[misc]
            check(kwargs)
            with _client_errors():
                return await endpoint(**kwargs)

    else:

        def route(**kwargs: Any) -> Any:
            check(kwargs)
            with _client_errors():
                return endpoint(**kwargs)

    route.__signature__ = inspect.signature(endpoint)  # type: ignore[attr-defined]
    route.__name__ = endpoint.__name__
    route.__doc__ = endpoint.__doc__
    route.__medsad_wrapped__ = True  # type: ignore[attr-defined]
    return route


def serve_routes(
    app: FastAPI,
    routers: Iterable[APIRouter],
    prefix: str = "",
    prechecks: Mapping[tuple[str, str], Precheck] | None = None,
) -> list[str]:
    """Wrap every route of MONAI Label's ``routers`` (which the server ``app`` includes; paths under
    the server's API ``prefix``); returns the routes moved off the event loop. Idempotent.

    ``prechecks``: ``(method, path)`` (as in :data:`OFF_LOOP_ROUTES`) -> a check run before the
    endpoint, e.g. to refuse a training run up front instead of queueing one that will fail.
    """
    checks = dict(prechecks or {})
    moved = []
    for router in routers:
        for route in list(router.routes):
            if not isinstance(route, APIRoute) or getattr(route.endpoint, "__medsad_wrapped__", False):
                continue
            threaded = any((method, route.path) in OFF_LOOP_ROUTES for method in route.methods)
            precheck = next((checks[(m, route.path)] for m in route.methods if (m, route.path) in checks), None)
            router.routes.remove(route)
            # add_api_route marks the router changed, so the including app picks the new route up
            router.add_api_route(
                route.path[len(router.prefix) :],
                _wrap(route.endpoint, threaded, precheck),
                methods=sorted(route.methods),
                name=route.name,
                summary=route.summary,
                description=route.description,
                tags=route.tags,
                responses={**route.responses, **{code: ERROR_BODY for code in (400, 404, 422, 429, 503)}},
                dependencies=route.dependencies,
                response_class=route.response_class,
                status_code=route.status_code,
                operation_id=route.operation_id,
                include_in_schema=route.include_in_schema,
                deprecated=route.deprecated,
            )
            if threaded:
                moved.append(f"{'/'.join(sorted(route.methods))} {prefix + route.path}")
    app.openapi_schema = None  # rebuilt from the new routes on the next /openapi.json
    logger.info("served off the event loop: %s", ", ".join(moved) or "nothing")
    return moved
