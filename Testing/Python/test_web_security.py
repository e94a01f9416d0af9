"""The doors of ``assft serve``: a secret per start, Host and Origin checks, bounded messages, validated fields, no
tracebacks to the browser and no label writes through links (issue 29, items 1-5 and 21).

The rules are tested alone (no server), then through a real WebSocket client (aiohttp, speaking wslink's msgpack
frames) against a real ``python -m ASSFTWeb`` on 127.0.0.1, as a foreign page or process would try them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from ASSFTActive.errors import OutputError
from ASSFTActive.io import Volume, read_volume

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"

wslink_chunking = pytest.importorskip("wslink.chunking", reason="wslink is not installed (pip install -e '.[web]')")
msgpack = pytest.importorskip("msgpack")
aiohttp = pytest.importorskip("aiohttp")

from ASSFTWeb import fields  # noqa: E402
from ASSFTWeb.guidance import next_step  # noqa: E402
from ASSFTWeb.label_files import check_labels_folder, save_label_file  # noqa: E402
from ASSFTWeb.security import (  # noqa: E402
    MAX_PENDING_MESSAGES,
    PAGE_SCRIPT,
    SERVER_ERROR_MESSAGE,
    AccessPolicy,
    BoundedUnChunker,
    SecurityHookError,
    host_name,
    install,
    new_secret,
)

# ------------------------------------------------------------------ the rules alone


def test_every_start_gets_its_own_long_random_secret_never_the_public_default():
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20 and "wslink-secret" not in secrets
    assert all(len(s) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in secrets)
    policy = AccessPolicy.for_address("127.0.0.1")
    assert policy.token_valid(policy.secret)
    assert not policy.token_valid("wslink-secret") and not policy.token_valid(None) and not policy.token_valid(1)
    assert policy.url(8123) == f"http://127.0.0.1:8123/?secret={policy.secret}"


@pytest.mark.parametrize(
    "header, allowed",
    [
        ("127.0.0.1:8080", True),
        ("localhost:9000", True),
        ("[::1]:8080", True),
        ("LOCALHOST", True),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example:8080", False),
        ("", False),
        (None, False),
        ("[::1", False),
        ("127.0.0.1:80x", False),
        ("10.0.0.5:8080", False),
    ],
)
def test_a_loopback_server_answers_only_to_loopback_host_names(header, allowed):
    assert AccessPolicy.for_address("127.0.0.1").host_allowed(header) is allowed


def test_a_server_on_another_address_answers_to_that_address_and_to_allowed_names_only():
    policy = AccessPolicy.for_address("10.0.0.5", extra_hosts=["gpu01.lab.example"])
    assert policy.host_allowed("10.0.0.5:8080") and policy.host_allowed("gpu01.lab.example")
    assert policy.host_allowed("localhost:8080")  # an SSH tunnel to the machine
    assert not policy.host_allowed("evil.example")
    assert policy.url(8080).startswith("http://10.0.0.5:8080/?secret=")
    assert host_name("[fe80::1]:8080") == "fe80::1"


@pytest.mark.parametrize(
    "origin, host, allowed",
    [
        (None, "127.0.0.1:8080", True),  # not a browser: it must still present the secret
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://localhost:9000", "localhost:9000", True),  # a tunnel to another local port
        ("http://evil.example", "127.0.0.1:8080", False),
        ("http://evil.example:8080", "evil.example:8080", False),  # DNS rebinding: a foreign name on both
        ("http://127.0.0.1:9999", "127.0.0.1:8080", False),  # another local page (another port)
        ("null", "127.0.0.1:8080", False),
        ("file://", "127.0.0.1:8080", False),
    ],
)
def test_a_websocket_origin_must_be_the_pages_own_address(origin, host, allowed):
    assert AccessPolicy.for_address("127.0.0.1").origin_allowed(origin, host) is allowed


def _chunk(message_id: int, offset: int, total: int, content: bytes = b"") -> bytes:
    return wslink_chunking._encode_header(message_id, offset, total) + content


def test_a_message_claiming_more_than_the_limit_is_refused_before_anything_is_allocated():
    unchunker = BoundedUnChunker(limit=1024)
    unchunker.set_max_message_size(4 * 1024**3)  # what wslink asks after hello
    assert unchunker.max_message_size == 1024
    with pytest.raises(ValueError, match="exceeds the allocation limit"):
        unchunker.process_chunk(_chunk(1, 0, 256 * 1024**2))
    assert unchunker.pending_messages == {}
    packed = msgpack.packb({"id": "x", "method": "m"})
    assert unchunker.process_chunk(_chunk(2, 0, len(packed), packed)) == {"id": "x", "method": "m"}


def test_a_connection_may_have_only_a_few_messages_in_flight():
    unchunker = BoundedUnChunker(limit=1024)
    unchunker.set_max_message_size(1024)
    for message_id in range(MAX_PENDING_MESSAGES):
        assert unchunker.process_chunk(_chunk(message_id, 0, 1000, b"x")) is None
    with pytest.raises(ValueError, match="messages in flight"):
        unchunker.process_chunk(_chunk(99, 0, 1000, b"x"))
    with pytest.raises(ValueError, match="shorter than its header"):
        unchunker.process_chunk(b"abc")


@pytest.mark.parametrize(
    "check, value, message",
    [
        (fields.whole_number("Budget", 1, 4), -5, "Budget must be a whole number from 1 to 4, got -5."),
        (fields.whole_number("Budget", 1, 4), 10**12, "got 1000000000000"),
        (fields.whole_number("Budget", 1, 4), "abc", "got 'abc'"),
        (fields.whole_number("Budget", 1, 4), 2.5, "got 2.5"),
        (fields.whole_number("Budget", 1, 4), True, "got True"),
        (fields.whole_number("Budget", 1, 4), float("nan"), "got nan"),
        (fields.number_in("Overlay opacity", 0, 1), "abc", "Overlay opacity must be a number from 0 to 1, got 'abc'."),
        (fields.number_in("Overlay opacity", 0, 1), 1.5, "got 1.5"),
        (fields.number_in("Overlay opacity", 0, 1), float("inf"), "got inf"),
        (fields.boolean("Entropy overlay"), "false", "must be true or false, got 'false'"),
        (fields.choice("Adapt method", ["assft", "sfr"]), "evil", "must be one of assft, sfr, got 'evil'"),
        (fields.text("Model", 10), "x" * 11, "at most 10 characters"),
        (fields.text("Model"), "a\nb", "control characters"),
    ],
)
def test_each_field_refuses_a_bad_value_with_a_message_naming_it(check, value, message):
    with pytest.raises(fields.FieldError) as error:
        check(value)
    assert message in str(error.value)


def test_good_field_values_are_parsed_not_clamped():
    assert fields.whole_number("Budget", 1, 4)("3") == 3 and fields.whole_number("Budget", 1, 4)(4.0) == 4
    assert fields.number_in("Overlay opacity", 0, 1)(0.25) == 0.25
    assert fields.whole_number("Budget", 1, lambda: 7)(7) == 7  # the range's end read when the value arrives


def test_the_state_guard_refuses_server_fields_and_bad_values_and_keeps_the_value_in_use():
    guard = fields.StateGuard({"budget": fields.whole_number("Budget", 1, 4)}, server_owned={"rows", "budget"})
    result = guard.check(
        [{"key": "budget", "value": -5}, {"key": "rows", "value": []}, {"key": "trame_slicer_slider", "value": 3}]
    )
    assert result.accepted == {"trame_slicer_slider": 3}  # other widgets' keys pass unchanged
    assert set(result.refused) == {"budget", "rows"} and "only the server writes it" in result.refused["rows"]
    assert guard.pending().startswith("Correct the page's fields first: Budget must be")
    result = guard.check([{"key": "budget", "value": "3"}])
    assert result.accepted == {"budget": 3} and result.fixed == ("budget",) and guard.pending() is None
    with pytest.raises(fields.FieldError):
        guard.check({"budget": 3})


def test_the_next_step_line_follows_the_round():
    assert next_step([], False).startswith("Next: press Rank Volumes")
    rows = [{"volume": "a", "state": "proposed"}, {"volume": "b", "state": "unlabeled"}]
    assert "orange (proposed) row such as a" in next_step(rows, False)
    assert "then Save labels" in next_step(rows, False, annotated="a", painted_voxels=0)
    labeled = [{"volume": "a", "state": "labeled"}, {"volume": "b", "state": "unlabeled"}]
    assert next_step(labeled, False).startswith("Next: press Adapt Model to fine-tune on the 1 labelled volume")
    assert next_step(labeled, True, "adapt").startswith("Wait while the server is adapting")
    assert "Train anyway" in next_step(labeled, False, failed=True, can_train_anyway=True)
    assert next_step(labeled, False, failed=True).startswith("The job failed")


class _Controller:
    def __init__(self):
        self.on_server_bind = self

    def add(self, callback):
        self.callback = callback


class _Trame:
    def __init__(self):
        self.controller = _Controller()


class _WebServer:
    def __init__(self, handlers, app=None):
        self._ws_handlers = handlers
        self.app = app
        self.config = {"ws": {"ws": None}}


def test_the_server_refuses_to_start_when_a_hook_point_of_its_doors_is_missing():
    from aiohttp import web

    server = _Trame()
    install(server, AccessPolicy.for_address("127.0.0.1"))
    with pytest.raises(SecurityHookError, match="no WebSocket handler to secure"):
        server.controller.callback(_WebServer([], web.Application()))

    class OldHandler:  # a wslink without the pieces the doors wrap
        functionMap = {}

    with pytest.raises(SecurityHookError, match="handler has no 'onConnect'"):
        server.controller.callback(_WebServer([OldHandler()], web.Application()))


# ------------------------------------------------------------------ labels and links


def _label() -> Volume:
    return Volume(array=np.ones((4, 4, 4), dtype=np.uint8), affine=np.eye(4))


def test_a_save_never_moves_the_previous_label_through_a_backup_folder_that_is_a_link(tmp_path):
    labels, outside = tmp_path / "labels", tmp_path / "outside"
    outside.mkdir()
    save_label_file(_label(), labels, "case")
    (labels / "backup").symlink_to(outside, target_is_directory=True)
    before = (labels / "case.nii.gz").read_bytes()
    with pytest.raises(OutputError, match="backup is a symbolic link"):
        save_label_file(_label(), labels, "case")
    assert list(outside.iterdir()) == [] and (labels / "case.nii.gz").read_bytes() == before


def test_a_save_refuses_a_label_file_that_is_a_link_and_leaves_its_target_alone(tmp_path):
    labels, outside = tmp_path / "labels", tmp_path / "outside.txt"
    labels.mkdir()
    outside.write_text("someone else's file")
    (labels / "case.nii.gz").symlink_to(outside)
    with pytest.raises(OutputError, match="case.nii.gz is a symbolic link"):
        save_label_file(_label(), labels, "case")
    assert outside.read_text() == "someone else's file" and (labels / "case.nii.gz").is_symlink()
    assert not (labels / "backup").exists()


def test_a_labels_folder_swapped_for_a_link_after_start_is_refused_at_save(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "labels").mkdir(parents=True)
    outside.mkdir()
    labels = (data / "labels").resolve()  # what the server resolved at start
    check_labels_folder(labels)
    shutil.rmtree(data)
    data.symlink_to(outside, target_is_directory=True)  # a parent replaced by a link
    (outside / "labels").mkdir()
    with pytest.raises(OutputError, match="became a symbolic link after the server started"):
        save_label_file(_label(), labels, "case")
    assert list((outside / "labels").iterdir()) == []


def test_a_backup_keeps_the_previous_labels_when_saved_again(tmp_path):
    first = save_label_file(_label(), tmp_path, "case")
    second = save_label_file(Volume(array=np.full((4, 4, 4), 2, np.uint8), affine=np.eye(4)), tmp_path, "case")
    assert first.backup is None and second.backup is not None and not second.backup.is_symlink()
    assert int(read_volume(second.backup).array.max()) == 1 and int(read_volume(second.path).array.max()) == 2


def test_the_server_refuses_to_start_on_a_labels_folder_that_is_a_link(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "labels").symlink_to(outside, target_is_directory=True)
    out = subprocess.run(
        [sys.executable, "-m", "ASSFTWeb", "--data", str(data)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {data / 'labels'} is a symbolic link") and "--labels" in line


# ------------------------------------------------------------------ a real server, a real WebSocket client


def _served_missing() -> str:
    try:
        import trame_slicer  # noqa: F401
    except ImportError as exc:
        return f"trame-slicer is not installed ({exc}); pip install -e '.[web]'"
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        return "Mesa EGL is missing (apt-get install libegl1 libegl-mesa0); the server cannot render"
    return ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m ASSFTWeb`` on two sample volumes, port chosen by the system; yields its printed address."""
    reason = _served_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    data.mkdir()
    for case in ("hippocampus_011", "hippocampus_023"):
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", data)
    log = root / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ASSFTWeb", "--data", str(data), "--port", "0"],
            cwd=str(REPO),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None:
            found = re.search(r"http://127\.0\.0\.1:\d+/\?secret=[A-Za-z0-9_-]+", log.read_text())
            url = found.group(0) if found else None
            if url is None:
                assert process.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no address printed:\n{log.read_text()[-3000:]}"
                time.sleep(0.3)
        parts = urlsplit(url)
        yield {
            "url": url,
            "host": parts.netloc,
            "secret": parse_qs(parts.query)["secret"][0],
            "data": data,
            "log": log,
            "pid": process.pid,
        }
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class WslinkClient:
    """The least of trame's client: wslink frames (msgpack, chunk headers) over aiohttp's WebSocket."""

    def __init__(self, ws):
        self.ws = ws
        self.unchunker = wslink_chunking.UnChunker()
        self.unchunker.set_max_message_size(1 << 30)
        self.count = 0
        self.client_id = "c0"
        self.published = []  # what the server pushed meanwhile (state changes)

    async def send(self, message: dict, size: int = 4096) -> None:
        for chunk in wslink_chunking.generate_chunks(msgpack.packb(message), size):
            await self.ws.send_bytes(chunk)

    async def call(self, method: str, args=(), kwargs=None, rpc_id=None, timeout: float = 30) -> dict:
        self.count += 1
        rpc_id = rpc_id or f"rpc:{self.client_id}:{self.count}"
        await self.send({"wslink": "1.0", "id": rpc_id, "method": method, "args": list(args), "kwargs": kwargs or {}})
        while True:
            frame = await asyncio.wait_for(self.ws.receive(), timeout)
            if frame.type != aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"connection ended: {frame.type} {frame.data!r}")
            message = self.unchunker.process_chunk(frame.data)
            if message is not None and message.get("id") == rpc_id:
                return message
            if message is not None and str(message.get("id", "")).startswith("publish:"):
                self.published.append(message)

    async def hello(self, secret: str) -> dict:
        answer = await self.call("wslink.hello", [{"secret": secret}], rpc_id="system:c0:0")
        if "result" in answer:
            self.client_id = answer["result"]["clientID"]
        return answer


