#!/usr/bin/env python3
"""An aiosmtpd SMTP sink that answers chosen replies at chosen stages.

Usage: corpus_sink.py MAPPING.json

MAPPING.json maps a local part to the reply to give and the stage to give it at:

    {"c330": {"stage": "rcpt", "reply": "550 5.7.1 <x@example.org>: ... User unknown"}}

- "mail": the reply to MAIL FROM whose sender's local part is the key;
- "rcpt": the reply to RCPT TO whose recipient's local part is the key;
- "data": the reply to the DATA command (instead of 354) when a recipient of the
  transaction has the key as local part;
- "end_of_data": RCPT is accepted, the reply is given after the message's final dot.

Everything else gets a 250. The sink binds 127.0.0.1 on a free port and prints
`PORT <n>` on stdout once it listens. It exits when its stdin reaches end of file (the
test that started it is gone). Every answer it gives is logged on stderr.
"""

import asyncio
import json
import logging
import os
import sys
import threading

from aiosmtpd.smtp import SMTP, syntax

STAGES = ("mail", "rcpt", "data", "end_of_data")


def local_part(address):
    """`<c1@d.example>` or `c1@d.example` -> `c1`."""
    address = address.strip().strip("<>")
    return address.rsplit("@", 1)[0] if "@" in address else address


def log(msg):
    print(f"[sink] {msg}", file=sys.stderr, flush=True)


class CorpusHandler:
    def __init__(self, mapping):
        self.mapping = mapping

    def reply_for(self, key, stage):
        entry = self.mapping.get(key)
        if entry is not None and entry["stage"] == stage:
            return entry["reply"]
        return None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.reply_for(local_part(address), "mail")
        if reply is not None:
            log(f"MAIL {address} -> {reply}")
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reply_for(local_part(address), "rcpt")
        if reply is not None:
            log(f"RCPT {address} -> {reply}")
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def envelope_reply(self, envelope, stage):
        for rcpt in envelope.rcpt_tos:
            reply = self.reply_for(local_part(rcpt), stage)
            if reply is not None:
                log(f"{stage} {rcpt} -> {reply}")
                return reply
        return None

    async def handle_DATA(self, server, session, envelope):
        reply = self.envelope_reply(envelope, "end_of_data")
        if reply is not None:
            return reply
        return "250 2.0.0 OK: queued"


class CorpusSMTP(SMTP):
    """Answers the DATA command itself for "data" entries (aiosmtpd has no hook there)."""

    @syntax("DATA")
    async def smtp_DATA(self, arg):
        if self.envelope is not None and self.envelope.rcpt_tos:
            reply = self.event_handler.envelope_reply(self.envelope, "data")
            if reply is not None:
                await self.push(reply)
                return
        await super().smtp_DATA(arg)


def load(path):
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    for key, entry in mapping.items():
        if entry.get("stage") not in STAGES:
            raise SystemExit(f"{key}: stage must be one of {STAGES}")
        reply = entry.get("reply", "")
        if len(reply) < 4 or not reply[:3].isdigit() or reply[3] != " " or "\n" in reply:
            raise SystemExit(f"{key}: not a one-line reply: {reply!r}")
    return mapping


def exit_when_orphaned():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)


async def main(mapping):
    handler = CorpusHandler(mapping)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CorpusSMTP(handler, hostname="sink.test", ident="corpus-sink"),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: corpus_sink.py MAPPING.json")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    entries = load(sys.argv[1])
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    asyncio.run(main(entries))
