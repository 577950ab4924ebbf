#!/usr/bin/env bash
# End-to-end packet rates on loopback (or across a veth link: NETNS=1), measured side by side in one run:
#   loadgen alone (its own ceiling: nothing answers), the null reflector (`labelwall run
#   --reflect`), labelwall with an allow-all policy, and labelwall with the bookinfo policy
#   (the demo's inventory and policy; traffic is ratings -> rating-database tcp/3306, allowed
#   by the first rule of a policy that also judges productpage's egress by server name), and
#   "bookinfo without names": the same policy without its `domains` group and the rule that
#   names it (issue 14's A/B: what established flows pay for a policy that reads names).
# Each size runs twice: single packets (--train 1, the raw send path) and same-flow trains
# (--train 64: loadgen sends each train as segmented UDP sends, loopback hands it to the
# appliance as one GRO train, and the appliance answers with segmented sends from per-port
# sockets). With trains one more case, "reflector raw send" (dataplane.send_sockets: 0),
# shows the same reflector answering trains one raw packet at a time; with single packets
# across a link (NETNS=1), "reflector raw socket" (dataplane.packet_socket: false) shows it
# sending them through the raw socket instead of the packet socket. "plain reflector (C)"
# is benches/plain_reflector.c (built with cc when there is one): recvmmsg/sendmmsg on one UDP
# socket, no GWLB rules, no GRO/GSO, the yardstick for the per-packet socket cost.
# The appliance (1 worker) runs on CPU 1, loadgen on CPU 0. Needs root (raw sockets).
# Besides packet rates it reports the appliance's CPU time per packet it received (user +
# system time of the process over its received-packet counter), which holds up better than
# rates when other work shares the machine.
# Columns: sent_pps (loadgen sent), fwd_pps (the appliance sent back, from its metrics),
# drops (what the appliance counted as dropped, ring_full included),
# recv_pps (loadgen received), gbit/s (received GENEVE bits), ratio (fwd_pps / the null
# reflector's fwd_pps), cpu_ns/pkt, and reply latency percentiles (meaningful only when paced).
# Usage: benches/e2e.sh [SIZES...]   (default: 128 1500 8500; DURATION=5 seconds per case;
#        RATE=pps paces loadgen, default as fast as possible; NICE=-10 runs the appliance at
#        that nice level, so that on a machine shared with builds its threads are not starved
#        by the scheduler (the kernel's softirq work is not subject to it, user space is); TRAINS="1 64" the train lengths;
#        CASES="null reflector|..." limits the cases, by name; PERF=1 adds perf_ns/fwd: the
#        appliance's share of CPU 1 per forwarded packet, sampled by `perf record -g` at 2 kHz:
#        samples of the appliance's threads, and samples of anything else on CPU 1 whose call
#        chain runs the network receive softirq (net_rx_action: the kernel's work on packets
#        for the appliance, whoever it interrupted), so that builds sharing the CPU are not
#        counted, less the samples that send the rps_cpus steering's inter-processor
#        interrupts (net_rps_send_ipi: a trapped MSR write per IPI in a VM, about 40% of a
#        worker's time; an artifact of steering veth, which a NIC does not have); more exact
#        than dut_ns/fwd, which the scheduler tick samples; NETNS=1 runs the appliance (and the
#        C reflector) and loadgen in two network namespaces joined by a veth pair (MTU 9000)
#        instead of on loopback: a real link, where the appliance's packet socket can send
#        (it cannot on loopback, whose addresses are all local))
# Across the link (NETNS=1) two more cases run labelwall with `dataplane.io: packet_ring`
# ("ring reflector", "ring bookinfo"), and each veth end's receive work is steered to its own
# side's CPU (rps_cpus: the appliance's end to CPU 1, loadgen's to CPU 0), so that the
# appliance's CPU pays its own kernel receive path and nothing of loadgen's. The headline
# column dut_ns/fwd is then the appliance process's CPU time (user + system) plus CPU 1's
# interrupt and softirq time (/proc/stat: where the kernel's receive path of the appliance's
# end of the link runs) per packet the appliance forwarded: what a forwarded packet costs the
# appliance's core, kernel and user space together, without counting other processes that
# share CPU 1 (builds on a shared machine). Both are sampled at the scheduler tick: run 5 s or
# more, compare rows of one run, repeat the run. At saturation (no RATE) it includes the
# cost of packets received and then dropped; RATE=pps below every case's capacity measures
# forwarded packets alone.
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=path uses that binary instead of building (to compare two builds); LOADGEN=path runs
# loadgen from another binary (default: BIN), so that two appliance builds face the same one.
if [ -z "${BIN:-}" ]; then cargo build --release -q; fi
bin=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/labelwall}
loadgen_bin=${LOADGEN:-$bin}
duration=${DURATION:-5}
sizes=("${@:-128 1500 8500}")
trains=(${TRAINS:-1 64})
dir=$(mktemp -d)
appliance_pid=""
# Where the appliance listens and loadgen listens for replies, and the command prefixes that
# put each in its place.
app_ip=127.0.0.1; peer_ip=127.0.0.2; in_app=(); in_peer=()
netns=()
if [ -n "${NETNS:-}" ]; then
  netns=("lw-bench-$$-app" "lw-bench-$$-peer")
  app_ip=10.78.0.1; peer_ip=10.78.0.2
  in_app=(ip netns exec "${netns[0]}"); in_peer=(ip netns exec "${netns[1]}")
  for ns in "${netns[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
  ip -n "${netns[0]}" link add eth0 mtu 9000 type veth peer name eth0 mtu 9000 netns "${netns[1]}"
  ip -n "${netns[0]}" addr add "$app_ip/24" dev eth0; ip -n "${netns[0]}" link set eth0 up
  ip -n "${netns[1]}" addr add "$peer_ip/24" dev eth0; ip -n "${netns[1]}" link set eth0 up
  # Receive work of each end on its own side's CPU (the appliance on 1, loadgen on 0).
  ip netns exec "${netns[0]}" sh -c 'echo 2 > /sys/class/net/eth0/queues/rx-0/rps_cpus'
  ip netns exec "${netns[1]}" sh -c 'echo 1 > /sys/class/net/eth0/queues/rx-0/rps_cpus'
