#!/usr/bin/env bash
# Install everything VCL needs on a fresh Debian 12 machine, idempotently:
#   - the Debian packages listed in requirements/apt-*.txt (only the missing ones; apt-get update only then),
#   - a virtualenv in .venv with the vcl package (editable) and its pinned dependencies.
# Usage: scripts/setup.sh            (run as root, or with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh installs Debian packages: run it as root (sudo scripts/setup.sh)" >&2
    exit 1
fi

mapfile -t wanted < <(cat requirements/apt-*.txt | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$' | sort -u)
missing=()
for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [ "${status:0:2}" = "ii" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages whose service the tests run themselves (slapd, dhcpd, PostgreSQL) must not start serving on the
    # host when they are installed: a policy-rc.d that forbids every start, for the install only.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
    fi
    trap '[ -z "$guard" ] || rm -f "$guard"' EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -z "$guard" ] || rm -f "$guard"
    guard=""
fi

py=${VCL_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($py --version)"
    "$py" -m venv .venv
fi
stamp=.venv/.vcl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ lab/pyproject.toml -nt "$stamp" ]; then
    log "installing the vcl package, the simulated lab (lab/) and their pinned dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    # One pip call: the lab's vcl-sched requirement resolves to this checkout, never to an index.
    .venv/bin/python -m pip install -q -e '.[postgresql,libvirt,dev,lab]' -e ./lab
    touch "$stamp"
fi
log "ready: $(.venv/bin/vcl --version 2>/dev/null || echo 'vcl installed')"
