"""The ASGI application behind ``GET /SnapshotCloneService?Action=...&Version=...&User=...``.

Each request gets a RequestId (a UUID), is read into a `Request` (malformed input is -5 with HTTP
400 before anything else happens), runs its action in a worker thread under a `CapacityLimiter`
(the engine blocks; the limiter bounds threads and LMDB reader slots whatever the number of
connections), and is answered with the reference's JSON: ``Code`` as a string, ``Message``,
``RequestId``, plus the action's fields on success or ``UUID`` (empty) on error, as Curve's
`BuildErrorMessage` does. Every request is logged once, with its RequestId, at INFO; an
unexpected exception is logged with its traceback and answered -1 (Internal error).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import trio

from ..engine import Engine
from ..errors import BadRequestError, EngineError, RestCode, codes_for
from . import SERVICE_PATH
from .actions import ACTIONS, Fields, Request

log = logging.getLogger(__name__)

MAX_PARAMS = 64  # more query fields than any action reads: refused, not parsed
ENGINE_THREADS = 8  # concurrent engine calls; more requests wait their turn in trio

Scope = dict[str, Any]


def parse_request(scope: Scope, request_id: str) -> Request:
    """The request's Action and parameters, or BadRequestError: wrong method or path, a query
    that is not UTF-8, a repeated parameter, no Version, or an Action we do not know."""
    if scope['method'] != 'GET':
        raise BadRequestError(f'method {scope["method"]} (only GET is served)')
    if scope['path'] != SERVICE_PATH:
        raise BadRequestError(f'path {scope["path"]!r} (only {SERVICE_PATH} is served)')
    try:
        pairs = parse_qsl(scope['query_string'].decode('utf-8'), keep_blank_values=True,
                          errors='strict', max_num_fields=MAX_PARAMS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError(f'unreadable query string: {exc}') from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise BadRequestError(f'parameter {key} given twice')
        params[key] = value
    action = params.get('Action', '')
    request = Request(action, params, request_id)
    if action not in ACTIONS:
        raise BadRequestError(f'unknown Action {action!r}' if action else 'no Action')
    request.text('Version')  # required, as in Curve; its value is not checked
    return request


def body(code: RestCode, request_id: str, fields: Fields) -> dict[str, Any]:
    """The JSON object of an answer."""
    return {'Code': str(int(code)), 'Message': code.message, 'RequestId': request_id, **fields}


class RestApp:
    """The SnapshotCloneService as an ASGI application over one engine."""

    def __init__(self, engine: Engine, threads: int = ENGINE_THREADS):
        self.engine = engine
        self._limiter = trio.CapacityLimiter(threads)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope['type'] == 'lifespan':
            await self._lifespan(receive, send)
        elif scope['type'] == 'http':
            await self._http(scope, send)
        # Anything else (a websocket) is closed by the server when we return without accepting.

    @staticmethod
    async def _lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message['type'] == 'lifespan.startup':
                await send({'type': 'lifespan.startup.complete'})
            elif message['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return

    async def _http(self, scope: Scope, send: Any) -> None:
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        request: Request | None = None
        reason = ''
        try:
            request = parse_request(scope, request_id)
            fields = await trio.to_thread.run_sync(ACTIONS[request.action], self.engine, request,
                                                   limiter=self._limiter)
            code = RestCode.SUCCESS
        except EngineError as exc:
            code, fields, reason = codes_for(exc).rest, {'UUID': ''}, f': {exc}'
        except Exception:
            log.exception('request %s (%s %s?%r) failed unexpectedly', request_id,
                          scope.get('method'), scope.get('path'), scope.get('query_string'))
            code, fields = RestCode.INTERNAL, {'UUID': ''}
        # Logged before the answer leaves: whoever holds a RequestId finds its line.
        params = request.params if request is not None else scope.get('query_string')
        log.info('request %s %r -> %d %s%s (%.1f ms)', request_id, params, code, code.message,
                 reason, (time.monotonic() - started) * 1000)
        payload = json.dumps(body(code, request_id, fields), indent=2).encode()
        await send({'type': 'http.response.start', 'status': code.http_status,
                    'headers': [(b'content-type', b'application/json'),
                                (b'content-length', str(len(payload)).encode())]})
        await send({'type': 'http.response.body', 'body': payload})