fi
cleanup() {
  [ -n "$appliance_pid" ] && kill "$appliance_pid" 2>/dev/null
  for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT
"$bin" demo --write-config "$dir" >/dev/null
printf 'default_action: allow\n' >"$dir/allow.yaml"
python3 - "$dir/policy.yaml" >"$dir/policy-no-names.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
group = "  payments:\n    domains: [api.stripe.com]\n"
rule = text[text.index("  # Egress by the name"):text.index("  - name: productpage-other-egress")]
assert group in text and "domains" not in text.replace(group, "")
print(text.replace(group, "").replace(rule, ""), end="")
PY
plain=""
if command -v cc >/dev/null && cc -O2 -o "$dir/plain" benches/plain_reflector.c; then plain="$dir/plain"; fi
# Above loadgen's per-flow source ports (20000 + flow, on 127.0.0.2 with --train).
port=$((40000 + RANDOM % 20000)); reply=$((port + 1)); admin=$((port + 2))

# (packet_socket and io only when given, so that builds from before them can be compared with BIN=)
start_appliance() { # policy-file send-sockets [--reflect] [packet-socket] [io] [busy-poll]
  cat >"$dir/labelwall.yaml" <<YAML
dataplane: {listen: $app_ip:$port, workers: 1, reply_port: $reply, send_sockets: $2${4:+, packet_socket: $4}${5:+, io: $5}${6:+, busy_poll: $6}}
admin: {listen: 127.0.0.1:$admin}
policy: $1
labels: {inventory: [$dir/inventory.yaml]}
YAML
  "${in_app[@]}" taskset -c 1 ${NICE:+nice -n "$NICE"} "$bin" run -c "$dir/labelwall.yaml" ${3:-} 2>"$dir/appliance.log" &
  appliance_pid=$!
  for _ in $(seq 100); do
    "${in_app[@]}" curl -sf "127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "appliance did not start:"; cat "$dir/appliance.log"; exit 1
}

loadgen() { # size train
  "${in_peer[@]}" taskset -c 0 "$loadgen_bin" loadgen --target "$app_ip:$port" --listen "$peer_ip:$reply" \
    --size "$1" --train "$2" --duration "$duration" --proto tcp --src 10.0.1.15/32 \
    --dst 10.20.0.0/24 --dport 3306 --flows 64 ${RATE:+--rate $RATE} --json
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$appliance_pid/stat"; }
# CPU 1's interrupt and softirq ticks.
cpu1_irq() { awk '$1 == "cpu1" {print $7 + $8}' /proc/stat; }
# Runs loadgen (args: size train); with PERF=1 samples CPU 1 meanwhile and writes the
# appliance's samples (see PERF above) to $dir/busy.
measured_loadgen() {
  if [ -z "${PERF:-}" ]; then echo 0 >"$dir/busy"; loadgen "$@"; return; fi
  perf record -q -g -F 2000 -e cpu-clock -C 1 -o "$dir/perf.data" -- sleep "$duration" 2>/dev/null &
  local perf_pid=$!
  loadgen "$@"
  wait "$perf_pid"
  perf script -i "$dir/perf.data" -F comm,ip,sym 2>/dev/null | python3 -c '
import sys
n = 0; comm = None; softirq = False; ipi = False
def done():
    global n
    if comm is not None and not ipi and (comm.startswith(("lw-", "labelwall")) or softirq): n += 1
for line in sys.stdin:
    if not line.strip(): done(); comm = None; softirq = False; ipi = False
    elif not line.startswith("\t"): comm = line.strip()
    elif "net_rps_send_ipi" in line: ipi = True
    elif "net_rx_action" in line: softirq = True
done(); print(n)' >"$dir/busy"
}
counter() { # metric name: summed over workers
  "${in_app[@]}" curl -sf "127.0.0.1:$admin/metrics" | awk -v m="^$1" '$0 ~ m {n += $2} END {print n + 0}'
}

stop_appliance() { kill "$appliance_pid" 2>/dev/null || true; wait "$appliance_pid" 2>/dev/null || true; appliance_pid=""; }

printf '%-6s %-5s %-24s %11s %11s %11s %8s %6s %11s %10s %10s %10s %8s %s\n' \
  size train case sent_pps fwd_pps recv_pps gbit/s ratio cpu_ns/pkt dut_ns/fwd p50_us p99_us drops \
  "${PERF:+perf_ns/fwd}"
for size in ${sizes[*]}; do
 for train in ${trains[*]}; do
  ceiling=$(loadgen "$size" "$train")
  base=""; base_back=""
  cases=("null reflector" "labelwall allow-all" "labelwall bookinfo" "bookinfo without names")
  [ "$train" -gt 1 ] && cases+=("reflector raw send")
  [ "$train" -eq 1 ] && [ -n "${NETNS:-}" ] && cases+=("reflector raw socket")
  [ -n "${NETNS:-}" ] && cases+=("ring reflector" "ring bookinfo" "ring bookinfo busy-poll")
  [ -n "$plain" ] && cases+=("plain reflector (C)")
  for case in "${cases[@]}"; do
    if [ -n "${CASES:-}" ] && ! grep -qxE "$CASES" <<<"$case"; then continue; fi
    case $case in
      "null reflector") start_appliance "$dir/allow.yaml" 256 --reflect ;;
      "labelwall allow-all") start_appliance "$dir/allow.yaml" 256 ;;
      "labelwall bookinfo") start_appliance "$dir/policy.yaml" 256 ;;
      "bookinfo without names") start_appliance "$dir/policy-no-names.yaml" 256 ;;
      "reflector raw send") start_appliance "$dir/allow.yaml" 0 --reflect ;;
      "reflector raw socket") start_appliance "$dir/allow.yaml" 256 --reflect false ;;
      "ring reflector") start_appliance "$dir/allow.yaml" 256 --reflect true packet_ring ;;
      "ring bookinfo") start_appliance "$dir/policy.yaml" 256 "" true packet_ring ;;
      "ring bookinfo busy-poll") start_appliance "$dir/policy.yaml" 256 "" true packet_ring 50 ;;
      "plain reflector (C)")
        "${in_app[@]}" taskset -c 1 "$plain" "$app_ip" "$port" "$peer_ip" "$reply" 600 >"$dir/plain.out" &
        appliance_pid=$!; sleep 0.3 ;;
    esac
    irq_before=$(cpu1_irq)
    if [ "$case" = "plain reflector (C)" ]; then
      ticks_before=$(cpu_ticks)
      result=$(measured_loadgen "$size" "$train")
      ticks=$(( $(cpu_ticks) - ticks_before )); dut_ticks=$(( ticks + $(cpu1_irq) - irq_before ))
      stop_appliance
      packets=$(cat "$dir/plain.out"); back=$packets; drops=0
      # Its replies come from its listen port, which loadgen counts as unexpected.
      result=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["received"]=r["unexpected"]; r["pps"]=r["unexpected"]/r["duration_s"]; r["gbps"]=r["pps"]*(r["size"]+40)*8/1e9; print(json.dumps(r))' "$result")
    else
      ticks_before=$(cpu_ticks)
      packets_before=$(counter labelwall_worker_received_packets_total)
      back_before=$(counter labelwall_worker_sent_packets_total)
      drops_before=$(counter labelwall_worker_drops_total)
      result=$(measured_loadgen "$size" "$train")
      ticks=$(( $(cpu_ticks) - ticks_before )); dut_ticks=$(( ticks + $(cpu1_irq) - irq_before ))
      packets=$(( $(counter labelwall_worker_received_packets_total) - packets_before ))
      back=$(( $(counter labelwall_worker_sent_packets_total) - back_before ))
      drops=$(( $(counter labelwall_worker_drops_total) - drops_before ))
      stop_appliance
    fi
    base=${base:-$result}
    base_back=${base_back:-$back}
    python3 - "$size" "$case" "$result" "$base" "$ticks" "$packets" "$(getconf CLK_TCK)" \
      "$back" "$base_back" "$train" "$(cat "$dir/busy")" "$dut_ticks" "$drops" <<'PY'
