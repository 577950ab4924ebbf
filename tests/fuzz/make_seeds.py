#!/usr/bin/env python3
"""Writes the seed corpus of the receive_path fuzz target: valid GWLB GENEVE datagrams of
every inner kind, one malformed variant per drop reason, and GRO-style trains. Run from the
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

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds written to {OUT}")
