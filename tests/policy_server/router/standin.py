"""A stand-in policy server for the router's topology tests: real HTTP on loopback, no torch.

Why not ``policy-server serve``: the topology tests run up to six endpoints and restart them; a
torch process each would take most of this machine. The stand-in speaks the part of the API the
router uses and records what reached it:

* ``POST /v1/act`` answers ``{request_id, action: 0, propensity: 1, variant, policy_version,
  endpoint}``; the id is the client's (``request_id`` in the body, plus a signed ``reward_id``) or a
  signed one made with ``policy_server.attribution`` when ``POLICY_SERVER_REWARD_KEY`` is set (as
  the policy server does), else ``NAME-N``;
* ``POST /v1/reward`` accepts a signed id that verifies, or a bare id this process served; 409 for
  a repeated (request_id, event_id); 404 otherwise; the first ``--fail-rewards`` rewards get 503;
* ``GET /received`` lists the accepted reward bodies; ``/readyz``, ``/healthz``, ``/v1/model``.

    python -m tests.policy_server.router.standin --port 0 --name s1 --variant stable
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from policy_server import attribution


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name, self.variant, self.fail_rewards = args.name, args.variant, args.fail_rewards
        keys = attribution.RewardKeys.from_env()
        self.signer = None if keys.generated else attribution.IdSigner(keys, variant=args.variant, policy_version="v")
        self.lock = threading.Lock()
        self.served: set[str] = set()
        self.rewarded: set[tuple[str, Any]] = set()
        self.received: list[dict[str, Any]] = []
        self.n = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms to each answer
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        st = self.state
        if self.path == "/received":
            with st.lock:
                self._send(200, list(st.received))
        elif self.path in ("/readyz", "/healthz"):
            self._send(200, {"status": "ready"})
        elif self.path == "/v1/model":
            self._send(200, {"name": st.name, "variant": st.variant})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/v1/act":
            with st.lock:
                st.n += 1
                now = time.time()
                out: dict[str, Any] = {}
                rid = body.get("request_id")
                if rid is not None:
                    out["reward_id"] = st.signer.bind(rid, now) if st.signer else rid
                elif st.signer is not None:
                    rid = st.signer.generate(now)
                else:
                    rid = f"{st.name}-{st.n}"
                st.served.add(rid)
            self._send(
                200,
                {
                    "request_id": rid,
                    "action": 0,
                    "propensity": 1.0,
                    "variant": st.variant,
                    "policy_version": "v",
                    "endpoint": st.name,
                    **out,
                },
            )
        elif self.path == "/v1/reward":
            self._reward(st, body)
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _reward(self, st: State, body: dict[str, Any]) -> None:
        rid = body.get("request_id")
        with st.lock:
            if st.fail_rewards > 0:
                st.fail_rewards -= 1
                return self._send(503, {"error": "stand-in told to fail"})
            known = rid in st.served
            if not known and st.signer is not None and isinstance(rid, str):
                try:
                    rid = st.signer.verify(rid).request_id
                    known = True
                except attribution.BadRequestId:
                    pass
            if not known:
                return self._send(404, {"error": f"unknown request_id {rid!r}"})
            key = (rid, body.get("event_id"))
            if key in st.rewarded:
                return self._send(409, {"error": "duplicate"})
            st.rewarded.add(key)
            st.received.append(body)
        self._send(202, {"status": "accepted"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", required=True)
    ap.add_argument("--variant", default="stable")
    ap.add_argument("--fail-rewards", type=int, default=0)
    args = ap.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
