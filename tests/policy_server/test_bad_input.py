"""Bad input gets a 4xx naming the problem and the server stays ready; fuzzed bodies never get a 5xx."""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policy_server.protocol import Timeouts
from policy_server.validation import MAX_CONTEXT_DEPTH
from tests.support.policy_server import Client, metric, running

pytestmark = pytest.mark.integration

OBS = [0.3, -1.2, 0.5, 0.0, 1.1, -0.4, 0.9, -0.7]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from policy_server import artifact

    path = artifact.write_example_model(tmp_path_factory.mktemp("bad") / "m")
    with running(path, variant="b", max_body=4096) as s:
        yield s


def _still_serving(c: Client) -> None:
    assert c.get("/readyz")[0] == 200
    assert c.act(OBS)["action"] in range(4)


ACT_CASES = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty body"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"observation": [NaN, 1, 2, 3, 4, 5, 6, 7]}', 400, "NaN/Infinity are not JSON"),
    (b'{"observation": [1e999, 1, 2, 3, 4, 5, 6, 7]}', 400, "not valid JSON"),
    (b'{"observation": [1e300, 1, 2, 3, 4, 5, 6, 7]}', 400, "outside the float32 range"),
    (b"{}", 400, "'observation' is required"),
    (b'{"observation": [1, 2, 3]}', 400, "has 3 values, the model expects 8"),
    (b'{"observation": "12345678"}', 400, "must be an array of 8 numbers, got string"),
    (b'{"observation": [1, 2, 3, 4, 5, 6, 7, "8"]}', 400, "'observation[7]' is string"),
    (b'{"observation": [1, 2, 3, 4, 5, 6, 7, true]}', 400, "'observation[7]' is boolean"),
    (b'{"observation": [[1], 2, 3, 4, 5, 6, 7, 8]}', 400, "'observation[0]' is array"),
    (b'{"observation": [1, 2, 3, 4, 5, 6, 7, null]}', 400, "'observation[7]' is null"),
    (json.dumps({"observation": OBS, "extra": 1}).encode(), 400, "unknown field 'extra'"),
    (json.dumps({"observation": OBS, "request_id": 5}).encode(), 400, "'request_id' must be a non-empty string"),
    (json.dumps({"observation": OBS, "request_id": ""}).encode(), 400, "'request_id' must be a non-empty string"),
    (json.dumps({"observation": OBS, "context": []}).encode(), 400, "'context' must be an object"),
    (json.dumps({"observation": OBS, "context": {"action_mask": [1, 0, 1, 1]}}).encode(), 400, "4 booleans"),
    (json.dumps({"observation": OBS, "context": {"action_mask": [False] * 4}}).encode(), 400, "allows no action"),
    (json.dumps({"observation": OBS, "context": {"entity": {"a": 1}}}).encode(), 400, "'context.entity'"),
    (b'{"observation": [' + b"1," * 3000 + b"1]}", 413, "exceeds 4096 bytes"),
]


@pytest.mark.parametrize(("body", "status", "message"), ACT_CASES)
def test_bad_act_bodies(srv, body: bytes, status: int, message: str) -> None:
    c = srv.client()
    got, err = c.request("POST", "/v1/act", body)
    assert got == status, err
    assert message in err["error"]
    _still_serving(srv.client())


REWARD_CASES = [
    ({"reward": 1}, "'request_id' is required"),
    ({"request_id": "x"}, "'reward' is required"),
    ({"request_id": "x", "reward": "1"}, "'reward' must be a number, got string"),
    ({"request_id": "x", "reward": True}, "'reward' must be a number, got boolean"),
    ({"request_id": "x", "reward": 1, "costs": [1]}, "'costs' must be an object"),
    ({"request_id": "x", "reward": 1, "costs": {"bad name": 1}}, "cost name 'bad name'"),
    ({"request_id": "x", "reward": 1, "costs": {"c": "1"}}, "'costs.c' must be a number"),
    ({"request_id": "x", "reward": 1, "other": 1}, "unknown field 'other'"),
]


@pytest.mark.parametrize(("payload", "message"), REWARD_CASES)
def test_bad_reward_bodies(srv, payload: dict, message: str) -> None:
    status, err = srv.client().post("/v1/reward", payload)
    assert status == 400 and message in err["error"]
    _still_serving(srv.client())


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/act", 405, "use POST"),
        ("PUT", "/v1/reward", 405, "use POST"),
        ("POST", "/v1/model", 405, "use GET"),
        ("DELETE", "/metrics", 405, "use GET"),
        ("GET", "/v2/act", 404, "no route '/v2/act'"),
        ("GET", "/", 404, "no route '/'"),
    ],
)
def test_wrong_method_and_path(srv, method: str, path: str, status: int, message: str) -> None:
    got, err = srv.client().request(method, path, b"{}" if method != "GET" else None)
    assert got == status and message in err["error"]
    _still_serving(srv.client())


