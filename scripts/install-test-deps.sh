#!/usr/bin/env bash
# Installs the real peers the end-to-end tests talk to. Idempotent; needs root (or sudo)
# for apt. Debian packages: Postfix (for smtp-sink/smtp-source; the service need not run),
# dnsmasq (MX/TXT records on a loopback port), swaks, curl. Python packages: aiosmtpd
# (per-recipient answers, STARTTLS), standardwebhooks (verifies our webhooks), dkimpy with
# PyNaCl (verifies our DKIM signatures; PyNaCl for ed25519-sha256), prometheus_client
# (parses /metrics), schemathesis (checks the API against openapi.yaml).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need_apt+=(postfix)
[ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq)
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
# swaks --tls needs Net::SSLeay and IO::Socket::SSL.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need_apt+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v kill >/dev/null 2>&1 || need_apt+=(procps)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The test suite starts its own dnsmasq on a high port; the packaged service must not
# hold port 53 or answer for us.
$SUDO systemctl stop dnsmasq >/dev/null 2>&1 || true

PIP_PKGS=(aiosmtpd standardwebhooks dkimpy pynacl prometheus-client schemathesis)
if ! python3 -c "import aiosmtpd, standardwebhooks, dkim, nacl, prometheus_client, schemathesis" >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check "${PIP_PKGS[@]}"
fi
echo "test dependencies ready"
