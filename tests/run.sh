#!/usr/bin/env bash
# The test command of the README: installs what the tests need if it is missing (tshark,
# iperf3, tcpreplay, tcpdump, iproute2, kubectl, openssl, unshare), then runs every test target.
# Needs root (network namespaces, raw sockets, packet capture). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool_package in tshark:tshark iperf3:iperf3 tcpreplay:tcpreplay tcpdump:tcpdump ip:iproute2 \
  kubectl:kubernetes-client openssl:openssl unshare:util-linux; do
  command -v "${tool_package%%:*}" >/dev/null 2>&1 || missing+=("${tool_package#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo test --all-targets --locked "$@"
