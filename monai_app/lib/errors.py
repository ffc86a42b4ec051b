"""Error types of the app and how they become HTTP answers (MONAI Label has no handler of its own:
an exception inside a task would otherwise reach the client as a bare 500 text page).

Only what the client can fix is answered as the client's fault: :class:`InputError` (a bad request
value, an unreadable or unsuitable upload, a datastore whose labels cannot train) is 422,
:class:`NotFoundError` (an unknown image id) 404. A missing model is 503. Anything else is a fault
of the server: 500, logged with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.exception import MONAILabelException

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad input the client can fix: a request value, an uploaded file, the datastore's labels
    (answered with 422); the message names the key or the file and says what is allowed."""


class NotFoundError(InputError):
    """The request names an image that does not exist (answered with 404)."""


class ConfError(InputError):
    """A bad ``--conf`` value (or a checkpoint that contradicts one); the message names the key."""


class NoModelError(RuntimeError):
    """No trained model is available yet (answered with 503)."""


@contextlib.contextmanager
def as_input_error() -> Iterator[None]:
    """Re-raise a ``ValueError`` of the enclosed call as :class:`InputError` (same message).

    Wrap only calls whose every ``ValueError`` is about the input they were given (the volume and
    image readers of :mod:`medsad_monai.data`, label/geometry checks).
    """
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err


@contextlib.contextmanager
def as_http_errors(action: str) -> Iterator[None]:
    """Re-raise errors of ``action`` as :class:`fastapi.HTTPException` with a readable detail.

    :class:`NotFoundError` -> 404, :class:`InputError` -> 422, :class:`NoModelError` -> 503,
    MONAI Label's own errors -> 400, anything else (including a plain ``ValueError`` or
    ``FileNotFoundError`` from inside the model or the app) -> 500 with the traceback in the log.
    The server keeps serving.
    """
    try:
        yield
    except HTTPException:
        raise
    except NotFoundError as err:
        raise _http(404, action, err) from err
    except InputError as err:
        raise _http(422, action, err) from err
    except NoModelError as err:
        raise _http(503, action, err) from err
    except MONAILabelException as err:
        raise _http(400, action, err.msg) from err
    except Exception as err:  # noqa: BLE001 - the server must answer, not crash
        logger.exception("%s failed with an internal error", action)
        raise HTTPException(
            status_code=500,
            detail=f"{action}: internal server error ({type(err).__name__}: {err}); "
            "not a problem with the request: see the server log",
        ) from err


def _http(status: int, action: str, err: object) -> HTTPException:
    message = f"{action}: {err}"
    logger.error("%s (HTTP %d)", message, status)
    return HTTPException(status_code=status, detail=message)


def remove_uploads(request: dict[str, Any]) -> list[Path]:
    """Delete the temporary files MONAI Label wrote for a request's uploaded ``image`` / ``label``.

    MONAI Label's infer route saves an upload as ``tempfile.NamedTemporaryFile(suffix).name`` (a
    ``tmp*`` file directly in the system temp folder) and deletes it only after a successful
    answer. Only files of exactly that form are removed; a datastore id or any other path is
    never touched. Returns what was removed.
    """
    removed = []
    temp_dir = Path(tempfile.gettempdir()).resolve()
    for key in ("image", "label"):
        value = request.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if path.is_absolute() and path.parent.resolve() == temp_dir and path.name.startswith("tmp") and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
