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
# drops (what the appliance counted as dropped, ring_full included), kdrops (what the kernel
# dropped before the appliance saw it: full socket buffers, backlogs, the link; see
# kernel_drops below),
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
# column dut_ns/fwd is then CPU 1's busy time (/proc/stat: user, nice, system, irq and
# softirq; the appliance is pinned there, and the kernel's receive path of its end of the
# link runs there) per packet the appliance forwarded: what a forwarded packet costs the
# appliance's core, kernel and user space together. Everything else on CPU 1 counts too, so
# run it on a quiet machine. (Until 2026-12-07 it was the process's time plus CPU 1's irq and
# softirq time, which counted twice the softirq work that interrupted the appliance: this
# kernel accounts time at the tick, without IRQ_TIME_ACCOUNTING, and charges such a tick to
# both; at saturation the sum came to 1.1-1.6 cores' worth.) Sampled at the scheduler tick:
# run 5 s or more, compare rows of one run, repeat the run. At saturation (no RATE) it
# includes the cost of packets received and then dropped; RATE=pps below every case's
# capacity measures forwarded packets alone.
# GWLBTUN=path (with NETNS=1) adds the case "gwlbtun": aws-samples' GWLB tunnel handler
# (github.com/aws-samples/aws-gateway-load-balancer-tunnel-handler, C++; built by hand, see
# docs/performance.md "gwlbtun side by side") as the appliance, a baseline in the same run. It
# runs in the appliance's namespace on CPU 1 with one UDP and one TUN thread, on its fixed port
# 6081 (all addresses): it decapsulates each datagram into its TUN device gwi-<X> and
# encapsulates what the kernel routes out of gwo-<X> back to GWLB's address and port 6081
# (from the flow's outer source port, the original GENEVE header copied back), so loadgen
# sends to 6081 and listens on 6081 for that case. Its -c hook (written by this script) turns
# rp_filter off on both devices and routes loadgen's inner destinations (10.20.0.0/24) out of
# gwo-<X>, with forwarding on in that namespace only while the case runs: the kernel's IPv4
# forwarding is the "inspection" in between; it decrements the inner TTL (64 -> 63) and
# patches the inner IP checksum. loadgen does not compare those bytes: it matches a reply by
# its source port, length, GENEVE header (options included) and stamp, so gwlbtun's replies
# count as received (a reply it cannot match is reported on stderr). gwlbtun has no counters
# of labelwall's kind, so its fwd_pps is what loadgen received back (= recv_pps), its drops
# are loadgen's lost (sent - received: socket buffer, TUN queue, forwarding), its cpu_ns/pkt
# is over the datagrams its UDP thread read (its health check port, -p -j), and dut_ns/fwd is
# CPU 1's busy time per packet received back, as for the other cases. It collapses under
# open-loop overload, so GWLBTUN_RATE=pps (default: RATE) paces loadgen for this case alone:
# find its best rate with a short sweep, compare at that rate.
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
  # (|| true: under set -e a failed kill, of an appliance that died, would skip the rest)
  [ -n "$appliance_pid" ] && kill "$appliance_pid" 2>/dev/null || true
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
# Where loadgen sends and listens (gwlbtun's case: its fixed 6081 for both), and its rate.
target_port=$port; listen_port=$reply; rate=${RATE:-}

# (packet_socket and io only when given, so that builds from before them can be compared with BIN=)
# The cases not named "ring ..." receive on UDP sockets: `io: sockets` across a link, where
# the default (auto) would take the rings; on loopback auto takes the sockets anyway, and
# leaving the key out there keeps builds from before it comparable.
sockets=${NETNS:+sockets}
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

loadgen() { # size train [duration [count]]
  "${in_peer[@]}" taskset -c 0 "$loadgen_bin" loadgen --target "$app_ip:$target_port" \
    --listen "$peer_ip:$listen_port" --size "$1" --train "$2" --duration "${3:-$duration}" \
    --proto tcp --src 10.0.1.15/32 --dst 10.20.0.0/24 --dport 3306 --flows 64 ${rate:+--rate $rate} \
    ${4:+--count $4} --json
}

