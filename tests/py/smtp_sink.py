#!/usr/bin/env python3
"""An aiosmtpd SMTP sink answering per recipient, for the end-to-end tests.

The local part's prefix decides the RCPT reply:
  unknown...  550 5.1.1 user unknown (a hard bounce that suppresses)
  blocked...  550 5.7.1 policy rejection (a bounce that must not suppress)
  full...     552 5.2.2 mailbox full (a bounce that must not suppress)
  later...    450 4.2.1 try again later (deferred)
  anything else 250.
Each RCPT is printed as `RCPT <address> <code>` and each accepted message as
`DATA <n recipients>`, one line each, flushed, so the test can check what the server saw.
Prints `listening <port>` once it accepts connections.
"""

import argparse
import asyncio
import sys
import time

from aiosmtpd.controller import Controller

REPLIES = [
    ("unknown", "550 5.1.1 <{a}>: Recipient address rejected: User unknown in virtual mailbox table"),
    ("blocked", "550 5.7.1 Message rejected due to local policy"),
    ("full", "552 5.2.2 <{a}>: Mailbox full, quota exceeded"),
    ("later", "450 4.2.1 <{a}>: Mailbox temporarily unavailable, try again later"),
]


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        for prefix, reply in REPLIES:
            if local.startswith(prefix):
                reply = reply.format(a=address)
                print(f"RCPT {address} {reply[:3]}", flush=True)
                return reply
        print(f"RCPT {address} 250", flush=True)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        print(f"DATA {len(envelope.rcpt_tos)}", flush=True)
        return "250 2.0.0 queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    controller = Controller(Handler(), hostname="127.0.0.1", port=args.port,
                            server_hostname="sink.test")
    controller.start()
    print(f"listening {args.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
