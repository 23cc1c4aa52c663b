#!/usr/bin/python3
"""A small single-user web app for warren's tests: what a real app does,
controllable. Standard library only (it runs as a user's uid in the
sandbox, with Debian's /usr/bin/python3).

    fixture_app.py (--socket PATH | --port N) [--prefix /user/x/app]

Requests must carry `Authorization: Bearer $FIXTURE_SECRET` (403
otherwise), unless FIXTURE_SECRET is unset (an app with `auth = "none"`). Routes (below the prefix):
    GET  /health        200 "ok"
    GET  /echo...       JSON: method, path, headers, pid, uid
    POST /echo...       JSON: the same, and the body's length and sha256
    GET  /events?n=N    text/event-stream: "tick K" every 100 ms, N times (20)
    GET  /crash         the process exits at once (code 3)
Environment: FIXTURE_START_DELAY (seconds before listening),
FIXTURE_FAIL (print it and exit 2 at once).
"""
import hashlib
import http.server
import json
import os
import socketserver
import sys
import time

secret = os.environ.get("FIXTURE_SECRET", "")
prefix = ""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):
        return "unix" if isinstance(self.client_address, str) else self.client_address[0]

    def log_message(self, fmt, *args):
        sys.stdout.write("request: " + (fmt % args) + "\n")
        sys.stdout.flush()

    def authorized(self):
        if secret and self.headers.get("Authorization") != "Bearer " + secret:
            self.reply(403, b"forbidden\n", "text/plain")
            return False
        return True

    def route(self):
        path = self.path.split("?", 1)[0]
        if prefix and path.startswith(prefix):
            path = path[len(prefix):] or "/"
        return path

    def reply(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def describe(self, extra):
        info = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "pid": os.getpid(),
            "uid": os.getuid(),
        }
        info.update(extra)
        self.reply(200, json.dumps(info).encode(), "application/json")

    def do_GET(self):
        if not self.authorized():
            return
        path = self.route()
        if path == "/health":
            self.reply(200, b"ok\n", "text/plain")
        elif path.startswith("/echo"):
            self.describe({})
        elif path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            count = 20
            for pair in query.split("&"):
                if pair.startswith("n="):
                    count = int(pair[2:])
            for n in range(count):
                self.wfile.write(("data: tick %d\n\n" % n).encode())
                self.wfile.flush()
                time.sleep(0.1)
            self.close_connection = True
        elif path == "/crash":
            sys.stdout.write("crashing as asked\n")
            sys.stdout.flush()
            os._exit(3)
        else:
            self.reply(404, b"not found\n", "text/plain")

    def do_POST(self):
        if not self.authorized():
            return
        length = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self.describe({"length": length - left, "sha256": digest.hexdigest()})


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    global prefix
    args = sys.argv[1:]
    socket_path = port = None
    while args:
        flag = args.pop(0)
        if flag == "--socket":
            socket_path = args.pop(0)
        elif flag == "--port":
            port = int(args.pop(0))
        elif flag == "--prefix":
            prefix = args.pop(0).rstrip("/")
    if os.environ.get("FIXTURE_FAIL"):
        print("fixture: failing as asked: " + os.environ["FIXTURE_FAIL"], flush=True)
        sys.exit(2)
    time.sleep(float(os.environ.get("FIXTURE_START_DELAY", "0")))
    if socket_path:
        server = UnixServer(socket_path, Handler)
    else:
        server = TcpServer(("127.0.0.1", port), Handler)
    print("fixture: listening", flush=True)
    server.serve_forever()


main()
