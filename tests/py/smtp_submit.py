"""Submits one message over SMTP with smtplib: EHLO, AUTH (PLAIN or LOGIN), MAIL FROM
with SMTPUTF8 and BODY=8BITMIME, RCPT TO, DATA (smtplib dot-stuffs the bytes).

usage: smtp_submit.py HOST PORT USER PASSWORD FROM TO MESSAGE_FILE
prints one JSON object: {"ehlo": [..extensions..], "auth": code, "mail": code,
"rcpt": code, "data": [code, text]}; exits 1 if a step other than DATA fails.
"""
import json
import smtplib
import sys
import time


def main():
    host, port, user, password, sender, rcpt, path = sys.argv[1:8]
    with open(path, "rb") as f:
        msg = f.read()
    # The listener is up once the daemon says it started; retry briefly anyway.
    end = time.monotonic() + 10
    while True:
        try:
            s = smtplib.SMTP(host, int(port), timeout=30)
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
    out = {}
    code, _ = s.ehlo("client.test")
    if code != 250:
        sys.exit(f"EHLO: {code}")
    out["ehlo"] = sorted(s.esmtp_features)
    code, _ = s.login(user, password)
    out["auth"] = code
    code, text = s.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"])
    out["mail"] = code
    if code != 250:
        sys.exit(f"MAIL FROM: {code} {text!r}")
    code, text = s.rcpt(rcpt)
    out["rcpt"] = code
    if code not in (250, 251):
        sys.exit(f"RCPT TO: {code} {text!r}")
    code, text = s.data(msg)
    out["data"] = [code, text.decode("utf-8", "replace")]
    s.quit()
    print(json.dumps(out))


main()
