#!/usr/bin/env python3
"""Thin fault-injecting HTTP proxy in front of moto (stdlib only, threaded).

Every request is forwarded unchanged to --target unless a fault rule for its API action
still has calls left; then the proxy answers the fault itself and moto never sees the call.

Fault spec (--faults, or env BACKPLAN_FAULTS / FAULTS), comma separated rules:

    ACTION:KIND:COUNT      e.g.  CreateImage:throttle:2,DescribeImages:500:1

  ACTION  EC2 Query API action (the `Action=` form/query parameter), or the operation part
          of an `X-Amz-Target` header for JSON protocols; `*` matches any action.
  KIND    throttle  -> HTTP 503, EC2 error XML <Code>RequestLimitExceeded</Code>
          denied    -> HTTP 403, <Code>UnauthorizedOperation</Code> (IAM does not allow it)
          pass      -> forwarded unchanged (but counted): lets the first calls through
          500       -> HTTP 500, <Code>InternalError</Code>
          503       -> HTTP 503, <Code>Unavailable</Code>
          NNN       -> any other HTTP status NNN, <Code>InternalError</Code>
          reset     -> close the connection without answering (connection error)
  COUNT   how many matching calls get the fault (default 1; `*` = every call).

Rules for the same action are consumed in the order given.  Calls are counted per proxy
process (so one proxy = one test's fault budget, or reset it at runtime):

  GET  /__faults   -> JSON: remaining rules and per-action hit counters
  POST /__faults   -> body is a new spec (text); replaces rules and resets counters
  GET  /__health   -> 200 "ok"

--drop-header NAME forwards every request without that header (an S3-compatible server that
ignores conditional writes looks like this).

Request bodies are read fully before forwarding (fine for EC2 Query API sizes); send
S3 traffic to its own endpoint, not through this proxy.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Set from --drop-header: headers never forwarded (lower case).
DROPPED_HEADERS = set()

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class Rule:
    def __init__(self, action, kind, count):
        self.action = action
        self.kind = kind
        self.remaining = count  # None = unlimited

    def as_dict(self):
        return {"action": self.action, "kind": self.kind, "remaining": self.remaining}


KINDS = ("throttle", "denied", "reset", "pass")


def parse_spec(spec):
    rules = []
    for raw in (spec or "").replace(";", ",").split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"bad fault rule {raw!r} (want ACTION:KIND[:COUNT])")
        action, kind = parts[0], parts[1].lower()
        if kind not in KINDS and not (kind.isdigit() and 100 <= int(kind) <= 599):
            raise ValueError(f"bad fault kind {kind!r} in {raw!r} ({', '.join(KINDS)} or an HTTP status)")
        count_raw = parts[2] if len(parts) == 3 else "1"
        if count_raw == "*":
            count = None
        elif count_raw.isdigit():
            count = int(count_raw)
        else:
            raise ValueError(f"bad fault count {count_raw!r} in {raw!r}")
        rules.append(Rule(action, kind, count))
    return rules


class FaultState:
    def __init__(self, rules):
        self.lock = threading.Lock()
        self.rules = rules
        self.seen = {}      # action -> calls seen
        self.injected = {}  # action -> faults injected

    def replace(self, rules):
        with self.lock:
            self.rules = rules
            self.seen = {}
            self.injected = {}

    def take(self, action):
        """Count the call; return the Rule to apply, or None to forward."""
        with self.lock:
            self.seen[action] = self.seen.get(action, 0) + 1
            for rule in self.rules:
                if rule.action not in (action, "*"):
                    continue
                if rule.remaining is None or rule.remaining > 0:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    if rule.kind != "pass":
                        self.injected[action] = self.injected.get(action, 0) + 1
                    return rule
            return None

    def snapshot(self):
        with self.lock:
            return {
                "rules": [r.as_dict() for r in self.rules],
                "seen": dict(self.seen),
                "injected": dict(self.injected),
            }


def ec2_error_xml(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def action_of(method, path, headers, body):
    target = headers.get("X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    query = urllib.parse.urlsplit(path).query
    params = urllib.parse.parse_qs(query)
    ctype = headers.get("Content-Type", "")
    if body and "application/x-www-form-urlencoded" in ctype:
        try:
            params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
        except Exception:
            pass
    values = params.get("Action")
    return values[0] if values else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "backplan-fault-proxy/1"

    # quieter, one line per request on stderr
    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fault_proxy: %s\n" % (fmt % args))

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status, body, ctype="text/xml;charset=UTF-8", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _control(self, body):
        state = self.server.faults
        if self.path.startswith("/__health"):
            return self._send(200, b"ok\n", "text/plain")
        if self.command == "POST":
            try:
                state.replace(parse_spec(body.decode()))
            except ValueError as exc:
                return self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
        return self._send(200, json.dumps(state.snapshot()).encode(), "application/json")

    def _handle(self):
        body = self._read_body()
        if self.path.startswith("/__faults") or self.path.startswith("/__health"):
            return self._control(body)
        action = action_of(self.command, self.path, self.headers, body)
        rule = self.server.faults.take(action) if action else None
        if rule is not None and rule.kind == "pass":
            rule = None
        if rule is not None:
            self.log_message("inject %s -> %s", action, rule.kind)
            if rule.kind == "reset":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if rule.kind == "throttle":
                return self._send(503, ec2_error_xml("RequestLimitExceeded", "Request limit exceeded."))
            if rule.kind == "denied":
                return self._send(
                    403,
                    ec2_error_xml(
                        "UnauthorizedOperation",
                        "You are not authorized to perform this operation. (injected by backplan's fault proxy)",
                    ),
                )
            status = int(rule.kind)
            code = "Unavailable" if status == 503 else "InternalError"
            message = (
                "The service is unavailable. Please try again shortly."
                if status == 503
                else "An internal error has occurred."
            )
            return self._send(status, ec2_error_xml(code, message))
        self._forward(body)

    def _forward(self, body):
        target = self.server.target
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=self.server.upstream_timeout)
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in DROPPED_HEADERS
        }
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            conn.close()
            return self._send(502, ec2_error_xml("BadGateway", f"fault_proxy: upstream error: {exc}"))
        conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    parser = argparse.ArgumentParser(description="fault-injecting proxy for moto")
    parser.add_argument("--target", required=True, help="upstream base URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--port-file")
    parser.add_argument("--faults", default=None, help="fault spec (default: $BACKPLAN_FAULTS or $FAULTS)")
    parser.add_argument("--upstream-timeout", type=float, default=120.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--drop-header",
        action="append",
        default=[],
        help="forward requests without this header (repeatable): e.g. If-None-Match, to stand in "
        "for an S3 server that ignores conditional writes",
    )
    parser.add_argument("--tag", help="ignored; lets the caller mark the command line (PID checks)")
    args = parser.parse_args(argv)
    DROPPED_HEADERS.update(h.lower() for h in args.drop_header)

    spec = args.faults if args.faults is not None else os.environ.get("BACKPLAN_FAULTS", os.environ.get("FAULTS", ""))
    try:
        rules = parse_spec(spec)
    except ValueError as exc:
        sys.exit(f"fault_proxy: {exc}")

    server = Server((args.host, args.port), Handler)
    server.target = urllib.parse.urlsplit(args.target)
    server.faults = FaultState(rules)
    server.verbose = args.verbose
    server.upstream_timeout = args.upstream_timeout

    def _stop(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    port = server.server_address[1]
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(
        f"fault_proxy: http://{args.host}:{port} -> {args.target} faults={json.dumps(server.faults.snapshot()['rules'])}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
