#!/usr/bin/env bash
# End-to-end packet rates on loopback, measured side by side in one run:
#   loadgen alone (its own ceiling: nothing answers), the null reflector (`labelwall run
#   --reflect`), labelwall with an allow-all policy, and labelwall with the bookinfo policy
#   (the demo's inventory and policy; traffic is ratings -> rating-database tcp/3306, allowed
#   by the second-to-last lookup of a 5-rule policy).
# The appliance (1 worker) runs on CPU 1, loadgen on CPU 0. Needs root (raw sockets).
# Usage: benches/e2e.sh [SIZES...]   (default: 128 1500 8500; DURATION=5 seconds per case)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/labelwall
duration=${DURATION:-5}
sizes=("${@:-128 1500 8500}")
dir=$(mktemp -d)
cleanup() { pkill -f "$dir/labelwall.yaml" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$bin" demo --write-config "$dir" >/dev/null
printf 'default_action: allow\n' >"$dir/allow.yaml"
port=$((20000 + RANDOM % 10000)); reply=$((port + 1)); admin=$((port + 2))

start_appliance() { # policy-file [--reflect]
  cat >"$dir/labelwall.yaml" <<YAML
dataplane: {listen: 127.0.0.1:$port, workers: 1, reply_port: $reply}
admin: {listen: 127.0.0.1:$admin}
policy: $1
labels: {inventory: [$dir/inventory.yaml]}
YAML
  taskset -c 1 "$bin" run -c "$dir/labelwall.yaml" ${2:-} 2>"$dir/appliance.log" &
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "appliance did not start:"; cat "$dir/appliance.log"; exit 1
}

loadgen() { # size
  taskset -c 0 "$bin" loadgen --target "127.0.0.1:$port" --listen "127.0.0.2:$reply" \
    --size "$1" --duration "$duration" --proto tcp --src 10.0.1.15/32 --dst 10.20.0.0/24 \
    --dport 3306 --flows 64 --json
}

stop_appliance() { pkill -f "$dir/labelwall.yaml" || true; wait 2>/dev/null || true; }

printf '%-6s %-22s %12s %12s %10s %8s %10s %9s\n' size case sent_pps recv_pps gbit/s ratio p50_us p99_us
for size in ${sizes[*]}; do
  ceiling=$(loadgen "$size")
  base=""
  for case in "null reflector" "labelwall allow-all" "labelwall bookinfo"; do
    case $case in
      "null reflector") start_appliance "$dir/allow.yaml" --reflect ;;
      "labelwall allow-all") start_appliance "$dir/allow.yaml" ;;
      "labelwall bookinfo") start_appliance "$dir/policy.yaml" ;;
    esac
    result=$(loadgen "$size")
    stop_appliance
    base=${base:-$result}
    python3 - "$size" "$case" "$result" "$base" <<'PY'
import json, sys
size, case, r, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
ratio = r["pps"] / b["pps"] if b["pps"] else 0
print(f'{size:<6} {case:<22} {r["sent_pps"]:>12.0f} {r["pps"]:>12.0f} {r["gbps"]:>10.2f} '
      f'{ratio:>8.2f} {r["latency_us"]["p50"]:>10} {r["latency_us"]["p99"]:>9}')
PY
  done
  python3 - "$size" "$ceiling" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f'{sys.argv[1]:<6} {"loadgen ceiling":<22} {r["sent_pps"]:>12.0f} {"(no replies)":>12}')
PY
done
