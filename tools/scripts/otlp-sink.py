#!/usr/bin/env python3
"""otlp-sink.py — a minimal OTLP/HTTP trace receiver for the load scripts: it answers `200`
(an empty `ExportTraceServiceResponse`) to every `POST /v1/traces` and counts what arrived,
so that a run can say how many spans reached the collector against how many streams it ran.

    tools/scripts/otlp-sink.py [--listen 127.0.0.1:0]

prints `listening on http://ADDR` (the line load-common.sh's `start_logged` waits for), then
serves:

    POST /v1/traces   protobuf (`application/x-protobuf`, gzip when Content-Encoding says
                      so): the request's ExportTraceServiceRequest is walked with a minimal
                      protobuf reader (resource_spans = 1 → scope_spans = 2 → spans = 2) and
                      its spans counted; a body that does not parse is counted as malformed
                      and still answered 200. JSON bodies are counted as requests only.
    GET /stats        {"requests", "bytes", "spans", "malformed"} as JSON.

It is a measuring aid, not a collector: it keeps no span. Its own CPU is its own (a separate
process, never in the gateway's figures). Standard library only; not run by CI.

With the gateway (BENCHMARKS.md, issue 25):

    tools/scripts/otlp-sink.py > /tmp/sink.log 2>&1 &
    GATEWAY_FLAGS="--otlp-endpoint $(sed -n 's/^listening on //p' /tmp/sink.log)" \\
      tools/scripts/instructions.sh
    curl -s "$(sed -n 's/^listening on //p' /tmp/sink.log)/stats"
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The largest request body read (a batch of 512 spans is well under a megabyte).
MAX_BODY = 64 * 1024 * 1024


class Malformed(Exception):
    """Not the protobuf wire format this reader expects."""


def varint(data, pos):
    """A base-128 varint at `pos`: (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(data):
    """(field number, wire type, value) of each field of one message; a length-delimited
    value is a memoryview of its bytes, the others are skipped as None."""
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = varint(data, pos)
            yield number, wire, None
        elif wire == 1:
            pos += 8
            yield number, wire, None
        elif wire == 2:
            length, pos = varint(data, pos)
            if pos + length > len(data):
                raise Malformed("truncated field")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, None
        else:
            raise Malformed(f"wire type {wire}")
    if pos != len(data):
        raise Malformed("truncated fixed field")


def count_spans(body):
    """The spans of an ExportTraceServiceRequest: resource_spans (1) → scope_spans (2) →
    spans (2)."""
    spans = 0
    for number, wire, resource in fields(memoryview(body)):
        if number != 1 or wire != 2:
            continue
        for number, wire, scope in fields(resource):
            if number != 2 or wire != 2:
                continue
            for number, wire, _ in fields(scope):
                if number == 2 and wire == 2:
                    spans += 1
    return spans


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.malformed = 0

    def json(self):
        with self.lock:
            return json.dumps(
                {
                    "requests": self.requests,
                    "bytes": self.bytes,
                    "spans": self.spans,
                    "malformed": self.malformed,
                }
            )


COUNTS = Counts()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", content_type="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            self.answer(200, COUNTS.json().encode(), "application/json")
        else:
            self.answer(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.split("?")[0] != "/v1/traces" or not 0 <= length <= MAX_BODY:
            self.close_connection = True
            self.answer(404)
            return
        body = self.rfile.read(length)
        spans, malformed = 0, 0
        try:
            data = body
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                data = gzip.decompress(body)
            if "json" not in self.headers.get("Content-Type", ""):
                spans = count_spans(data)
        except (Malformed, OSError, EOFError):
            malformed = 1
        with COUNTS.lock:
            COUNTS.requests += 1
            COUNTS.bytes += length
            COUNTS.spans += spans
            COUNTS.malformed += malformed
        self.answer(200)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(COUNTS.json(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
