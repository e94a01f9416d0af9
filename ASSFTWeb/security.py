"""The doors of ``assft serve``: who may drive the annotator's server, and what one connection may send.

One mechanism on every address (loopback or not):

- **A secret per start.** :func:`new_secret` makes a random token each time the server starts; the server prints the
  page's address with it (``http://HOST:PORT/?secret=...``), and the page sends it in wslink's ``hello``. A
  connection without it is refused (trame's built-in default, ``wslink-secret``, is public and never accepted). The
  token is never on a command line (``ps`` would show it) and never in the page's HTML; the page keeps it for its own
  tab only (``sessionStorage``), so a reload works and other sites cannot read it.
- **Host and Origin.** Every HTTP request must name this server in ``Host`` (loopback names, the address it listens
  on, the machine's own names, and ``--allow-host`` names): a foreign name is refused, which stops DNS rebinding. A
  WebSocket whose ``Origin`` is not the page's own address is refused: another site open in the annotator's browser
  cannot connect (cross-site WebSocket hijacking). The port is not compared, so an SSH tunnel to another local port
  works.
- **Bounded messages.** A message may claim at most :data:`MAX_MESSAGE_BYTES` (wslink otherwise lets an
  authenticated client claim, and allocate, up to 4 GB per message) and at most :data:`MAX_PENDING_MESSAGES` may be
  in flight per connection.
- **No tracebacks to the browser.** An error inside a request answers "the server could not do this" with no trace,
  exception text or file path (they go to the server's log).
- **Plain GET on the WebSocket path** answers 400, not a 500 with a traceback.
- **State updates** pass :class:`ASSFTWeb.fields.StateGuard` (the rules for each field) before they reach the state.

The hook points are wslink 2.x's (``WebAppServer._ws_handlers``, a handler's ``unchunkers``, ``functionMap``,
``validateToken`` and ``sendWrappedError``) and aiohttp's middlewares; :func:`install` checks that each exists and
refuses to start the server otherwise (fail closed), naming the package to pin.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, FrozenSet, Iterable, Optional
from urllib.parse import urlsplit

from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

LOGGER = logging.getLogger("ASSFTWeb.security")

#: Query parameter of the page's address that carries the secret (what trame's client reads and sends in ``hello``).
SECRET_PARAMETER = "secret"
#: Largest message a browser may send once authenticated (the page's own messages are a few kB).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Messages one connection may have half-received at a time.
MAX_PENDING_MESSAGES = 4
#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: wslink's error code for an exception raised inside a request (``wslink.protocol.EXCEPTION_ERROR``).
EXCEPTION_ERROR = -32001
#: What the browser is told instead of a traceback.
SERVER_ERROR_MESSAGE = "The server could not do this; the reason is in the server's log."
SESSION_KEY = "assft-secret"
#: Runs in the page before trame's client: keeps the secret of the address for this tab (trame's client removes it
#: from the address bar), puts it back after a reload, and says what to open when the address had none.
PAGE_SCRIPT = """<script>
(function () {
  var url = new URL(window.location.href), secret = url.searchParams.get("__PARAM__");
  try {
    if (secret) { window.sessionStorage.setItem("__KEY__", secret); }
    else if ((secret = window.sessionStorage.getItem("__KEY__"))) {
      url.searchParams.set("__PARAM__", secret);
      window.history.replaceState({}, document.title, url.toString());
    }
  } catch (e) { /* storage disabled: the address keeps working, a reload needs it again */ }
  if (!secret) {
    document.addEventListener("DOMContentLoaded", function () {
      document.body.innerHTML = '<p id="assft_no_secret" style="font-family: sans-serif; padding: 2em">' +
        'Open the address that <code>assft serve</code> printed when it started: it ends with ' +
        '<code>?__PARAM__=...</code>. The server refuses pages without it.</p>';
    });
  }
})();
</script>""".replace("__PARAM__", SECRET_PARAMETER).replace("__KEY__", SESSION_KEY)
#: Headers on every HTTP answer: no framing by other sites, no address (with its secret) in a Referer.
RESPONSE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class SecurityHookError(RuntimeError):
    """The installed wslink lacks a hook point the doors need; the server must not start without them."""


def new_secret() -> str:
    """A random token (256 bits, URL-safe) for one start of the server."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address to listen on) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether listening on ``host`` means every address of the machine (``0.0.0.0``, ``::`` or empty)."""
    return host.strip().strip("[]") in ("", "0.0.0.0", "::")


