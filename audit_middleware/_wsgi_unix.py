"""Which WSGI requests came over a unix socket, server by server.

On a unix socket the connecting process has no address, but a WSGI server must put
something in ``REMOTE_ADDR``, and what it puts there can be chosen by whoever connects:

- gunicorn (sync, gthread, gevent) and Werkzeug: the path the connecting process bound
  its own socket to (any text, ``10.0.0.1`` too), empty when it bound none, or
  ``<local>`` (Werkzeug). They hand the app the connection (``gunicorn.socket``, gevent's
  own socket object for the gevent worker; ``werkzeug.socket``).
- uWSGI's HTTP parser (``http-socket = /path``): four bytes of the connecting socket's
  name read as an IPv4 address (bytes 2-5 of ``sun_path``; ``0.0.0.0`` when it bound
  none). A local process that binds the abstract name ``"\\0A\\x0a\\0\\0\\x01"`` is
  ``10.0.0.1``. Over the uwsgi protocol (``socket = /path``, nginx's ``uwsgi_pass``)
  ``REMOTE_ADDR`` is instead the proxy's own statement of the client, which is kept.
- waitress (``--unix-socket``): ``localhost``, with ``REMOTE_PORT`` ``"None"``.
- granian (``--interface wsgi --uds``): the path the connecting process bound its own
  socket to, as gunicorn, empty when it bound none or an abstract name. It hands over no
  connection; ``SERVER_PORT`` is ``"0"``, which no TCP listener reports (granian names
  the port it listens on, the one the kernel chose for ``--port 0`` too).

cheroot, gevent's ``pywsgi`` and gunicorn's ``gevent_pywsgi`` worker put no address there
(``REMOTE_ADDR`` empty or absent) and need nothing here.

Such a request has no address: it is a unix socket peer, trusted only as ``"unix"``
(``client_ip.UNIX``). Every check here is cheap and never raises: the objects belong to
a server.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, Final

_AF_UNIX = getattr(socket, "AF_UNIX", object())  # not on every Windows build

#: In the environ of a server whose requests ``on_unix_socket`` must be asked about on
#: the thread serving the request, as it begins: with ``threads``, uWSGI names a
#: request's connection (``uwsgi.connection_fd()``) to that thread alone. Asked from
#: another one (an event emitted where an executor, or asgiref's ``async_to_sync``,
#: runs the request's context) it names none, and ``REMOTE_ADDR`` would be taken for an
#: address. A key, not a call: every WSGI request is checked for it.
ASK_ON_ITS_OWN_THREAD: Final = "uwsgi.version"


def on_unix_socket(environ: Mapping[str, Any]) -> bool:
    """Whether the server accepted this request's connection on a unix socket, where its
    ``REMOTE_ADDR`` is no address (see the module's text)."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(key)
        if sock is not None:
            try:
                return getattr(sock, "family", None) == _AF_UNIX
            except Exception:  # noqa: BLE001 - a server's object: never fail the request
                return False
    if "uwsgi.version" in environ:
        return _uwsgi_http_on_unix_socket(environ)
    # granian names the socket it listens on, never the client: a unix socket's port is
    # "0". Keyed on the server, not on REMOTE_ADDR: granian's wrap_wsgi_with_proxy_headers
    # rewrites that from a peer bound to the path "127.0.0.1", and is not believed either.
    if environ.get("SERVER_SOFTWARE") == "Granian":
        return environ.get("SERVER_PORT") == "0"
    # waitress's unix server answers every peer's address with ("localhost", None); on
    # TCP REMOTE_ADDR is the peer's IP, and waitress's own proxy handling (trusted_proxy)
    # replaces "localhost" with the forwarded client, which is then kept.
    return ("waitress.client_disconnected" in environ
            and environ.get("REMOTE_ADDR") == "localhost"
            and environ.get("REMOTE_PORT") == "None")


def on_other_socket(environ: Mapping[str, Any]) -> bool:
    """Whether the server says this request's connection is not on a unix socket: the
    connection it hands over (gunicorn, Werkzeug) is TCP, or granian names the port it
    listens on. Such a peer without an address (gunicorn behind the PROXY protocol puts
    none for a ``LOCAL`` connection) is no unix socket peer, as under ASGI a TCP
    server's ``scope["client"]`` None is none (``RequestContext.on_unix_socket``)."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(key)
        if sock is not None:
            try:
                family = getattr(sock, "family", None)
            except Exception:  # noqa: BLE001 - a server's object: never fail the request
                return False
            return family is not None and family != _AF_UNIX
    if environ.get("SERVER_SOFTWARE") == "Granian":
        return environ.get("SERVER_PORT") != "0"
    return False


def _uwsgi_http_on_unix_socket(environ: Mapping[str, Any]) -> bool:
    """Whether uWSGI's HTTP parser made ``REMOTE_ADDR`` of a unix socket peer's name.

    uWSGI tells neither the protocol nor the socket a request came on, so the connection
    is asked (``uwsgi.connection_fd()``): on a unix socket, a ``REMOTE_ADDR`` equal to
    what the HTTP parser makes of the peer's name is that name, not an address. A proxy
    speaking the uwsgi protocol states the client itself (nginx does not bind its socket,
    so its name reads ``0.0.0.0``, never a client's address) and is believed as before.
    """
    uwsgi = sys.modules.get("uwsgi")
    connection_fd = getattr(uwsgi, "connection_fd", None)
    if connection_fd is None:
        return False
    try:
        sock = socket.socket(fileno=connection_fd())
    except Exception:  # noqa: BLE001 - no request connection (a mule, a spooler)
        return False
    try:
        if sock.family != _AF_UNIX:
            return False
        name = sock.getpeername()
    except OSError:
        return False
    finally:
        sock.detach()  # the connection is uWSGI's: never closed here
    # A path comes back decoded with the filesystem encoding (an abstract name as bytes):
    # os.fsencode gives back its bytes, which UTF-8 did not under ISO-8859-1, and a path
    # bound to name a trusted proxy was believed.
    raw = os.fsencode(name) if isinstance(name, str) else bytes(name)
    as_parsed = socket.inet_ntoa(raw.ljust(6, b"\0")[2:6])
    return environ.get("REMOTE_ADDR") == as_parsed