def _run(coroutine):
    return asyncio.run(coroutine)


async def _session(served, work, origin="own", host=None):
    headers = {"Host": host or served["host"]}
    if origin == "own":
        headers["Origin"] = f"http://{served['host']}"
    elif origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://{served['host']}/ws", headers=headers) as ws:
            return await work(WslinkClient(ws))


def _state(answer: dict) -> dict:
    return answer["result"]["state"]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_page_connects_only_with_the_printed_secret_never_the_public_default(server):
    async def work(client):
        refused = await client.hello("wslink-secret")
        no_secret = await client.call("trame.state.get")
        accepted = await client.hello(server["secret"])
        return refused, no_secret, accepted

    refused, no_secret, accepted = _run(_session(server, work))
    assert refused["error"]["message"] == "Authentication failed"
    assert no_secret["error"]["message"].startswith("Unauthorized")
    assert accepted["result"]["clientID"]
    assert Path(server["log"]).read_text().count(server["secret"]) == 1  # printed once, never logged


def test_a_websocket_opened_by_another_sites_page_is_refused(server):
    async def work(client):
        return await client.hello(server["secret"])

    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(server['host'].split(':')[1]) + 1}"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            _run(_session(server, work, origin=origin))
        assert error.value.status == 403
    assert "result" in _run(_session(server, work, origin="own"))


