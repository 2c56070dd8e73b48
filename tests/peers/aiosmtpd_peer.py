#!/usr/bin/env python3
"""An SMTP peer for the end-to-end tests, built on aiosmtpd (a server nobody here wrote).

It accepts mail on 127.0.0.1:PORT and appends one JSON line per accepted message to --log:
{"message_id": "<...>", "rcpts": [...], "tls": true|false}. Options make it misbehave the
way real MX hosts do:

  --rcpt-fail N --rcpt-reply "451 4.3.0 try later"   answer the first N RCPT commands with that reply
  --tls-cert leaf.pem --tls-key leaf.key             offer STARTTLS with this certificate

It prints "ready" on stdout once it listens, and runs until killed.
"""

import argparse
import email.parser
import json
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, log_path, rcpt_fail, rcpt_reply):
        self.log_path = log_path
        self.rcpt_fail = rcpt_fail
        self.rcpt_reply = rcpt_reply
        self.rcpts_seen = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpts_seen += 1
            fail = self.rcpts_seen <= self.rcpt_fail
        if fail:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        headers = email.parser.BytesHeaderParser().parsebytes(content)
        line = json.dumps(
            {
                "message_id": (headers.get("Message-ID") or "").strip(),
                "rcpts": list(envelope.rcpt_tos),
                "tls": session.ssl is not None,
            }
        )
        with self.lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        return "250 2.0.0 OK queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--rcpt-fail", type=int, default=0)
    p.add_argument("--rcpt-reply", default="451 4.3.0 Temporary failure, try again later")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    a = p.parse_args()

    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        kwargs.update(tls_context=ctx, require_starttls=False)
    handler = Handler(a.log, a.rcpt_fail, a.rcpt_reply)
    # The tests' messages are small; SMTPUTF8 so that non-ASCII recipients can be accepted.
    ctl = Controller(
        handler, hostname="127.0.0.1", port=a.port, enable_SMTPUTF8=True, **kwargs
    )
    ctl.start()
    print("ready", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    ctl.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
