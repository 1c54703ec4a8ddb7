"""Curve's SnapshotCloneService REST API (the local API of Curve release 1.5) over the engine.

- `actions`: what each Action does to the store, as plain synchronous functions.
- `app`: the ASGI application: reads a request, runs its action in a worker thread, answers JSON.
- `server`: binds the listening socket and runs the app under hypercorn's trio worker, either on
  its own (`curvefuse serve`) or inside the mount daemon (`curvefuse mount -o rest`).

The codes and messages come from the one table in `curvefuse.errors`. This module holds only
constants, so the CLI can name them without importing the HTTP stack.
"""

SERVICE_PATH = '/SnapshotCloneService'
DEFAULT_PORT = 5555  # Curve's snapshotcloneserver port
DEFAULT_LISTEN = f'127.0.0.1:{DEFAULT_PORT}'  # loopback: the API has no authentication