# gwlbtun (GWLBTUN=path; see above). Its -c hook is called as `hook CREATE gwi-<X> gwo-<X>
# <eni>` from inside its namespace when the first datagram of an endpoint arrives.
start_gwlbtun() {
  cat >"$dir/gwlbtun-hook.sh" <<'SH'
#!/bin/sh
[ "$1" = CREATE ] || exit 0
sysctl -qw "net.ipv4.conf.$2.rp_filter=0" "net.ipv4.conf.$3.rp_filter=0"
ip route replace 10.20.0.0/24 dev "$3"
SH
  chmod +x "$dir/gwlbtun-hook.sh"
  "${in_app[@]}" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0
  target_port=6081; listen_port=6081; rate=${GWLBTUN_RATE:-${RATE:-}}
  # Up to 5 tries: gwlbtun (v3.0, 5e12604) sometimes dies of a segmentation fault as it starts
  # (its logger thread logs through the global logger pointer before main has set it).
  local ok="" try
  for try in 1 2 3 4 5; do
    "${in_app[@]}" taskset -c 1 ${NICE:+nice -n "$NICE"} "$GWLBTUN" -c "$dir/gwlbtun-hook.sh" \
      -p "$admin" -j --udpthreads 1 --tunthreads 1 >"$dir/gwlbtun.log" 2>&1 &
    appliance_pid=$!
    for _ in $(seq 50); do
      "${in_app[@]}" curl -sf "127.0.0.1:$admin/" >/dev/null 2>&1 && { ok=1; break; }
      kill -0 "$appliance_pid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$ok" ] && break
    stop_appliance
  done
  [ -n "$ok" ] || { echo "gwlbtun did not start:"; cat "$dir/gwlbtun.log"; exit 1; }
  # 64 packets first, so that its devices, the hook and the route are in place before the
  # measured run.
  loadgen 128 1 1 64 >/dev/null
  for _ in $(seq 50); do
    "${in_app[@]}" ip route show 10.20.0.0/24 | grep -q 'dev gwo-' && return 0
    sleep 0.1
  done
  echo "gwlbtun's hook did not route 10.20.0.0/24 out of gwo-*:"; cat "$dir/gwlbtun.log"; exit 1
}
# Datagrams gwlbtun's UDP threads have read (its health check, JSON).
gwlbtun_received() {
  "${in_app[@]}" curl -sf "127.0.0.1:$admin/" | python3 -c '
import json, sys
print(sum(t["pktsIn"] for t in json.load(sys.stdin)["udp"]["UDPPacketReceiver"]["threads"]))'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$appliance_pid/stat"; }
# What the kernel dropped on the way to the appliance, in packets as the kernel counts them (a
# GSO or GRO train is one): UDP receive errors in the appliance's namespace (a socket buffer
# full: /proc/net/snmp InErrors), backlog drops on any CPU (/proc/net/softnet_stat), and the
# link's receive drops (NETNS=1). The "drops" column is what the appliance counted itself
# (ring_full included, from PACKET_STATISTICS).
kernel_drops() {
  local udp softnet link=0
  udp=$("${in_app[@]}" awk '/^Udp:/ {getline; print $4; exit}' /proc/net/snmp)
  softnet=$(python3 -c 'print(sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat")))')
  if [ -n "${NETNS:-}" ]; then link=$("${in_app[@]}" cat /sys/class/net/eth0/statistics/rx_dropped); fi
  echo $((udp + softnet + link))
}
# CPU 1's busy ticks: user, nice, system, irq, softirq (not idle, iowait or steal).
cpu1_busy() { awk '$1 == "cpu1" {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
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
    if comm is not None and not ipi and (comm.startswith(("lw-", "labelwall", "gwlbtun")) or softirq): n += 1
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
stop_gwlbtun() {
  stop_appliance
  "${in_app[@]}" sysctl -qw net.ipv4.ip_forward=0
  target_port=$port; listen_port=$reply; rate=${RATE:-}
}

printf '%-6s %-5s %-24s %11s %11s %11s %8s %6s %11s %10s %10s %10s %8s %8s %s\n' \
  size train case sent_pps fwd_pps recv_pps gbit/s ratio cpu_ns/pkt dut_ns/fwd p50_us p99_us drops \
  kdrops "${PERF:+perf_ns/fwd}"
for size in ${sizes[*]}; do
 for train in ${trains[*]}; do
  ceiling=$(loadgen "$size" "$train")
  base=""; base_back=""
  cases=("null reflector" "labelwall allow-all" "labelwall bookinfo" "bookinfo without names")
  [ "$train" -gt 1 ] && cases+=("reflector raw send")
  [ "$train" -eq 1 ] && [ -n "${NETNS:-}" ] && cases+=("reflector raw socket")
  [ -n "${NETNS:-}" ] && cases+=("ring reflector" "ring bookinfo" "ring bookinfo busy-poll")
  [ -n "$plain" ] && cases+=("plain reflector (C)")
  [ -n "${GWLBTUN:-}" ] && [ -n "${NETNS:-}" ] && cases+=("gwlbtun")
  for case in "${cases[@]}"; do
    if [ -n "${CASES:-}" ] && ! grep -qxE "$CASES" <<<"$case"; then continue; fi
    case $case in
      "null reflector") start_appliance "$dir/allow.yaml" 256 --reflect "" "$sockets" ;;
      "labelwall allow-all") start_appliance "$dir/allow.yaml" 256 "" "" "$sockets" ;;
      "labelwall bookinfo") start_appliance "$dir/policy.yaml" 256 "" "" "$sockets" ;;
      "bookinfo without names") start_appliance "$dir/policy-no-names.yaml" 256 "" "" "$sockets" ;;
      "reflector raw send") start_appliance "$dir/allow.yaml" 0 --reflect "" "$sockets" ;;
      "reflector raw socket") start_appliance "$dir/allow.yaml" 256 --reflect false "$sockets" ;;
      "ring reflector") start_appliance "$dir/allow.yaml" 256 --reflect true packet_ring ;;
      "ring bookinfo") start_appliance "$dir/policy.yaml" 256 "" true packet_ring ;;
      "ring bookinfo busy-poll") start_appliance "$dir/policy.yaml" 256 "" true packet_ring 50 ;;
      "plain reflector (C)")
        "${in_app[@]}" taskset -c 1 "$plain" "$app_ip" "$port" "$peer_ip" "$reply" 600 >"$dir/plain.out" &
        appliance_pid=$!; sleep 0.3 ;;
      "gwlbtun") start_gwlbtun ;;
    esac
    busy_before=$(cpu1_busy)
    kernel_before=$(kernel_drops)
    if [ "$case" = "plain reflector (C)" ]; then
      ticks_before=$(cpu_ticks)
      result=$(measured_loadgen "$size" "$train")
      ticks=$(( $(cpu_ticks) - ticks_before )); dut_ticks=$(( $(cpu1_busy) - busy_before ))
      stop_appliance
      packets=$(cat "$dir/plain.out"); back=$packets; drops=0
      # Its replies come from its listen port, which loadgen counts as unexpected.
      result=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["received"]=r["unexpected"]; r["pps"]=r["unexpected"]/r["duration_s"]; r["gbps"]=r["pps"]*(r["size"]+40)*8/1e9; print(json.dumps(r))' "$result")
    elif [ "$case" = "gwlbtun" ]; then
      ticks_before=$(cpu_ticks)
      packets_before=$(gwlbtun_received)
      result=$(measured_loadgen "$size" "$train")
      ticks=$(( $(cpu_ticks) - ticks_before )); dut_ticks=$(( $(cpu1_busy) - busy_before ))
      packets=$(( $(gwlbtun_received) - packets_before ))
      stop_gwlbtun
      # Forwarded: what loadgen received back; drops: what it lost (see GWLBTUN above).
      read -r back drops unexpected < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["received"], r["lost"], r["unexpected"])' "$result")
      [ "$unexpected" = 0 ] || echo "gwlbtun: $unexpected replies loadgen could not match" >&2
    else
      ticks_before=$(cpu_ticks)
      packets_before=$(counter labelwall_worker_received_packets_total)
      back_before=$(counter labelwall_worker_sent_packets_total)
      drops_before=$(counter labelwall_worker_drops_total)
      result=$(measured_loadgen "$size" "$train")
      ticks=$(( $(cpu_ticks) - ticks_before )); dut_ticks=$(( $(cpu1_busy) - busy_before ))
      packets=$(( $(counter labelwall_worker_received_packets_total) - packets_before ))
      back=$(( $(counter labelwall_worker_sent_packets_total) - back_before ))
      drops=$(( $(counter labelwall_worker_drops_total) - drops_before ))
      stop_appliance
    fi
    kdrops=$(( $(kernel_drops) - kernel_before ))
    base=${base:-$result}
    base_back=${base_back:-$back}
    python3 - "$size" "$case" "$result" "$base" "$ticks" "$packets" "$(getconf CLK_TCK)" \
      "$back" "$base_back" "$train" "$(cat "$dir/busy")" "$dut_ticks" "$drops" "$kdrops" <<'PY'
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
      f'{r["latency_us"]["p99"]:>10.0f} {int(sys.argv[13]):>8} {int(sys.argv[14]):>8}{cpu1}')
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