def _machine_names() -> FrozenSet[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    return frozenset(n.lower() for n in names if n)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may connect: the secret, and the host names the server answers to.

    Attributes:
        secret: the token of this start (:func:`new_secret`).
        bind_host: the address the server listens on.
        allowed_hosts: lower-case host names (no port) accepted in ``Host`` and ``Origin``.
        max_message_bytes: largest message a connection may send.
    """

    secret: str
    bind_host: str = "127.0.0.1"
    allowed_hosts: FrozenSet[str] = field(default_factory=lambda: LOOPBACK_NAMES)
    max_message_bytes: int = MAX_MESSAGE_BYTES

    @classmethod
    def for_address(cls, bind_host: str, secret: Optional[str] = None, extra_hosts: Iterable[str] = ()) -> AccessPolicy:
        """The policy of a server listening on ``bind_host``: loopback names always; the address itself when it is
        a specific one; the machine's names and addresses when it listens on all of them; plus ``extra_hosts``
        (``--allow-host``: e.g. the name a reverse proxy or a DNS alias gives the server)."""
        hosts = set(LOOPBACK_NAMES)
        if is_wildcard(bind_host):
            hosts |= _machine_names()
        elif not is_loopback(bind_host):
            hosts.add(bind_host.strip().strip("[]").lower())
        hosts |= {h.strip().strip("[]").lower() for h in extra_hosts if h.strip()}
        return cls(secret=secret or new_secret(), bind_host=bind_host, allowed_hosts=frozenset(hosts))

    def url(self, port: int) -> str:
        """The page's address with the secret: what the server prints and the user opens."""
        if is_loopback(self.bind_host):
            host = "127.0.0.1"
        elif is_wildcard(self.bind_host):
            host = socket.getfqdn() or socket.gethostname()
        else:
            host = self.bind_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/?{SECRET_PARAMETER}={self.secret}"

    def host_allowed(self, host_header: Optional[str]) -> bool:
        """Whether a request's ``Host`` header (``name[:port]``, ``[v6][:port]``) names this server."""
        name = host_name(host_header)
        return name is not None and name in self.allowed_hosts

    def origin_allowed(self, origin: Optional[str], host_header: Optional[str]) -> bool:
        """Whether a WebSocket's ``Origin`` is the page's own address (same scheme-less host and port as ``Host``).

        No ``Origin`` (not a browser: a script must still present the secret) is allowed; ``null`` is not.
        """
        if origin is None:
            return True
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or host_header is None:
            return False
        return parts.netloc.lower() == host_header.strip().lower() and self.host_allowed(parts.netloc)

    def token_valid(self, token) -> bool:
        """Whether ``token`` (what a client sent in ``hello``) is this start's secret (constant-time compare)."""
        return isinstance(token, str) and hmac.compare_digest(token.encode("utf-8"), self.secret.encode("utf-8"))


def host_name(host_header: Optional[str]) -> Optional[str]:
    """The lower-case name of a ``Host`` header without its port; None when it is missing or malformed."""
    if not host_header:
        return None
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (len(value) > end + 1 and not value[end + 1 :].startswith(":")):
            return None
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


class BoundedUnChunker(UnChunker):
    """wslink's message assembler with a ceiling: a message may claim at most ``limit`` bytes (also after ``hello``,
    where wslink raises its own limit to 4 GB), and at most :data:`MAX_PENDING_MESSAGES` may be half-received."""

    def __init__(self, limit: int):
        super().__init__()
        self._limit = int(limit)

    def set_max_message_size(self, size):
        super().set_max_message_size(min(int(size), self._limit))

    def process_chunk(self, chunk: bytes):
        if len(chunk) < HEADER_LENGTH:
            raise ValueError(f"A message chunk of {len(chunk)} bytes is shorter than its header.")
        message_id, _, _ = _decode_header(chunk[:HEADER_LENGTH])
        if message_id not in self.pending_messages and len(self.pending_messages) >= MAX_PENDING_MESSAGES:
            raise ValueError(f"More than {MAX_PENDING_MESSAGES} messages in flight on one connection.")
        return super().process_chunk(chunk)


def _text_response(status: int, message: str):
    from aiohttp import web

    return web.Response(status=status, text=message + "\n", headers=RESPONSE_HEADERS)


def install(server, policy: AccessPolicy, guard=None, on_refused: Optional[Callable] = None) -> None:
    """Put the doors on a trame server before it starts (they are installed when wslink binds its web server).

    Args:
        server: the trame server (``TrameApp.server``).
        policy: :class:`AccessPolicy` of this start.
        guard: an :class:`ASSFTWeb.fields.StateGuard` for state updates (None: no field rules).
        on_refused: ``on_refused(result)`` with the :class:`ASSFTWeb.fields.GuardResult` of an update that had
            refusals or fixed a refused field (the page reports them); called inside the state's context.
    """
    server.controller.on_server_bind.add(lambda ws_server: _bind(server, ws_server, policy, guard, on_refused))


def _bind(server, ws_server, policy: AccessPolicy, guard, on_refused) -> None:
    from aiohttp import web

    handlers = getattr(ws_server, "_ws_handlers", None)
    app = getattr(ws_server, "app", None)
    if not handlers or app is None:
        raise SecurityHookError(
            "assft serve: the installed wslink has no WebSocket handler to secure; install the "
            "pinned versions (pip install -e '.[web]')."
        )
    ws_paths = {"/" + str(route).lstrip("/") for route in ws_server.config.get("ws", {})}
    static_root = ws_server.config.get("static", {}).get("/")

    @web.middleware
    async def doors(request, handler):
        if not policy.host_allowed(request.headers.get("Host")):
            LOGGER.warning("refused a request for %s with Host %r", request.path, request.headers.get("Host"))
            return _text_response(
                403,
                "This server answers only to its own address (the Host header names "
                "another). Open the address assft serve printed; for another name start "
                "it with --allow-host NAME.",
            )
        if request.path in ws_paths:
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return _text_response(
                    400, "This address is the page's WebSocket; open the address assft serve printed instead."
                )
            if not policy.origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
                LOGGER.warning("refused a WebSocket from Origin %r", request.headers.get("Origin"))
                return _text_response(403, "WebSocket refused: it comes from a page of another site (Origin).")
            return await handler(request)
        response = await handler(request)
        if not response.prepared:
            for key, value in RESPONSE_HEADERS.items():
                response.headers.setdefault(key, value)
        return response

    try:
        app.middlewares.append(doors)
    except RuntimeError as error:  # a frozen application: too late to add the doors
        raise SecurityHookError(f"assft serve: cannot secure the web server ({error}).") from error
    if static_root:
        index = Path(static_root) / "index.html"
        page = index.read_text(encoding="utf-8").replace("<head>", "<head>\n" + PAGE_SCRIPT, 1)

        async def index_page(_request):
            return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

        app.router.add_get("/index.html", index_page)
    for handler in handlers:
        _secure_handler(handler, policy, guard, on_refused, server)


def _secure_handler(handler, policy: AccessPolicy, guard, on_refused, server) -> None:
    for name in ("onConnect", "validateToken", "sendWrappedError", "unchunkers", "functionMap"):
        if not hasattr(handler, name):
            raise SecurityHookError(
                f"assft serve: the installed wslink's handler has no '{name}'; install the "
                "pinned versions (pip install -e '.[web]')."
            )
    connect = handler.onConnect
    send_error = handler.sendWrappedError

    async def on_connect(request, client_id):
        await connect(request, client_id)
        handler.unchunkers[client_id] = BoundedUnChunker(policy.max_message_bytes)

    async def validate_token(token, client_id):
        valid = policy.token_valid(token)
        if not valid:
            LOGGER.warning("refused a connection with a wrong secret")
        return valid

    async def send_wrapped_error(rpcid, code, message, data=None, client_id=None):
        if code == EXCEPTION_ERROR:
            method = data.get("method") if isinstance(data, dict) else None
            message, data = SERVER_ERROR_MESSAGE, ({"method": method} if isinstance(method, str) else None)
        await send_error(rpcid, code, message, data, client_id=client_id)

    handler.onConnect = on_connect
    handler.validateToken = validate_token
    handler.sendWrappedError = send_wrapped_error
    if guard is not None:
        update = handler.functionMap.get("trame.state.update")
        if update is None:
            raise SecurityHookError(
                "assft serve: trame's 'trame.state.update' is not where it was expected; install "
                "the pinned versions (pip install -e '.[web]')."
            )
        protocol, update_state = update

        def guarded_update(protocol_object, changes):
            from .fields import FieldError

            try:
                result = guard.check(changes)
            except FieldError as error:
                LOGGER.warning("ignored a malformed state update: %s", error)
                return None
            if result.refused or result.fixed:
                LOGGER.info("state update refusals: %s", result.refused)
                if on_refused is not None:
                    with server.state:
                        on_refused(result)
            if result.accepted:
                update_state(protocol_object, [{"key": k, "value": v} for k, v in result.accepted.items()])
            return None

        handler.functionMap["trame.state.update"] = (protocol, guarded_update)