def test_a_foreign_host_name_is_refused_for_the_page_and_the_websocket(server):
    port = server["host"].split(":")[1]

    def get(path: str, host: str) -> int:
        request = urllib.request.Request(f"http://{server['host']}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert get("/index.html", f"evil.example:{port}") == 403
    assert get("/", f"evil.example:{port}") == 403
    assert get("/index.html", f"localhost:{port}") == 200

    async def work(client):
        return await client.hello(server["secret"])

    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        _run(_session(server, work, origin=f"http://evil.example:{port}", host=f"evil.example:{port}"))
    assert error.value.status == 403


def test_the_page_carries_the_secret_keeper_but_never_the_secret(server):
    with urllib.request.urlopen(f"http://{server['host']}/index.html", timeout=10) as response:
        page = response.read().decode()
        headers = response.headers
    assert PAGE_SCRIPT in page and server["secret"] not in page
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"


def test_a_plain_get_on_the_websocket_path_answers_400_without_a_traceback(server):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://{server['host']}/ws", timeout=10)
    body = error.value.read().decode()
    assert error.value.code == 400 and "Traceback" not in body and "assft serve printed" in body


def test_a_message_claiming_a_huge_size_is_refused_without_allocating_it(server):
    pid = server["pid"]  # python -m ASSFTWeb itself (no wrapper process)

    async def work(client):
        await client.hello(server["secret"])
        before = _rss_kb(pid)
        await client.ws.send_bytes(_chunk(7, 0, 256 * 1024**2))  # 28 bytes claiming 256 MB
        frame = await asyncio.wait_for(client.ws.receive(), 30)
        return before, _rss_kb(pid), frame.type

    before, after, frame_type = _run(_session(server, work))
    assert frame_type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MB"

    async def alive(client):
        return await client.hello(server["secret"])

    assert "result" in _run(_session(server, alive))  # the server still answers


def test_bad_field_values_from_a_browser_are_refused_with_a_message_and_never_used(server):
    async def work(client):
        await client.hello(server["secret"])
        answers = {}
        for key, value in (
            ("budget", -5),
            ("budget", 10**12),
            ("overlay_opacity", "abc"),
            ("adapt_method", "evil"),
            ("rows", [{"volume": "x"}]),
            ("data_dir", "/etc"),
        ):
            await client.call("trame.state.update", [[{"key": key, "value": value}]])
            answers[(key, str(value))] = _state(await client.call("trame.state.get"))
        await client.call("trame.state.update", [[{"key": "budget", "value": 2}]])
        fixed = _state(await client.call("trame.state.get"))
        select = await client.call("trame.trigger", ["select_row", ["abc"], {}])
        after_select = _state(await client.call("trame.state.get"))
        return answers, fixed, select, after_select

    answers, fixed, select, after_select = _run(_session(server, work))
    state = answers[("budget", "-5")]
    assert state["budget"] == 2 and "Budget must be a whole number from 1 to 2, got -5." in state["error"]
    assert answers[("budget", str(10**12))]["budget"] == 2
    state = answers[("overlay_opacity", "abc")]
    assert state["overlay_opacity"] == 0.5 and "Overlay opacity must be a number from 0 to 1" in state["error"]
    assert "Adapt method must be one of" in answers[("adapt_method", "evil")]["error"]
    assert answers[("rows", str([{"volume": "x"}]))]["rows"] == []
    assert "'data_dir': only the server writes it" in answers[("data_dir", "/etc")]["error"]
    assert answers[("data_dir", "/etc")]["data_dir"] == str(server["data"].resolve())
    assert fixed["budget"] == 2
    assert "error" not in select and "The row must be a whole number" in after_select["error"]


def test_an_error_inside_a_request_sends_no_traceback_or_path_to_the_browser(server):
    async def work(client):
        await client.hello(server["secret"])
        return await client.call("trame.trigger", ["select_row", [0], {"not_an_argument": 1}])

    answer = _run(_session(server, work))
    text = repr(answer)
    assert answer["error"]["message"] == SERVER_ERROR_MESSAGE
    assert "Traceback" not in text and str(REPO) not in text and ".py" not in text


def test_rank_refuses_to_start_while_a_field_shows_a_refused_value_and_puts_the_value_in_use_back(server):
    async def work(client):
        await client.hello(server["secret"])
        await client.call("trame.state.update", [[{"key": "budget", "value": 0}]])
        client.published.clear()
        await client.call("trame.trigger", ["rank", [], {}])
        state = _state(await client.call("trame.state.get"))
        for _ in range(50):  # publications travel beside the answers; later calls take in what arrived
            if any(isinstance(m.get("result"), dict) and "budget" in m["result"] for m in client.published):
                break
            await asyncio.sleep(0.1)
            await client.call("trame.state.get")
        return state, list(client.published)

    state, published = _run(_session(server, work))
    assert state["error"].startswith("Correct the page's fields first: ")  # (other tests' refusals may be listed)
    assert "Budget must be a whole number from 1 to 2, got 0." in state["error"]
    assert "show the values in use again" in state["error"] and not state["job_running"]
    assert not (server["data"] / ".assft" / "jobs").exists()
    pushed = [m["result"] for m in published if isinstance(m.get("result"), dict)]
    assert any(change.get("budget") == 2 for change in pushed), [sorted(change) for change in pushed]


def test_malformed_frames_close_only_their_connection(server):
    """A text frame, random bytes, a cut message: whatever happens to that connection, the server goes on."""

    async def alive(client):
        return await client.hello(server["secret"])

    for frame in ("not wslink", os.urandom(40), _chunk(3, 0, 9, msgpack.packb([1, 2, 3])[:9])):

        async def work(client, frame=frame):
            await client.hello(server["secret"])
            await (client.ws.send_str(frame) if isinstance(frame, str) else client.ws.send_bytes(frame))
            return await client.call("trame.state.get", timeout=5)

        try:
            _run(_session(server, work))
        except (ConnectionError, asyncio.TimeoutError):
            pass  # that connection was closed: fine
        assert "result" in _run(_session(server, alive))


def _trigger_of(state: dict, element_id: str) -> str:
    """The ``trigger__N`` name the served template binds to the element ``element_id`` (what the page sends)."""
    template = "".join(str(v) for k, v in state.items() if k.startswith("trame__template"))
    for tag in re.findall(r"<[^>]+>", template):
        if f'id="{element_id}"' in tag:
            found = re.search(r"trigger\('(trigger__\d+)'", tag)
            if found:
                return found.group(1)
    raise AssertionError(f"no trigger bound to #{element_id} in the served template")


def test_the_model_field_refuses_a_file_that_is_no_model_card_and_keeps_the_model_in_use(server, tmp_path):
    """A client's Model field with ``/etc/passwd`` or a JSON that is no card: the check mark reports the card error
    and the model in use stays (before, both were 'set' and only a later Rank failed)."""
    not_a_card = tmp_path / "not_a_card.json"
    not_a_card.write_text('{"architecture": "monai:os.system", "arguments": {}}')

    async def work(client):
        await client.hello(server["secret"])
        state = _state(await client.call("trame.state.get"))
        check = _trigger_of(state, "model_field")
        answers = []
        for text in ("/etc/passwd", str(not_a_card)):
            await client.call("trame.state.update", [[{"key": "model_text", "value": text}]])
            await client.call("trame.trigger", [check, [], {}])
            answers.append(_state(await client.call("trame.state.get")))
        await client.call("trame.state.update", [[{"key": "model_text", "value": "default"}]])
        await client.call("trame.trigger", [check, [], {}])
        return state["model_description"], answers

    in_use, answers = _run(_session(server, work))
    passwd, other = answers
    assert "/etc/passwd" in passwd["error"] and "model card" in passwd["error"]
    assert str(not_a_card) in other["error"] and "missing required field" in other["error"]
    assert passwd["model_description"] == in_use and other["model_description"] == in_use
    assert not passwd["status"].startswith("Model set") and not other["status"].startswith("Model set")
