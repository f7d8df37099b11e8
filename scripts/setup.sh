#!/usr/bin/env bash
# Set up a fresh machine for this project: system tools (as root, when missing) and
# the Python environment in .venv. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the integration and e2e tests drive for real.
APT_PACKAGES=(
  openssl openssh-server openssh-client sudo passwd login
  fdisk parted e2fsprogs xfsprogs btrfs-progs ntfs-3g dosfstools util-linux cryptsetup-bin
  iproute2 iptables nftables dnsmasq-base isc-dhcp-client
  mmdebstrap xorriso graphviz chromium chromium-driver
  waagent  # the published agent, as the parity tests' reference; never started here
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  # waagent conflicts with network-manager: apt would remove it to install waagent.
  if [[ " ${missing[*]} " == *" waagent "* ]] &&
     dpkg-query -W -f='${Status}' network-manager 2>/dev/null | grep -q "install ok installed"; then
    echo "setup: not installing waagent (it would remove network-manager): parity tests skip"
    kept=()
    for pkg in "${missing[@]}"; do [ "$pkg" = waagent ] || kept+=("$pkg"); done
    missing=("${kept[@]}")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    # Packages install their files only: no service of the host is started.
    policy=/usr/sbin/policy-rc.d
    made_policy=no
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=yes
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # waagent's postinst enables walinuxagent.service (and its SysV links) for the next
    # boot; on this host it is only a reference, so it stays disabled.
    if [[ " ${missing[*]} " == *" waagent "* ]]; then
      systemctl disable --quiet walinuxagent.service ||
        echo "setup: could not disable walinuxagent.service: run systemctl disable walinuxagent" >&2
    fi
    [ "$made_policy" = yes ] && rm -f "$policy"
  fi
elif [ "$(id -u)" != 0 ]; then
  echo "setup: not root: system tools are not installed; root-only tests will skip"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
# Byte-compile the agent as an installed package would be (an editable install is not,
# and with PYTHONDONTWRITEBYTECODE set every start would compile it again).
.venv/bin/python -m compileall -q conf facts wire system graph tasks fabric dodo.py >/dev/null
