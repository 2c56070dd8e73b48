#!/usr/bin/env python3
"""A real webhook receiver for the end-to-end tests.

Every POST is verified with the `standardwebhooks` package (the reference Python
implementation of the Standard Webhooks specification), once per secret listed in the
secrets file (one `whsec_...` per line, re-read on every request so the test can change it
while the receiver runs). A `?secret=whsec_...` query parameter replaces the file's
secrets for that request (the test uses it to show that a wrong secret is refused).

Each request appends one JSON line to the log file:
  {"path", "webhook_id", "timestamp", "signature", "body", "status",
   "verified": [true|false per secret], "errors": [...], "ok": any(verified)}
and is answered 204 when at least one secret verifies it, 400 when none does, or 503 for
the first --fail-first requests (to make the sender retry).

Prints "listening <port>" once it accepts connections.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook

LOCK = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secrets", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    args = ap.parse_args()
    state = {"failed": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet: the JSON log is the record
            pass

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            query = parse_qs(urlsplit(self.path).query)
            if "secret" in query:
                secrets = query["secret"]
            else:
                try:
                    with open(args.secrets) as f:
                        secrets = [l.strip() for l in f if l.strip()]
                except OSError:
                    secrets = []
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified, errors = [], []
            for s in secrets:
                try:
                    Webhook(s).verify(body, headers)
                    verified.append(True)
                    errors.append(None)
                except Exception as e:  # the library raises WebhookVerificationError
                    verified.append(False)
                    errors.append(f"{type(e).__name__}: {e}")
            ok = any(verified)
            with LOCK:
                if ok and state["failed"] < args.fail_first:
                    state["failed"] += 1
                    status = 503
                else:
                    status = 204 if ok else 400
                rec = {
                    "path": self.path,
                    "webhook_id": headers.get("webhook-id"),
                    "timestamp": headers.get("webhook-timestamp"),
                    "signature": headers.get("webhook-signature"),
                    "body": body.decode("utf-8", "replace"),
                    "status": status,
                    "verified": verified,
                    "errors": errors,
                    "ok": ok,
                }
                with open(args.log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
