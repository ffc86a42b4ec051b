"""Turn MedSAD errors into HTTP answers with a message (MONAI Label has no handler of its own:
an exception inside a task would otherwise reach the client as a bare 500 text page)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from fastapi import HTTPException
from monailabel.interfaces.exception import MONAILabelException

logger = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """No trained model is available yet (answered with 503)."""


class ConfError(ValueError):
    """A bad ``--conf`` value; the message names the key."""


@contextlib.contextmanager
def as_http_errors(action: str) -> Iterator[None]:
    """Re-raise errors of ``action`` as :class:`fastapi.HTTPException` with a readable detail.

    ``FileNotFoundError`` -> 404, ``ValueError`` (bad input) -> 422, :class:`NoModelError` -> 503,
    MONAI Label's own errors -> 400, anything else -> 500. The server keeps serving.
    """
    try:
        yield
    except HTTPException:
        raise
    except FileNotFoundError as err:
        raise _http(404, action, err) from err
    except NoModelError as err:
        raise _http(503, action, err) from err
    except ValueError as err:
        raise _http(422, action, err) from err
    except MONAILabelException as err:
        raise _http(400, action, err.msg) from err
    except Exception as err:  # noqa: BLE001 - the server must answer, not crash
        logger.exception("%s failed", action)
        raise _http(500, action, f"{type(err).__name__}: {err}") from err


def _http(status: int, action: str, err: object) -> HTTPException:
    message = f"{action}: {err}"
    logger.error("%s (HTTP %d)", message, status)
    return HTTPException(status_code=status, detail=message)
