#!/usr/bin/env python3
"""Writes the seed corpus of the receive_path fuzz target: valid GWLB GENEVE datagrams of
every inner kind, one malformed variant per drop reason, GRO-style trains, and scripts for
the generator mode (src/fuzzing.rs) that reach fragment and ICMP-error states. Run from the
repository root; the seeds are committed, so this is only needed to change them."""
import os
import struct

OUT = "tests/fuzz/corpus/receive_path"


def geneve(inner, proto=None, cookie=0xDEADBEEF, flags=0, optlen=8, options=None):
    if proto is None:
        proto = 0x86DD if inner and inner[0] >> 4 == 6 else 0x0800
    if options is None:
        options = (
            struct.pack("!HBB", 0x0108, 1, 2) + (0x0123456789ABCDEF).to_bytes(8, "big")
            + struct.pack("!HBB", 0x0108, 2, 2) + (0x1122334455667788).to_bytes(8, "big")
            + struct.pack("!HBB", 0x0108, 3, 1) + cookie.to_bytes(4, "big")
        )
    return struct.pack("!BBH4s", optlen, flags, proto, b"\0\0\0\0") + options + inner


def ipv4(proto, payload, flags_frag=0x4000, options=b""):
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0x1234, flags_frag, 64, proto, 0,
                       bytes([10, 0, 1, 10]), bytes([10, 20, 0, 5])) + options + payload


def tcp(sport, dport, flags, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 65535, 0, 0) + payload


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv6(next_header, payload):
    return (struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64)
            + bytes.fromhex("fd000000000000000000000000000001")
            + bytes.fromhex("fd000000000000000000000000000002") + payload)