def _raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"POST /v1/act HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"400"),
        (b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ],
)
def test_malformed_http_answered_and_closed(srv, data: bytes, status: bytes) -> None:
    reply = _raw(srv.port, data)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    assert b"Connection: close" in reply
    _still_serving(srv.client())


def test_pipelined_requests_answered_in_order(srv) -> None:
    act = json.dumps({"observation": OBS, "request_id": "pipe-1"}).encode()
    data = (
        b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(act), act)
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    reply = _raw(srv.port, data)
    first, second, third = reply.index(b"pipe-1"), reply.index(b'{"status":"ok"}'), reply.index(b"404 Not Found")
    assert first < second < third


def test_expect_100_continue(srv) -> None:
    act = json.dumps({"observation": OBS}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/act HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(act))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(act)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")


def test_errors_are_counted(srv) -> None:
    before = srv.client().metrics()
    srv.client().request("POST", "/v1/act", b"{")
    srv.client().get("/nowhere")
    after = srv.client().metrics()
    for reason in ("bad_request", "not_found"):
        assert metric(after, "policy_errors_total", variant="b", reason=reason) == (
            metric(before, "policy_errors_total", variant="b", reason=reason) + 1
        )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=10) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "observation": JSON | st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(), max_size=10),
        "request_id": JSON,
        "context": JSON | st.fixed_dictionaries({}, optional={"action_mask": JSON, "entity": JSON}),
        "reward": JSON,
        "costs": JSON,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON | FIELDS)
def test_fuzz_json_bodies_never_5xx(srv, body) -> None:
    c = srv.client()
    for path in ("/v1/act", "/v1/reward"):
        status, _ = c.request("POST", path, json.dumps(body))
        assert status < 500, (path, body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_fuzz_random_bytes_never_5xx(srv, body: bytes) -> None:
    c = srv.client()
    for path in ("/v1/act", "/v1/reward"):
        status, _ = c.request("POST", path, body)
        assert 400 <= status < 500 or status in (200, 202), (path, body)


def test_server_ready_after_fuzzing(srv) -> None:
    m = srv.client().metrics()
    assert metric(m, "policy_errors_total", variant="b", reason="internal") == 0
    _still_serving(srv.client())


# ---------------------------------------------------------------- issue 17: what is accepted can be logged


def _context(depth: int) -> bytes:
    """A JSON object nested ``depth`` levels deep (the object itself is level 1), built without recursion."""
    lists = depth - 1
    return b'{"k": ' + b"[" * lists + b"1" + b"]" * lists + b"}"


@pytest.mark.parametrize(
    ("depth", "status"),
    [(1, 200), (MAX_CONTEXT_DEPTH, 200), (MAX_CONTEXT_DEPTH + 1, 400), (1023, 400), (1024, 400)],
)
def test_context_depth_boundaries(srv, depth: int, status: int) -> None:
    """A context the log could not write is refused before the response, at every depth boundary."""
    body = b'{"observation": %s, "context": %s}' % (json.dumps(OBS).encode(), _context(depth))
    got, answer = srv.client().request("POST", "/v1/act", body)
    assert got == status, answer
    if status == 400:
        assert "nested more than" in answer["error"] and f"{MAX_CONTEXT_DEPTH} levels" in answer["error"]
    _still_serving(srv.client())


def test_body_nested_beyond_the_parser_limit_is_400(srv) -> None:
    body = b'{"observation": %s, "context": {"k": %s1%s}}' % (json.dumps(OBS).encode(), b"[" * 1100, b"]" * 1100)
    got, answer = srv.client().request("POST", "/v1/act", body)
    assert got == 400 and "nested more than 1024 levels" in answer["error"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"reward": 1e308}, "'reward' is 1e+308, outside"),
        ({"reward": -1e10}, "'reward' is -1e+10, outside"),
        ({"reward": 0, "costs": {"c": 1e300}}, "'costs.c' is 1e+300, outside"),
    ],
)
def test_huge_rewards_and_costs_are_refused_and_metrics_stay_finite(srv, payload: dict, message: str) -> None:
    rid = srv.client().act(OBS)["request_id"]
    status, err = srv.client().post("/v1/reward", {"request_id": rid, **payload})
    assert status == 400 and message in err["error"], err
    m = srv.client().metrics()
    assert math.isfinite(metric(m, "policy_reward_sum", variant="b"))
    assert all(math.isfinite(v) for k, v in m.items() if k.startswith("policy_cost_sum"))
    assert srv.client().post("/v1/reward", {"request_id": rid, "reward": 1e6})[0] == 202  # the id is still usable


