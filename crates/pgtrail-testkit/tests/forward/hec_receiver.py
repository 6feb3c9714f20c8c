"""A local Splunk HTTP Event Collector for pgtrail's forwarder tests: the event and the
acknowledgement endpoints, with the answers and error codes Splunk documents.

Usage: hec_receiver.py OUT.jsonl --token TOKEN [--ack] [--fail-first N]
                       [--ack-after-polls K] [--withhold-acks]

Prints its port on the first line of stdout, then serves until killed.

POST /services/collector/event: `Authorization: Splunk TOKEN` (else 401 code 2 or 403
code 4); with --ack the request channel (X-Splunk-Request-Channel or ?channel=) is
required (else 400 code 10). The body must be JSON event objects one after the other, each
with a non-empty "event", a numeric "time", and string "host", "source", "sourcetype"
(and "index" if present), "fields" a flat object of strings (else 400 code 6 with
invalid-event-number). --fail-first N answers the first N event requests with 503 code 9
(server busy). Accepted: {"text": "Success", "code": 0} and with --ack an "ackId".

POST /services/collector/ack: {"acks": [ID, ...]} -> {"acks": {"ID": true|false}}; an
ID is acknowledged on its K-th poll (--ack-after-polls, default 1), never with
--withhold-acks, and only on the channel it was given on.

OUT.jsonl gets one line per accepted batch ({"kind": "batch", "ack_id", "channel",
"events": [...]}) and per acknowledgement given ({"kind": "acked", "ack_id"}).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

out_path = sys.argv[1]
args = sys.argv[2:]
token = None
ack = False
fail_first = 0
ack_after = 1
withhold = False
while args:
    flag = args.pop(0)
    if flag == "--token":
        token = args.pop(0)
    elif flag == "--ack":
        ack = True
    elif flag == "--fail-first":
        fail_first = int(args.pop(0))
    elif flag == "--ack-after-polls":
        ack_after = int(args.pop(0))
    elif flag == "--withhold-acks":
        withhold = True
    else:
        raise SystemExit(f"unknown flag {flag}")

lock = threading.Lock()
state = {"next_ack": 0, "event_requests": 0, "acks": {}}


def record(line):
    with lock, open(out_path, "a") as out:
        out.write(json.dumps(line) + "\n")


def parse_events(body):
    decoder = json.JSONDecoder()
    text = body.decode("utf-8")
    events, i = [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if i == len(text):
            return events
        obj, i = decoder.raw_decode(text, i)
        events.append(obj)


def valid(event):
    if not isinstance(event, dict) or not event.get("event"):
        return False
    if not isinstance(event.get("time"), (int, float)):
        return False
    for key in ("host", "source", "sourcetype"):
        if not isinstance(event.get(key), str) or not event[key]:
            return False
    if "index" in event and not isinstance(event["index"], str):
        return False
    fields = event.get("fields", {})
    return isinstance(fields, dict) and all(isinstance(v, str) for v in fields.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        split = urlsplit(self.path)
        auth = self.headers.get("authorization")
        if auth is None:
            return self.answer(401, {"text": "Token is required", "code": 2})
        if auth != f"Splunk {token}":
            return self.answer(403, {"text": "Invalid token", "code": 4})
        channel = self.headers.get("x-splunk-request-channel") or parse_qs(split.query).get("channel", [None])[0]
        if split.path == "/services/collector/event":
            return self.event(body, channel)
        if split.path == "/services/collector/ack":
            return self.acks(body, channel)
        return self.answer(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def event(self, body, channel):
        if ack and not channel:
            return self.answer(400, {"text": "Data channel is missing", "code": 10})
        with lock:
            state["event_requests"] += 1
            busy = state["event_requests"] <= fail_first
        if busy:
            return self.answer(503, {"text": "Server is busy", "code": 9})
        try:
            events = parse_events(body)
        except ValueError:
            return self.answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0})
        for number, event in enumerate(events):
            if not valid(event):
                return self.answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": number})
        if not events:
            return self.answer(400, {"text": "No data", "code": 5})
        if not ack:
            record({"kind": "batch", "ack_id": None, "channel": channel, "events": events})
            return self.answer(200, {"text": "Success", "code": 0})
        with lock:
            ack_id = state["next_ack"]
            state["next_ack"] += 1
            state["acks"][ack_id] = {"channel": channel, "polls": 0}
        record({"kind": "batch", "ack_id": ack_id, "channel": channel, "events": events})
        return self.answer(200, {"text": "Success", "code": 0, "ackId": ack_id})

    def acks(self, body, channel):
        if not channel:
            return self.answer(400, {"text": "Data channel is missing", "code": 10})
        try:
            ids = json.loads(body)["acks"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"text": "Invalid data format", "code": 6})
        result = {}
        for ack_id in ids:
            with lock:
                entry = state["acks"].get(ack_id)
                done = False
                if entry is not None and entry["channel"] == channel and not withhold:
                    entry["polls"] += 1
                    done = entry["polls"] >= ack_after
            if done:
                record({"kind": "acked", "ack_id": ack_id})
            result[str(ack_id)] = done
        return self.answer(200, {"acks": result})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
