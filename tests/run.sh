#!/usr/bin/env bash
# The test command of the README: installs what the tests need if it is missing (tshark,
# iperf3, tcpreplay, tcpdump, iproute2 (ip, tc), kubectl, openssl, unshare and setpriv, python3,
# logrotate, promtool from
# `prometheus`, python3-venv from Debian; botocore and aioquic from PyPI into virtualenvs), then runs
# every test target.
# Needs root (network namespaces, raw sockets, packet capture). Extra arguments go to cargo test;
# the `test-hooks` feature builds the fault hooks some tests inject (never in a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool_package in tshark:tshark iperf3:iperf3 tcpreplay:tcpreplay tcpdump:tcpdump ip:iproute2 \
  kubectl:kubernetes-client openssl:openssl unshare:util-linux setpriv:util-linux \
  logrotate:logrotate promtool:prometheus tc:iproute2 python3:python3; do
  command -v "${tool_package%%:*}" >/dev/null 2>&1 || missing+=("${tool_package#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages from PyPI, each in its own virtualenv (first run only): `venv NAME VERSION`
# prints the virtualenv's python.
cache="${LABELWALL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labelwall-ci}"
venv() {
  local dir="$cache/$1-$2"
  if ! "$dir/bin/python" -c "import $1" >/dev/null 2>&1; then
    echo "tests/run.sh: installing $1 $2 into $dir" >&2
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$dir"
    mkdir -p "$cache"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$1==$2" >&2
  fi
  echo "$dir/bin/python"
}
# botocore, the independent SigV4 presigner tests/eks_token.rs checks `labelwall eks-token`
# against (what `aws eks get-token` runs).
BOTOCORE_VERSION="1.35.99"
LABELWALL_BOTOCORE_PYTHON="$(venv botocore "$BOTOCORE_VERSION")"
export LABELWALL_BOTOCORE_PYTHON
# aioquic, the real QUIC client and server of tests/e2e_iperf.rs's server-name test.
AIOQUIC_VERSION="1.7.2"
LABELWALL_AIOQUIC_PYTHON="$(venv aioquic "$AIOQUIC_VERSION")"
export LABELWALL_AIOQUIC_PYTHON

cargo test --all-targets --locked --features test-hooks "$@"