import json, sys
size, case, r, b = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
ticks, packets, hz = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
back, base_back, train = int(sys.argv[8]), int(sys.argv[9]), sys.argv[10]
busy = int(sys.argv[11])
cpu1 = f' {busy / 2000 * 1e9 / back:>11.0f}' if busy and back else ''
dut_ns = int(sys.argv[12]) / hz * 1e9 / back if back else 0

seconds = r["duration_s"]
ratio = back / base_back if base_back else 0
cpu_ns = ticks / hz * 1e9 / packets if packets else 0
print(f'{size:<6} {train:<5} {case:<24} {r["sent_pps"]:>11.0f} {back / seconds:>11.0f} {r["pps"]:>11.0f} '
      f'{r["gbps"]:>8.2f} {ratio:>6.2f} {cpu_ns:>11.0f} {dut_ns:>10.0f} {r["latency_us"]["p50"]:>10.0f} '
      f'{r["latency_us"]["p99"]:>10.0f} {int(sys.argv[13]):>8}{cpu1}')
PY
  done
  python3 - "$size" "$ceiling" "$train" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
gbps = r["sent_pps"] * (r["size"] + 40) * 8 / 1e9
print(f'{sys.argv[1]:<6} {sys.argv[3]:<5} {"loadgen ceiling":<24} {r["sent_pps"]:>11.0f} '
      f'{"(no replies)":>11} {"":>11} {gbps:>8.2f}')
PY
 done
done