def _responses(reply: bytes) -> int:
    """Status lines in a raw reply (bodies may mention HTTP/1.1 too)."""
    return len(re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z]", reply))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"200"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"GET /x HTTP/1.1\r\n\r\n",
            b"200",
        ),
        (b"GET /readyz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n", b"200"),
        (
            b"POST /v1/act HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            b"400",
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", b"404"),
    ],
)
def test_upgrade_requests_get_exactly_one_response(srv, request_bytes: bytes, status: bytes) -> None:
    """The request is answered as plain HTTP/1.1, once; the upgrade is not performed and the connection closes."""
    reply = _raw(srv.port, request_bytes)
    assert _responses(reply) == 1, reply
    assert reply.startswith(b"HTTP/1.1 " + status)
    _still_serving(srv.client())


SMUGGLING = [
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /nope HTTP/1.1\r\n\r\n",
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"POST /v1/act HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", SMUGGLING)
def test_request_smuggling_shapes_get_one_400_and_a_close(srv, request_bytes: bytes) -> None:
    reply = _raw(srv.port, request_bytes)
    assert _responses(reply) == 1 and reply.startswith(b"HTTP/1.1 400"), reply
    assert b"Connection: close" in reply
    _still_serving(srv.client())


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    from policy_server import artifact

    path = artifact.write_example_model(tmp_path_factory.mktemp("slow") / "m")
    with running(path, variant="s", timeouts=Timeouts(header_s=0.5, body_s=0.5, idle_s=1.0)) as s:
        yield s


@pytest.mark.parametrize(
    "prefix",
    [
        b"",  # connected, never sends a byte
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # body never finished
    ],
)
def test_slowloris_connections_are_closed(impatient, prefix: bytes) -> None:
    """Each half-sent request is closed by the server, well before the client's 20 s socket timeout."""
    socks = [socket.create_connection(("127.0.0.1", impatient.port), timeout=20) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(prefix)
        for s in socks:
            for _ in range(3):  # a slowloris client trickles one more header byte; the clock does not restart
                with contextlib.suppress(OSError):
                    s.sendall(b"X" if prefix and b"\r\n\r\n" not in prefix else b"")
            reply = b"".join(iter(lambda s=s: s.recv(65536), b""))  # until the server closes
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
    finally:
        for s in socks:
            s.close()
    _still_serving(impatient.client())


HEADER_NAMES = ["Upgrade", "Connection", "Expect", "Transfer-Encoding", "Content-Length", "Host", "TE", "Keep-Alive"]
HEADER_VALUES = ["websocket", "h2c", "Upgrade", "close", "keep-alive", "100-continue", "chunked", "identity",
                 "gzip, chunked", "0", "2", "40", "-1", "", "x"]  # fmt: skip
SENTINEL = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request_line=st.sampled_from([b"GET /healthz", b"GET /readyz", b"POST /v1/act", b"POST /v1/reward"]),
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)), max_size=4),
    body=st.sampled_from([b"", b"{}", json.dumps({"observation": OBS}).encode()]),
)
@example(request_line=b"GET /healthz", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")], body=b"")
@example(request_line=b"POST /v1/act", headers=[("Transfer-Encoding", "chunked")], body=b"{}")
def test_never_more_responses_than_requests_whatever_the_headers(impatient, request_line, headers, body) -> None:
    """A fuzzed request then a plain one on the same connection: one answer each (or the connection
    closed after the first), never a second answer to the fuzzed one, never a 5xx."""
    if not body:  # a length with no body would take the next request's bytes as its body: two garbled requests
        headers = [(n, v) for n, v in headers if n != "Content-Length"]
    head = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
    if body:  # framed, so the body is not read as a second request
        head += b"Content-Length: %d\r\n" % len(body)
    reply = _raw(impatient.port, request_line + b" HTTP/1.1\r\n" + head + b"\r\n" + body + SENTINEL)
    statuses = re.findall(rb"HTTP/1\.1 ([2-5]\d\d) [A-Za-z]", reply)  # final answers (not 100 Continue)
    assert 1 <= len(statuses) <= 2, reply
    assert all(s < b"500" for s in statuses), reply
    if len(statuses) == 2:  # the second answer is the sentinel's, not another one to the fuzzed request
        assert statuses[1] == b"200" and reply.endswith(b'{"status":"ok"}'), reply
