"""Verifies every DKIM-Signature of a message with dkimpy, the public keys fetched from a
DNS server on a loopback port (dnsmasq in the tests).

usage: dkim_verify.py DNS_PORT MESSAGE_FILE
prints one JSON object: {"signatures": [{"a", "s", "d", "h", "ok"}]}
"""
import json
import sys

import dkim
import dkim.util
import dns.message
import dns.query
import dns.rdatatype


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        msg = f.read()

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
        for rrset in r.answer:
            for rd in rrset:
                if rd.rdtype == dns.rdatatype.TXT:
                    return b"".join(rd.strings)
        return None

    d = dkim.DKIM(msg)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    out = []
    for idx, raw in enumerate(sigs):
        tags = dkim.util.parse_tag_value(raw)
        try:
            ok = bool(d.verify(idx=idx, dnsfunc=dnsfunc))
        except Exception as e:  # a verification error is a failure, reported
            ok = False
            print(f"signature {idx}: {e}", file=sys.stderr)
        out.append(
            {
                "a": tags.get(b"a", b"").decode(),
                "s": tags.get(b"s", b"").decode(),
                "d": tags.get(b"d", b"").decode(),
                "h": "".join(tags.get(b"h", b"").decode().split()),
                "c": tags.get(b"c", b"").decode(),
                "ok": ok,
            }
        )
    print(json.dumps({"signatures": out}))


main()
