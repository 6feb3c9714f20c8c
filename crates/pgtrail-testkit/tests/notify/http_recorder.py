"""A local HTTP server that records every request, for pgtrail's notifier tests.

Usage: http_recorder.py OUT.jsonl [--webhook-secret whsec_...] [--fail PATH=N ...] [--hang PATH ...]

Prints its port on the first line of stdout, then serves until killed. Each request
becomes one JSON line in OUT.jsonl: method, path, query, headers (lower-case names), body.
Requests with Standard Webhooks headers are verified with the official `standardwebhooks`
library, and the line says whether the signature verified ("webhook_verified").

Answers follow the real services: PagerDuty's 202 {"status": "success", ...}, Opsgenie's
202 {"result": "Request will be processed", ...}, Slack's 200 "ok", 204 for others.
--fail PATH=N answers the first N requests to PATH with 503 and Retry-After: 0;
--hang PATH never answers requests to PATH.
"""

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from standardwebhooks.webhooks import Webhook

out_path = sys.argv[1]
secret = None
fail = {}
hang = set()
args = sys.argv[2:]
while args:
    flag = args.pop(0)
    if flag == "--webhook-secret":
        secret = args.pop(0)
    elif flag == "--fail":
        path, count = args.pop(0).split("=")
        fail[path] = int(count)
    elif flag == "--hang":
        hang.add(args.pop(0))
    else:
        raise SystemExit(f"unknown flag {flag}")

lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        received = time.time()
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = {
            "received": received,
            "method": self.command,
            "path": split.path,
            "path_decoded": unquote(split.path),
            "query": split.query,
            "headers": headers,
            "body": body.decode("utf-8", "replace"),
        }
        if "webhook-signature" in headers and secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                record["webhook_verified"] = True
            except Exception as e:  # the library's verification error
                record["webhook_verified"] = f"{type(e).__name__}: {e}"
        with lock:
            remaining = fail.get(split.path, 0)
            if remaining > 0:
                fail[split.path] = remaining - 1
            record["answered"] = 503 if remaining > 0 else None
            with open(out_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if split.path in hang:
            time.sleep(3600)
            return
        if remaining > 0:
            self.answer(503, b"try again", "text/plain", {"Retry-After": "0"})
        elif split.path.startswith("/pagerduty"):
            dedup = json.loads(body).get("dedup_key", "")
            reply = {"status": "success", "message": "Event processed", "dedup_key": dedup}
            self.answer(202, json.dumps(reply).encode(), "application/json")
        elif split.path.startswith("/opsgenie"):
            reply = {"result": "Request will be processed", "took": 0.01, "requestId": str(uuid.uuid4())}
            self.answer(202, json.dumps(reply).encode(), "application/json")
        elif split.path.startswith("/slack"):
            self.answer(200, b"ok", "text/html")
        else:
            self.answer(204, b"", None)

    def answer(self, status, body, content_type, extra=None):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