seeds = {}
syn = ipv4(6, tcp(40000, 3306, 0x02))
seeds["v4_tcp_syn"] = geneve(syn)
seeds["v4_tcp_data"] = geneve(ipv4(6, tcp(3306, 40000, 0x18, bytes(range(200)))))
seeds["v4_udp"] = geneve(ipv4(17, udp(5353, 53, b"query")))
seeds["v4_options_udp"] = geneve(ipv4(17, udp(1, 2, b"x" * 4), options=b"\x01\x01\x01\x00"))
seeds["v4_icmp_echo"] = geneve(ipv4(1, b"\x08\x00\x00\x00\x01\x01\x00\x01"))
seeds["v4_icmp_unreach"] = geneve(ipv4(1, b"\x03\x03\x00\x00\x00\x00\x00\x00" + syn[:28]))
seeds["v4_gre"] = geneve(ipv4(47, b"\x00\x00\x08\x00"))
seeds["v4_first_fragment"] = geneve(ipv4(17, udp(4000, 53, b"a" * 100)[:24], flags_frag=0x2000))
seeds["v4_later_fragment"] = geneve(ipv4(17, b"b" * 16, flags_frag=0x0003))
seeds["v6_tcp"] = geneve(ipv6(6, tcp(41000, 443, 0x02)))
seeds["v6_hbh_tcp"] = geneve(ipv6(0, b"\x06\x00\x01\x04\x00\x00\x00\x00" + tcp(1, 2, 0x12)))
seeds["v6_dstopts_udp"] = geneve(ipv6(60, b"\x11\x00\x01\x04\x00\x00\x00\x00" + udp(1, 2, b"zz")))
seeds["v6_fragment_first"] = geneve(ipv6(44, b"\x11\x00\x00\x01\x11\x22\x33\x44" + udp(9, 9, b"q" * 40)[:16]))
seeds["v6_fragment_later"] = geneve(ipv6(44, b"\x11\x00\x00\x10\x11\x22\x33\x44" + b"r" * 16))
seeds["v6_icmpv6_echo"] = geneve(ipv6(58, b"\x80\x00\x00\x00\x00\x07\x00\x01"))
seeds["jumbo_8500"] = geneve(ipv4(6, tcp(1, 2, 0x10, bytes(8460))))
# One per drop reason.
good = seeds["v4_tcp_syn"]
seeds["bad_truncated_base"] = good[:5]
seeds["bad_truncated_options"] = good[:30]
seeds["bad_version"] = bytes([good[0] | 0x40]) + good[1:]
seeds["bad_option_overrun"] = good[:35] + b"\x1f" + good[36:]
seeds["bad_critical_option"] = geneve(syn, optlen=9, options=geneve(b"")[8:] + b"\x01\x02\x80\x00")
seeds["bad_control"] = geneve(syn, flags=0x80)
seeds["bad_protocol"] = geneve(syn, proto=0x6558)
seeds["bad_gwlb_length"] = good[:35] + b"\x00" + good[36:]
seeds["bad_no_cookie"] = good[:34] + b"\x09" + good[35:]
seeds["bad_inner_truncated"] = good[:-3]
seeds["bad_inner_trailing"] = good + b"\x00"
seeds["bad_inner_version"] = geneve(syn, proto=0x86DD)
seeds["bad_inner_ihl"] = good[:40] + b"\x44" + good[41:]
seeds["bad_tcp_offset"] = good[:72] + b"\x40" + good[73:]
seeds["oversize"] = bytes(9001 - 28 + 1)
# GRO trains: first byte with the high bit set picks a stride of (byte & 0x7f) * 8.
seg = seeds["v4_udp"]
train_stride = 0x80 | ((len(seg) + 7) // 8)
padded = seg + b"\x00" * (((len(seg) + 7) // 8) * 8 - len(seg))
seeds["train_udp"] = bytes([train_stride]) + padded * 3 + seg



class Script:
    """A generator-mode input (first byte 0x60..=0x7f), written op by op in the order
    src/fuzzing.rs reads its bytes. Addresses, ports and protocols are indexes into its
    tables: address 0 client 10.0.1.10, 1 client2, 2 db 10.20.0.5, 3 db2, 4 audited
    10.30.0.1, 5 stranger, 6 broadcast, 7 multicast, 8 loopback, 9 unspecified; port 0 3306,
    1 3307, 2 53, 3 443, 4 22, 5 40000, 6 40001, 7 0; protocol 0 tcp, 2 udp, 3 icmp, 4 gre."""

    SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01

    def __init__(self, mode=0x60):
        self.b = bytearray([mode])
        self.flows = 0

    def _ends(self, src, dst, proto, sport=0, dport=0, v6=False):
        self.b += bytes([0x80 if v6 else 0, src, dst, proto])
        if proto in (0, 1, 2):
            self.b += bytes([sport, dport])
        elif proto == 3:
            self.b += bytes([sport])

    def _whole(self, flags, proto, payload=0):
        self.b += bytes([flags, payload])
        if proto in (0, 1):
            self.b += bytes([1])  # sequence number
        self.b += bytes([len(self.b) % 12])  # where the packet is remembered

    def new_flow(self, src, dst, proto, sport=0, dport=0, flags=0, v6=False):
        """A new flow and its first packet; returns its index."""
        self.b += bytes([0])
        self._ends(src, dst, proto, sport, dport, v6)
        self.b += bytes([self.flows])
        self._whole(flags, proto)
        self.flows += 1
        return self.flows - 1

    def packet(self, flow, proto, flags=0, reply=False):
        self.b += bytes([1, flow, 1 if reply else 0])
        self._whole(flags, proto)

    def first_fragment(self, flow, proto, flags=0, reply=False, id=5, first_len=2, slot=0):
        """first_len: index into 8, 16, 24, 32, 40 bytes (0 is an RFC 1858 tiny fragment)."""
        self.b += bytes([2, flow, 1 if reply else 0, id, flags, 0])
        if proto in (0, 1):
            self.b += bytes([1])
        self.b += bytes([first_len, len(self.b) % 12, slot])

    def later_fragment(self, datagram=0, offset=2, more=False, length=0):
        """offset: 0 -> 1 unit (RFC 3128), 1 -> 2, 2 -> 3 (after a 24-byte first fragment)."""
        self.b += bytes([3, datagram, offset, 1 if more else 0, length, 0, len(self.b) % 12])

    def icmp_error(self, sent, sender=0, to=0, quote=0, icmp_type=0, code=4):
        """sender 0 a router, 1 the quoted packet's destination; to 0 its source, 2 its
        destination; quote 0 IP header + 8 bytes, 2 the whole packet; icmp_type an index
        into 3, 3, 3, 11, 12, 4, 5 (IPv6: 1, 1, 2, 3, 4)."""
        self.b += bytes([4, sent, sender, to, quote, icmp_type, code, len(self.b) % 12])

    def mutate(self, sent, at, xor):
        self.b += bytes([6, sent]) + at.to_bytes(2, "big") + bytes([xor])

    def tick(self, ms8):
        self.b += bytes([7, 0, ms8])

    def switch_policy(self):
        self.b += bytes([7, 2])


S = Script
# A flow allowed to db:3306; the first fragment of a SYN that db sends back on its 5-tuple
# (a connection of db's own, refused), and that SYN's later fragment, which must be refused
# too; an ICMP error from a router quoting the client's SYN, to the client (belongs to the
# flow) and to db (judged on its own).
g = S()
f = g.new_flow(0, 2, 0, 5, 0, flags=S.SYN)
g.first_fragment(f, 0, flags=S.SYN, reply=True)
g.later_fragment()
g.icmp_error(sent=0, to=0)
g.icmp_error(sent=0, to=2, quote=2)
seeds["gen_responder_syn_fragments"] = bytes(g.b)
# Fragments of allowed and rejected UDP and TCP datagrams, a tiny TCP first fragment and an
# RFC 3128 later fragment, a pause past the fragment timeout, then a later fragment again.
g = S()
a = g.new_flow(0, 2, 0, 5, 0, flags=S.SYN)
r = g.new_flow(5, 2, 2, 6, 2)
g.first_fragment(a, 0, flags=S.ACK, id=1, slot=0)
g.first_fragment(r, 2, id=2, first_len=1, slot=1)
g.later_fragment(0)
g.later_fragment(1, more=True)
g.first_fragment(a, 0, flags=S.ACK, id=3, first_len=0, slot=2)
g.later_fragment(2, offset=0)
g.tick(255)
g.later_fragment(0)
seeds["gen_fragments"] = bytes(g.b)
# ICMP errors about rejected and audited flows, from the quoted packet's destination and
# from a router, before and after the policy changes; IPv6 too.
g = S()
r = g.new_flow(5, 2, 0, 5, 4, flags=S.SYN)
au = g.new_flow(0, 4, 3, 5)
v6 = g.new_flow(0, 2, 0, 6, 0, flags=S.SYN, v6=True)
g.icmp_error(sent=0, sender=1, to=0)
g.icmp_error(sent=1, sender=0, to=0, icmp_type=3, code=0)
g.icmp_error(sent=2, to=0, icmp_type=2)
g.switch_policy()
g.icmp_error(sent=1, sender=0, to=0, icmp_type=3, code=0)
g.packet(au, 3, reply=True)
g.mutate(sent=1, at=60, xor=0xff)
seeds["gen_icmp_errors"] = bytes(g.b)
# A reject budget of two a second (mode byte 0x72) under a flood of rejected SYNs.
g = S(mode=0x72)
for port in range(8):
    g.new_flow(5, 2, 0, port, 4, flags=S.SYN)
g.tick(200)
g.new_flow(5, 2, 0, 5, 4, flags=S.SYN)
seeds["gen_reject_budget"] = bytes(g.b)

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds written to {OUT}")
