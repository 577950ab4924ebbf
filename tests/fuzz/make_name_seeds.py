#!/usr/bin/env python3
"""Writes the seed corpus of the server_names fuzz target (src/names/fuzzing.rs): the real
clients' bytes of tests/fixtures/names (TCP streams, QUIC datagrams, ClientHellos as CRYPTO
streams) and a few hand-made requests, each behind the 11-byte header that picks the mode,
the byte budget and the seed of the choices. Run from the repository root; the seeds are
committed, so this is only needed to change them."""
import os
import struct

FIXTURES = "tests/fixtures/names"
OUT = "tests/fuzz/corpus/server_names"


def packets(path):
    """(protocol, source port, tcp flags, sequence, payload) of each IPv4 packet in a pcap
    of Ethernet frames, as tcpdump on loopback writes them."""
    data = open(path, "rb").read()
    at = 24
    while at + 16 <= len(data):
        incl = struct.unpack_from("<I", data, at + 8)[0]
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto, l4 = ip[9], ip[ihl:total]
        if proto == 6:
            sport, _, seq = struct.unpack_from("!HHI", l4)
            off = (l4[12] >> 4) * 4
            yield "tcp", sport, l4[13], seq, l4[off:]
        elif proto == 17:
            yield "udp", struct.unpack_from("!H", l4)[0], 0, 0, l4[8:]


def tcp_stream(path):
    """The first client's bytes in sequence order (the captures have no gaps)."""
    client, isn, pieces = None, None, {}
    for proto, sport, flags, seq, payload in packets(path):
        if proto != "tcp":
            continue
        if client is None and flags & 0x02 and not flags & 0x10:
            client, isn = sport, seq
        if sport == client and payload:
            pieces.setdefault((seq - isn - 1) % 2**32, payload)
    stream = b""
    for offset in sorted(pieces):
        stream += pieces[offset][len(stream) - offset:] if offset <= len(stream) else b""
    return stream


def datagrams(path):
    first = None
    for proto, sport, _, _, payload in packets(path):
        if proto == "udp" and first in (None, sport):
            first = sport
            yield payload


def handshake(stream):
    """The handshake bytes of a stream of TLS records."""
    out, at = b"", 0
    while at + 5 <= len(stream) and stream[at] == 22:
        length = struct.unpack_from("!H", stream, at + 3)[0]
        out += stream[at + 5:at + 5 + length]
        at += 5 + length
    return out


def seed(name, mode, budget, choices, payload):
    header = bytes([mode]) + struct.pack("!H", budget - 1) + struct.pack("!Q", choices)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(header + payload)


os.makedirs(OUT, exist_ok=True)
for n, fixture in enumerate(["openssl_tls13_sni", "openssl_tls12_sni", "openssl_no_sni",
                             "openssl_records", "chromium_tls", "curl_host", "curl_proxy"]):
    stream = tcp_stream(os.path.join(FIXTURES, fixture + ".pcap"))
    seed(f"tcp_{fixture}", 0, 16384, 0x1234_5678_9ABC_DEF1 + n, stream)
    seed(f"tcp_{fixture}_small_budget", 0, 300, 0x0F0F_0F0F_0F0F_0F0F + n, stream)
    if fixture.startswith(("openssl", "chromium")):
        seed(f"crypto_{fixture}", 2, 16384, 0x5555_AAAA_5555_AAAB + n, handshake(stream))
for n, fixture in enumerate(["aioquic_v1", "aioquic_v1_two_initials", "aioquic_v2",
                             "chromium_quic"]):
    joined = b"".join(datagrams(os.path.join(FIXTURES, fixture + ".pcap")))
    seed(f"quic_{fixture}", 1, 16384, 0x0123_4567_89AB_CDEF + n, joined)
hand_made = {
    "http_no_host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "http_absolute": b"GET http://a.example:8080/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    "http_two_hosts": b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    "http_folded": b"GET / HTTP/1.1\r\nHost:\r\n a.example\r\n\r\n",
    "tls_record_type_change": bytes([22, 3, 1, 0, 4, 1, 0, 0, 60, 23, 3, 3, 0, 2, 3, 3]),
}
for n, (name, payload) in enumerate(hand_made.items()):
    seed(name, 0, 16384, 0x7777_0000_0000_0001 + n, payload)
