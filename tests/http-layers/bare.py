#!/usr/bin/env python3
"""The fixture routes of docs/http.md ("The drop-in layer") with NO idempotency layer.

run.py --self-test runs every vector against this server to prove that the vectors can fail:
only the vectors that hold without a layer may pass here. Python's stdlib only: a threading
http.server, the counter and the rows of /tx/rows in memory, no database.

    python3 tests/http-layers/bare.py [--port N]   (0, the default: any free port)

The first line on stdout is `listening on 127.0.0.1:PORT`.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.rows = []

    def invoked(self):
        with self.lock:
            self.count += 1


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bare-fixture"

    def log_message(self, format, *args):  # quiet: the runner prints what matters
        pass

    # --- plumbing ---------------------------------------------------------------------------
    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status, body=b"", content_type=None, extra=()):
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def answer_json(self, status, value, extra=()):
        self.answer(status, json.dumps(value).encode(), "application/json", extra)

    def dispatch(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        body = self.read_body()
        try:
            self.route(self.command, url.path, query, body)
        except Exception:  # the framework's 500
            self.answer(500, b"internal error", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    # --- the routes -------------------------------------------------------------------------
    def route(self, method, path, query, body):
        def arg(name, default):
            return int(query.get(name, [default])[0])

        if method in ("POST", "PATCH", "PUT") and path == "/echo":
            STATE.invoked()
            self.answer(201, body, self.headers.get("Content-Type") or "application/octet-stream")
        elif method == "POST" and path.startswith("/status/"):
            code = int(path[len("/status/"):])
            STATE.invoked()
            self.answer(code, f"status:{code}".encode(), "text/plain")
        elif method == "POST" and path == "/slow":
            ms = arg("ms", 0)
            time.sleep(ms / 1000)
            STATE.invoked()
            self.answer(200, f"slept:{ms}".encode(), "text/plain")
        elif method == "POST" and path == "/large":
            n = arg("bytes", 0)
            STATE.invoked()
            self.answer(200, b"x" * n, "application/octet-stream")
        elif method == "POST" and path == "/headers":
            STATE.invoked()
            self.answer_json(201, {"ok": True}, [
                ("Location", "/things/1"), ("Set-Cookie", "s=1"),
                ("X-Replayed-Too", "yes"), ("X-Not-Stored", "no")])
        elif method == "POST" and path == "/throw":
            STATE.invoked()
            raise RuntimeError("the /throw route raises")
        elif method == "POST" and path == "/stream":
            n = arg("chunks", 1)
            STATE.invoked()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(n):
                chunk = b"chunk\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif method == "POST" and path == "/tx/rows":
            status = arg("status", 201)
            STATE.invoked()
            with STATE.lock:
                STATE.rows.append(time.time())
            self.answer_json(status, {"inserted": True})
        elif method == "GET" and path == "/rows":
            with STATE.lock:
                n = len(STATE.rows)
            self.answer_json(200, {"count": n})
        elif method == "GET" and path == "/counter":
            with STATE.lock:
                n = STATE.count
            self.answer_json(200, {"count": n})
        elif method == "POST" and path == "/reset":
            with STATE.lock:
                STATE.count = 0
                STATE.rows.clear()
            self.answer(204)
        else:
            self.answer(404, b"no such route", "text/plain")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
