#!/usr/bin/env bash
# The long soak run with faults: tests/soak.rs's `soak_long`, the same run as the suite's
# one-minute `soak_for_a_minute`, for DURATION seconds (default 600, at most 3600), built
# with --release so that the appliance under test is the release binary.
# It runs the real appliance (two workers, a flow log, dataplane.reject_limit 20) on loopback
# against steady `labelwall loadgen` load (allowed flows from pods of a fake Kubernetes API
# server and from inventory addresses, denied flows, rejected flows) while the policy and the
# inventory are rewritten every 2 s (broken and valid in turn), the flow log is rotated
# (rename + SIGUSR1) every 3 s, malformed datagrams, RFC 1858/3128 tiny fragments and new
# flows flood it, and the fake API server is killed and restarted every 5 s. The fake API
# server exists only inside the Rust tests (tests/kube_server), hence a test rather than a
# script of processes. Every loop of the run is bounded in count and time and ends by
# itself; only 127.0.0.0/8 is used. It prints RSS at start and end, allowed packets lost,
# rejects sent and suppressed, reload results, API server restarts, the flood, the flow log
# and worker restarts, and fails when the appliance did not come through (see tests/soak.rs).
# Needs root (loadgen sends through a raw socket).
# Usage: benches/soak.sh            (DURATION=600 seconds of load)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-600}
case "$duration" in
  '' | *[!0-9]*) echo "benches/soak.sh: DURATION is a whole number of seconds" >&2; exit 2 ;;
esac
if [ "$duration" -lt 10 ] || [ "$duration" -gt 3600 ]; then
  echo "benches/soak.sh: DURATION between 10 and 3600 seconds" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "benches/soak.sh: needs root (loadgen's raw socket)" >&2
  exit 2
fi
# Build first (not timed), then run with a bound: the load, plus setup and settling.
cargo test --release --test soak --no-run
LABELWALL_SOAK_SECONDS=$duration timeout --kill-after=10 $((duration + 180)) \
  cargo test --release --test soak -- --ignored --nocapture soak_long
