"""An SMTP sink (aiosmtpd) that stores every message's exact bytes (as received, after
SMTP dot-unstuffing) in DIR/NNNN.eml, written atomically. SMTPUTF8 and 8BITMIME on.

usage: smtp_dump_sink.py PORT DIR        prints "ready" once listening
"""
import itertools
import os
import sys
import time

from aiosmtpd.controller import Controller


class Dump:
    def __init__(self, out):
        self.out = out
        self.n = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.out, f"{next(self.n):04d}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 stored"


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    c = Controller(
        Dump(out),
        hostname="127.0.0.1",
        port=port,
        decode_data=False,
        enable_SMTPUTF8=True,
    )
    c.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        c.stop()


main()
