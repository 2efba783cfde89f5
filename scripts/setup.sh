#!/usr/bin/env bash
# One-time set-up on a fresh machine: the real Xen clients used by the tests
# (xenstore-utils, xen-utils-4.17, built through the C reference runner in
# ../shared/peers when it is there), and this package with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=../shared/peers
if [ -x "$peers/reference-xenstored" ]; then
  "$peers/reference-xenstored" install
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    xenstore-utils xen-utils-4.17 >/dev/null
fi
python3 -m pip install -q -e '.[test]'
