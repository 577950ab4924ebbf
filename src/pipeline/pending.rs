//! Pending flows: flows whose verdict waits for their server name, and the per-worker pool
//! that holds their client datagrams until it is known.
//!
//! What it owns: the [`HoldPool`] (one slot per pending flow: the client's stream bytes being
//! reassembled for the name readers, copies of the client datagrams held back, and what a
//! reject of the flow needs), the queue of datagrams to send once a verdict lets them go
//! ([`HoldPool::pop_release`]), and the `names` limits (`max_bytes`, `timeout`,
//! `max_pending`). Which flows are pending, and what their verdict is, is the judge's
//! (`judge.rs`); this module only holds, reads and releases.
//!
//! Memory: allocated once at start, `max_pending` slots of [`HoldPool::slot_bytes`] each
//! (the stream buffer, `max_bytes`, plus room for held datagrams: `max_bytes` + one largest
//! GENEVE datagram + [`MAX_HELD`] x [`HELD_OVERHEAD`]). With the defaults (16 KiB, 16,384
//! flows) that is ~733 MiB of address space per worker, zero-filled on demand by the
//! kernel: only what slots touch becomes resident (a ClientHello of 2 KB touches one or two
//! pages of each part). Nothing here allocates per packet (docs/architecture.md, step 4b).
//!
//! Must not depend on: sockets, logging, the flow log.

use std::collections::VecDeque;

use super::decode::MAX_GENEVE_DATAGRAM;
use crate::conntrack::FlowKey;
use crate::names::{Insert, QuicInitials, Reading, TcpReassembly, read_stream};

/// Held datagrams per pending flow at most: a ClientHello takes one to three segments, a
/// QUIC client's first flight a few Initials; a flow with more is past `max_bytes` or stuck.
pub const MAX_HELD: usize = 16;

/// Room per held datagram for what is not client payload (GENEVE, IP and TCP headers).
pub const HELD_OVERHEAD: usize = 320;

/// The `names` limits of one pipeline (SPEC.md: `names.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Client bytes read and held per flow.
    pub max_bytes: usize,
    /// Longest a flow waits for its name.
    pub timeout_ms: u64,
    /// Flows waiting for their name at once.
    pub max_pending: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        NameLimits { max_bytes: 16 * 1024, timeout_ms: 5_000, max_pending: 16 * 1024 }
    }
}

/// How a flow's name reading ended (`labelwall_server_names_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameResult {
    Found,
    /// The bytes can never show a name (not TLS/HTTP/QUIC, no SNI, malformed).
    None,
    /// The message would not fit `names.max_bytes` (or the held datagrams their room).
    TooLong,
    /// `names.timeout` passed without a name.
    Timeout,
    /// A TCP flow first seen after its SYN: its first bytes are gone.
    PickedUpMidFlow,
    /// `names.max_pending` flows were already waiting.
    PendingFull,
}

/// Name readings by result, indexed like [`NameResult::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameCounts(pub [u64; NameResult::ALL.len()]);

impl NameCounts {
    pub(super) fn add(&mut self, result: NameResult) {
        self.0[result as usize] += 1;
    }

    pub fn get(&self, result: NameResult) -> u64 {
        self.0[result as usize]
    }
}

impl NameResult {
    pub const ALL: [NameResult; 6] = [
        NameResult::Found,
        NameResult::None,
        NameResult::TooLong,
        NameResult::Timeout,
        NameResult::PickedUpMidFlow,
        NameResult::PendingFull,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            NameResult::Found => "found",
            NameResult::None => "none",
            NameResult::TooLong => "too_long",
            NameResult::Timeout => "timeout",
            NameResult::PickedUpMidFlow => "picked_up_mid_flow",
            NameResult::PendingFull => "pending_full",
        }
    }
}

/// The name reader of one flow.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "slots live in a pool allocated once: boxing the QUIC state would allocate per flow"
)]
enum Reader {
    Tcp(TcpReassembly),
    Quic(QuicInitials),
}

/// One pending flow's state (its bytes are in the pool's storage).
#[derive(Debug)]
struct Slot {
    key: FlowKey,
    started_ms: u64,
    reader: Reader,
    /// Held datagrams: (offset in the slot's hold room, length), in arrival order.
    held: [(u32, u32); MAX_HELD],
    count: u8,
    /// Bytes of the hold room in use.
    used: usize,
    /// Client datagrams this slot took (held, or retransmissions of held bytes) and their
    /// bytes: counted under the flow's verdict when it comes.
    taken: (u64, u64),
    /// Queued for release: the slot is freed once its datagrams were taken.
    releasing: bool,
    /// For a reject: the client's first sequence number after the SYN (what the server
    /// expects next, since nothing of the client's reached it), and the last
    /// acknowledgement the client sent (what the client expects from the server).
    client_next_seq: Option<u32>,
    client_ack: Option<u32>,
    /// The GENEVE header of the client's latest datagram (its cookie is the current one),
    /// to wrap a reject in.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Where the client's latest datagram came from, as the caller described it
    /// ([`super::Pipeline::set_origin`]): where released datagrams go.
    origin: u128,
}

/// GENEVE headers longer than this (GWLB's are 40 bytes) are not kept: such a flow's reject
/// sends no RSTs.
const MAX_HEADER: usize = 64;

/// What feeding a held datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "the name is inline on purpose: boxing allocates")]
pub(super) enum Fed {
    /// Held; the name is not known yet.
    Held,
    /// Held, and the reading is final.
    HeldAndRead(Reading),
    /// Copies of bytes already held (a retransmission): not held again.
    Duplicate,
    /// No room to hold it: the flow must be judged now, with the reading so far (a final
    /// one, or none past the room), and this datagram goes after the held ones.
    NoRoom(Reading),
}

/// The per-worker pool of pending flows.
#[derive(Debug)]
pub(super) struct HoldPool {
    limits: NameLimits,
    /// Grows up to `max_pending` (reserved up front), never shrinks.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// `max_pending` slots of `slot_bytes`: the stream buffer, then the hold room.
    storage: Vec<u8>,
    slot_bytes: usize,
    /// Decryption room for one QUIC packet.
    scratch: Box<[u8]>,
    /// Slots whose held datagrams are to be sent, oldest first, and how many of the first
    /// one were taken.
    releases: VecDeque<u32>,
    released_of_first: usize,
    /// Clock hand of the timeout sweep.
    hand: usize,
    pending: usize,
}

/// Slots the timeout sweep checks per batch.
const SWEEP_BUDGET: usize = 64;

impl HoldPool {
    pub(super) fn new(limits: NameLimits) -> HoldPool {
        let slot_bytes = Self::slot_bytes(limits.max_bytes);
        let max_pending = limits.max_pending.max(1);
        HoldPool {
            limits,
            slots: Vec::with_capacity(max_pending),
            free: Vec::with_capacity(max_pending),
            // Zero-filled: the allocator maps it lazily, untouched pages cost nothing.
            storage: vec![0u8; max_pending * slot_bytes],
            slot_bytes,
            scratch: vec![0u8; MAX_GENEVE_DATAGRAM].into_boxed_slice(),
            releases: VecDeque::with_capacity(max_pending),
            released_of_first: 0,
            hand: 0,
            pending: 0,
        }
    }

    /// Bytes of one slot for `max_bytes`: the stream buffer and the hold room.
    pub fn slot_bytes(max_bytes: usize) -> usize {
        max_bytes + Self::hold_room(max_bytes)
    }

    fn hold_room(max_bytes: usize) -> usize {
        max_bytes + MAX_GENEVE_DATAGRAM + MAX_HELD * HELD_OVERHEAD
    }

    /// Flows waiting for their name now.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// A slot for a new pending flow of `key`, or `None` when `max_pending` are waiting.
    pub(super) fn open(&mut self, key: FlowKey, tcp: bool, now_ms: u64) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.slots.len() < self.limits.max_pending.max(1) => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
            None => return None,
        };
        let reader =
            if tcp { Reader::Tcp(TcpReassembly::new()) } else { Reader::Quic(QuicInitials::new()) };
        self.slots[slot as usize] = Some(Slot {
            key,
            started_ms: now_ms,
            reader,
            held: [(0, 0); MAX_HELD],
            count: 0,
            used: 0,
            taken: (0, 0),
            releasing: false,
            client_next_seq: None,
            client_ack: None,
            header: [0; MAX_HEADER],
            header_len: 0,
            origin: 0,
        });
        self.pending += 1;
        Some(slot)
    }

    /// The stream buffer and hold room of `slot`.
    fn parts(&mut self, slot: u32) -> (&mut [u8], &mut [u8]) {
        let at = slot as usize * self.slot_bytes;
        self.storage[at..at + self.slot_bytes].split_at_mut(self.limits.max_bytes)
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Slot {
        self.slots[slot as usize].as_mut().expect("a pending flow's slot is in use")
    }

    /// A TCP segment of the client that carries no payload (the SYN, the bare ACK): what a
    /// reject needs is noted, the SYN fixes where the stream starts.
    pub(super) fn client_control(&mut self, slot: u32, seq: u32, ack: Option<u32>, syn: bool) {
        let (stream, state) = self.stream_and_state(slot);
        if ack.is_some() {
            state.client_ack = ack;
        }
        if let Reader::Tcp(tcp) = &mut state.reader
            && syn
        {
            tcp.segment(stream, seq, true, &[]);
            state.client_next_seq = Some(seq.wrapping_add(1));
        }
    }

    /// The stream buffer of `slot` and its state (disjoint: storage and slots).
    fn stream_and_state(&mut self, slot: u32) -> (&mut [u8], &mut Slot) {
        let at = slot as usize * self.slot_bytes;
        let stream = &mut self.storage[at..at + self.limits.max_bytes];
        let state = self.slots[slot as usize].as_mut().expect("a pending flow's slot is in use");
        (stream, state)
    }

    /// Holds a copy of `datagram` (a client datagram whose payload is `payload`: TCP with
    /// sequence number `seq`, or a UDP datagram's payload) and feeds the payload to the
    /// flow's reader.
    pub(super) fn feed(
        &mut self,
        slot: u32,
        datagram: &[u8],
        payload: &[u8],
        tcp: Option<(u32, Option<u32>, bool)>,
    ) -> Fed {
        let max_bytes = self.limits.max_bytes;
        let at = slot as usize * self.slot_bytes;
        let (storage, slots, scratch) = (&mut self.storage, &mut self.slots, &mut self.scratch);
        let (stream, room) = storage[at..at + self.slot_bytes].split_at_mut(max_bytes);
        let state = slots[slot as usize].as_mut().expect("a pending flow's slot is in use");
        let reading = match (&mut state.reader, tcp) {
            (Reader::Tcp(reassembly), Some((seq, ack, syn))) => {
                if ack.is_some() {
                    state.client_ack = ack;
                }
                if syn {
                    state.client_next_seq = Some(seq.wrapping_add(1));
                }
                match reassembly.segment(stream, seq, syn, payload) {
                    // Every byte was held before: the copy already waits.
                    Insert::Nothing if !reassembly.stream().beyond_capacity() => {
                        state.taken.0 += 1;
                        state.taken.1 += datagram.len() as u64;
                        return Fed::Duplicate;
                    }
                    Insert::Advanced => read_stream(reassembly.bytes(stream), max_bytes),
                    _ if reassembly.stream().beyond_capacity() => Reading::TooLong,
                    _ => Reading::NeedMore,
                }
            }
            (Reader::Quic(initials), None) => initials.datagram(stream, scratch, payload),
            _ => Reading::NoName,
        };
        if usize::from(state.count) == MAX_HELD || state.used + datagram.len() > room.len() {
            return Fed::NoRoom(reading);
        }
        room[state.used..state.used + datagram.len()].copy_from_slice(datagram);
        state.held[usize::from(state.count)] = (state.used as u32, datagram.len() as u32);
        state.count += 1;
        state.used += datagram.len();
        state.taken.0 += 1;
        state.taken.1 += datagram.len() as u64;
        match reading {
            Reading::NeedMore => Fed::Held,
            final_reading => Fed::HeldAndRead(final_reading),
        }
    }

    /// What a reject of the flow in `slot` needs: (the server's next expected sequence number
    /// from the client, the client's last acknowledgement), where known.
    pub(super) fn reject_sequence(&self, slot: u32) -> (Option<u32>, Option<u32>) {
        self.slots[slot as usize]
            .as_ref()
            .map_or((None, None), |s| (s.client_next_seq, s.client_ack))
    }

    /// The client datagrams `slot` took and their bytes, once (for the verdict's counters).
    pub(super) fn take_counts(&mut self, slot: u32) -> (u64, u64) {
        self.slots[slot as usize].as_mut().map_or((0, 0), |s| std::mem::take(&mut s.taken))
    }

    /// Keeps the GENEVE header and origin of a client datagram of `slot`'s flow.
    pub(super) fn client_seen(&mut self, slot: u32, header: &[u8], origin: u128) {
        let state = self.slot_mut(slot);
        state.origin = origin;
        if let Some(room) = state.header.get_mut(..header.len()) {
            room.copy_from_slice(header);
            state.header_len = header.len() as u8;
        }
    }

    /// The GENEVE header of the client's latest datagram, if kept.
    pub(super) fn header(&self, slot: u32) -> Option<&[u8]> {
        let state = self.slots[slot as usize].as_ref()?;
        Some(&state.header[..usize::from(state.header_len)]).filter(|h| !h.is_empty())
    }

    /// The first held datagram (a UDP flow's reject answers it).
    pub(super) fn first_held(&self, slot: u32) -> Option<&[u8]> {
        let state = self.slots[slot as usize].as_ref()?;
        let (offset, len) = *state.held[..usize::from(state.count)].first()?;
        let at = slot as usize * self.slot_bytes + self.limits.max_bytes + offset as usize;
        Some(&self.storage[at..at + len as usize])
    }

    /// Replaces what `slot` holds by `packets` (the two RSTs of a reject).
    pub(super) fn replace_held(&mut self, slot: u32, packets: &[&[u8]]) {
        let (_, room) = self.parts(slot);
        let mut used = 0;
        let mut held = [(0u32, 0u32); MAX_HELD];
        for (n, packet) in packets.iter().enumerate().take(MAX_HELD) {
            room[used..used + packet.len()].copy_from_slice(packet);
            held[n] = (used as u32, packet.len() as u32);
            used += packet.len();
        }
        let state = self.slot_mut(slot);
        state.held = held;
        state.count = packets.len().min(MAX_HELD) as u8;
        state.used = used;
    }

    /// The verdict lets the held datagrams go: queued for [`HoldPool::pop_release`], the slot
    /// freed once they were taken.
    pub(super) fn release(&mut self, slot: u32) {
        let state = self.slot_mut(slot);
        if state.count == 0 {
            self.close(slot);
            return;
        }
        state.releasing = true;
        self.pending -= 1;
        self.releases.push_back(slot);
    }

    /// The verdict drops what is held: the slot is free again.
    pub(super) fn close(&mut self, slot: u32) {
        if let Some(state) = self.slots[slot as usize].take() {
            if !state.releasing {
                self.pending -= 1;
            }
            self.free.push(slot);
        }
    }

    /// Copies the next datagram to send into `out`; its length and origin, or `None` when
    /// none waits.
    pub fn pop_release(&mut self, out: &mut [u8]) -> Option<(usize, u128)> {
        loop {
            let slot = *self.releases.front()?;
            let state = self.slots[slot as usize].as_ref()?;
            if self.released_of_first == usize::from(state.count) {
                self.releases.pop_front();
                self.released_of_first = 0;
                self.close(slot);
                continue;
            }
            let (offset, len) = state.held[self.released_of_first];
            let at = slot as usize * self.slot_bytes + self.limits.max_bytes + offset as usize;
            let len = len as usize;
            // Too small a buffer takes nothing: the datagram waits for a larger one.
            let out = out.get_mut(..len)?;
            self.released_of_first += 1;
            out.copy_from_slice(&self.storage[at..at + len]);
            return Some((len, state.origin));
        }
    }

    /// Pending slots older than `names.timeout` at `now_ms` (up to [`SWEEP_BUDGET`] slots
    /// checked per call): each is handed to `expired` with its flow's key.
    pub(super) fn sweep(&mut self, now_ms: u64, expired: &mut impl FnMut(u32, FlowKey)) {
        if self.slots.is_empty() {
            return;
        }
        for _ in 0..SWEEP_BUDGET.min(self.slots.len()) {
            self.hand = (self.hand + 1) % self.slots.len();
            let due = self.slots[self.hand].as_ref().filter(|s| {
                !s.releasing && now_ms.saturating_sub(s.started_ms) >= self.limits.timeout_ms
            });
            if let Some(state) = due {
                expired(self.hand as u32, state.key);
            }
        }
    }

    /// Whether the flow in `slot` waited longer than `names.timeout`.
    pub(super) fn timed_out(&self, slot: u32, now_ms: u64) -> bool {
        self.slots[slot as usize]
            .as_ref()
            .is_some_and(|s| now_ms.saturating_sub(s.started_ms) >= self.limits.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{FlowSettings, HeldVerdicts, Mode, Outcome, Pipeline};
    use super::*;
    use crate::names::fuzzing::client_capture;
    use crate::packet::{Transport, tcp_flags};
    use crate::pipeline::decode;
    use crate::policy::Action;
    use etherparse::PacketBuilder;
    use std::sync::Arc;

    /// Clients may reach www.example.com (TLS, and QUIC's quic.example.com), not
    /// *.example.org; any other name on tcp/443 is rejected.
    const NAMED: &str = "default_action: deny\ngroups:\n  clients: {cidrs: [10.0.1.0/24]}\n\
        \x20 allowed: {domains: [www.example.com, quic.example.com]}\n\
        \x20 blocked: {domains: [\"*.example.org\"]}\nrules:\n\
        \x20 - {name: allowed-api, from: [clients], to: [allowed], ports: [tcp/443, udp/443], action: allow}\n\
        \x20 - {name: blocked, from: [clients], to: [blocked], ports: [tcp/443], action: deny}\n\
        \x20 - {name: others, from: [clients], to: [any], ports: [tcp/443], action: reject}\n";

    const SERVER: [u8; 4] = [203, 0, 113, 7];
    const ISN: u32 = 1_000;
    const SERVER_ISN: u32 = 50_000;

    fn named(limits: NameLimits) -> (Pipeline, Arc<crate::snapshot::SnapshotCell>) {
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, NAMED)));
        let settings = FlowSettings { names: limits, ..FlowSettings::default() };
        let mut p = Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), settings, false);
        p.begin_batch(1);
        (p, cell)
    }

    fn small() -> NameLimits {
        NameLimits { max_bytes: 4096, timeout_ms: 5_000, max_pending: 8 }
    }

    /// A TCP segment in GENEVE: `from:sport -> to:dport` with `seq`, `ack` (when set) and
    /// `payload`.
    fn segment(
        (from, sport): ([u8; 4], u16),
        (to, dport): ([u8; 4], u16),
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut step = PacketBuilder::ipv4(from, to, 64).tcp(sport, dport, seq, 1000);
        if flags & tcp_flags::SYN != 0 {
            step = step.syn();
        }
        if flags & tcp_flags::ACK != 0 {
            step = step.ack(ack);
        }
        if flags & tcp_flags::RST != 0 {
            step = step.rst();
        }
        if !payload.is_empty() {
            step = step.psh();
        }
        let mut out = Vec::new();
        step.write(&mut out, payload).unwrap();
        geneve(out)
    }

    /// The client's data at `offset` of its stream (after the handshake).
    fn data(port: u16, offset: u32, payload: &[u8]) -> Vec<u8> {
        let seq = ISN + 1 + offset;
        segment((CLIENT, port), (SERVER, 443), ACK, seq, SERVER_ISN + 1, payload)
    }

    /// SYN, SYN-ACK and the client's ACK of a connection from `port`: all pass.
    fn handshake(p: &mut Pipeline, port: u16) {
        let c = (CLIENT, port);
        let s = (SERVER, 443);
        let pass = Outcome::SendBack(Action::Allow);
        assert_eq!(run(p, &segment(c, s, SYN, ISN, 0, &[])), pass, "SYN");
        assert_eq!(run(p, &segment(s, c, SYN_ACK, SERVER_ISN, ISN + 1, &[])), pass, "SYN-ACK");
        assert_eq!(run(p, &segment(c, s, ACK, ISN + 1, SERVER_ISN + 1, &[])), pass, "ACK");
        assert_eq!(p.flow_counts().pending, 1);
    }

    fn releases(p: &mut Pipeline) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; MAX_GENEVE_DATAGRAM];
        std::iter::from_fn(|| p.pop_release(&mut out).map(|(len, _)| out[..len].to_vec()))
            .take(100)
            .collect()
    }

    /// The ClientHello of a real `openssl s_client -servername <name>`.
    fn client_hello(capture: &str) -> Vec<u8> {
        client_capture(capture).segments.iter().flat_map(|s| s.payload.clone()).collect()
    }

    fn names(p: &Pipeline, result: NameResult) -> u64 {
        p.flow_counts().server_names.get(result)
    }

    fn server_name(p: &mut Pipeline) -> Option<String> {
        p.named_flows().next().map(|(_, name)| name.to_string())
    }

    #[test]
    fn an_allowed_name_releases_the_held_segments_in_order_then_the_flow_passes() {
        let (mut p, cell) = named(small());
        handshake(&mut p, 40_000);
        let hello = client_hello("openssl_tls13_sni");
        let cut = hello.len() / 2;
        let (first, second) =
            (data(40_000, 0, &hello[..cut]), data(40_000, cut as u32, &hello[cut..]));
        assert_eq!(run(&mut p, &first), Outcome::Held);
        assert!(releases(&mut p).is_empty(), "nothing reaches the server before the verdict");
        assert_eq!(run(&mut p, &second), Outcome::Held);
        let bytes = (first.len() + second.len()) as u64;
        assert_eq!(releases(&mut p), [first, second], "both, byte for byte, in order");
        let held = p.take_held_verdicts();
        assert_eq!(held.0[Action::Allow.index()], (2, bytes), "counted under their verdict");
        assert_eq!(p.take_held_verdicts(), HeldVerdicts::default(), "taken once");
        assert_eq!(server_name(&mut p).as_deref(), Some("www.example.com"));
        assert_eq!((names(&p, NameResult::Found), p.flow_counts().pending), (1, 0));
        let packets = p.flows().map(|f| f.packets).sum::<u64>();
        assert_eq!(packets, 5, "the handshake and the two held segments, each once");
        let hits = |rule| cell.load().rule_hits.total(rule);
        assert_eq!(hits(Some(0)), 5, "all of them under the rule that decided, at the verdict");
        assert_eq!((hits(Some(2)), hits(None)), (0, 0));
        let more = data(40_000, hello.len() as u32, b"application data");
        assert_eq!(run(&mut p, &more), Outcome::SendBack(Action::Allow));
        assert!(releases(&mut p).is_empty());
        assert_eq!(hits(Some(0)), 6);
    }

    #[test]
    fn flows_showing_the_same_name_share_it_and_it_is_let_go_with_the_last_of_them() {
        let (mut p, _) = named(NameLimits { max_pending: 16, ..small() });
        let www = client_hello("openssl_tls13_sni");
        let org = client_hello("openssl_tls12_sni");
        for (port, hello) in (41_000..41_006).zip([&www, &www, &www, &www, &org, &org]) {
            handshake(&mut p, port);
            assert_eq!(run(&mut p, &data(port, 0, hello)), Outcome::Held);
        }
        assert_eq!(names(&p, NameResult::Found), 6);
        assert_eq!(p.distinct_server_names(), 2, "www.example.com and mixed.example.org");
        let mut shown: Vec<String> = p.named_flows().map(|(_, name)| name.to_string()).collect();
        shown.sort();
        assert_eq!(shown, [&["mixed.example.org"; 2][..], &["www.example.com"; 4]].concat());
        // The denied flows idle out first (the allowed ones stay busy): their name goes.
        let timeouts = crate::conntrack::Timeouts::default();
        let later = 1 + timeouts.tcp_ms / 2;
        p.begin_batch(later);
        for port in 41_000..41_004 {
            let more = data(port, www.len() as u32, b"still talking");
            assert_eq!(run(&mut p, &more), Outcome::SendBack(Action::Allow));
        }
        p.begin_batch(2 + timeouts.tcp_ms);
        assert_eq!(p.flow_counts().active, 4);
        assert_eq!(p.distinct_server_names(), 1);
        p.finish(|_| {});
        assert_eq!(p.distinct_server_names(), 0, "every flow let its name go");
    }

    #[test]
    fn a_denied_name_drops_what_was_held_and_the_rest_of_the_flow() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_001);
        let hello = client_hello("openssl_tls12_sni"); // Mixed.Example.ORG
        assert_eq!(run(&mut p, &data(40_001, 0, &hello)), Outcome::Held);
        assert!(releases(&mut p).is_empty());
        assert_eq!(server_name(&mut p).as_deref(), Some("mixed.example.org"));
        assert_eq!(p.take_held_verdicts().0[Action::Deny.index()].0, 1);
        let more = data(40_001, hello.len() as u32, b"more");
        assert_eq!(run(&mut p, &more), Outcome::Withhold(Action::Deny));
    }

    #[test]
    fn a_rejected_name_resets_the_client_and_the_server_in_sequence() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_002);
        let hello = client_hello("openssl_records"); // records.example.net: no rule names it
        // Its records make several segments in the capture: feed them as they came.
        let mut offset = 0;
        for piece in client_capture("openssl_records").segments.iter().filter(|s| !s.syn) {
            if piece.payload.is_empty() {
                continue;
            }
            let outcome = run(&mut p, &data(40_002, offset, &piece.payload));
            assert_eq!(outcome, Outcome::Held);
            offset += piece.payload.len() as u32;
        }
        assert_eq!(offset as usize, hello.len());
        let rsts = releases(&mut p);
        assert_eq!(rsts.len(), 2, "one RST to each end, nothing of the client's");
        let to_client = decode(&rsts[0]).unwrap().inner;
        let to_server = decode(&rsts[1]).unwrap().inner;
        assert_eq!((to_client.src, to_client.dst), (SERVER.into(), CLIENT.into()));
        assert_eq!((to_server.src, to_server.dst), (CLIENT.into(), SERVER.into()));
        match (to_client.transport, to_server.transport) {
            (
                Transport::Tcp { src_port: 443, dst_port: 40_002, flags: f1, seq: s1, .. },
                Transport::Tcp { src_port: 40_002, dst_port: 443, flags: f2, seq: s2, .. },
            ) => {
                assert_eq!((f1, f2), (tcp_flags::RST, tcp_flags::RST));
                // What the client acknowledged; what the server expects next.
                assert_eq!((s1, s2), (SERVER_ISN + 1, ISN + 1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(&rsts[0][..40], &data(40_002, 0, b"x")[..40], "in the flow's GENEVE header");
        assert_eq!(names(&p, NameResult::Found), 1);
    }

    #[test]
    fn a_client_that_resets_while_it_waits_gets_its_rst_through_and_nothing_held() {
        let (mut p, cell) = named(small());
        handshake(&mut p, 40_013);
        let hello = client_hello("openssl_tls13_sni");
        assert_eq!(run(&mut p, &data(40_013, 0, &hello[..100])), Outcome::Held);
        let rst = segment((CLIENT, 40_013), (SERVER, 443), tcp_flags::RST, ISN + 101, 0, &[]);
        assert_eq!(run(&mut p, &rst), Outcome::SendBack(Action::Allow), "the server may know");
        assert!(releases(&mut p).is_empty(), "what it held never reaches the server");
        assert_eq!(p.take_held_verdicts().0[Action::Deny.index()].0, 1);
        assert_eq!((p.flow_counts().pending, names(&p, NameResult::None)), (0, 1));
        // No name: the `others` rule (reject) decides; all five packets count under it.
        assert_eq!(cell.load().rule_hits.total(Some(2)), 5);
    }

    /// A client SYN carrying `payload` (TCP Fast Open).
    fn syn_with_data(port: u16, payload: &[u8]) -> Vec<u8> {
        segment((CLIENT, port), (SERVER, 443), SYN, ISN, 0, payload)
    }

    #[test]
    fn a_fast_open_syn_whose_data_shows_an_allowed_name_passes_with_it() {
        let (mut p, _) = named(small());
        let syn = syn_with_data(40_010, &client_hello("openssl_tls13_sni"));
        assert_eq!(run(&mut p, &syn), Outcome::SendBack(Action::Allow));
        assert_eq!(server_name(&mut p).as_deref(), Some("www.example.com"));
        assert_eq!((p.flow_counts().pending, names(&p, NameResult::Found)), (0, 1));
        assert!(releases(&mut p).is_empty());
    }

    #[test]
    fn a_fast_open_syn_whose_data_shows_a_refused_name_never_reaches_the_server() {
        let (mut p, _) = named(small());
        let syn = syn_with_data(40_011, &client_hello("openssl_records"));
        assert_eq!(run(&mut p, &syn), Outcome::Withhold(Action::Reject));
        let rsts = releases(&mut p);
        let to_client = decode(&rsts[0]).unwrap().inner;
        assert_eq!((to_client.src, to_client.dst), (SERVER.into(), CLIENT.into()));
        match to_client.transport {
            // Acknowledging the SYN, as a RST to a client in SYN-SENT must.
            Transport::Tcp { flags, ack, .. } => {
                assert_eq!((flags, ack), (tcp_flags::RST | tcp_flags::ACK, ISN + 1))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            rsts.iter()
                .all(|r| decode(r).unwrap().inner.transport.tcp_flags() & tcp_flags::RST != 0)
        );
        assert_eq!(p.flow_counts().pending, 0);
    }

    #[test]
    fn a_fast_open_syn_with_part_of_a_client_hello_is_dropped_and_the_flow_goes_on_without_it() {
        let (mut p, _) = named(small());
        let hello = client_hello("openssl_tls13_sni");
        let syn = syn_with_data(40_012, &hello[..hello.len() / 2]);
        assert_eq!(run(&mut p, &syn), Outcome::Withhold(Action::Deny), "its data cannot wait");
        assert_eq!(p.flow_counts().pending, 1, "the flow still waits for its name");
        // The client sends its SYN again without data, then the data after the handshake.
        handshake(&mut p, 40_012);
        assert_eq!(run(&mut p, &data(40_012, 0, &hello)), Outcome::Held);
        assert_eq!(releases(&mut p).len(), 1, "allowed: the ClientHello goes on");
        assert_eq!(server_name(&mut p).as_deref(), Some("www.example.com"));
    }

    #[test]
    fn a_client_hello_split_and_reordered_is_read_once_whole() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_003);
        let hello = client_hello("openssl_tls13_sni");
        let cut = 100;
        let (first, second) =
            (data(40_003, 0, &hello[..cut]), data(40_003, cut as u32, &hello[cut..]));
        assert_eq!(run(&mut p, &second), Outcome::Held);
        assert!(releases(&mut p).is_empty());
        assert_eq!(run(&mut p, &first), Outcome::Held);
        assert_eq!(releases(&mut p), [second, first], "as they arrived: TCP puts them in order");
        assert_eq!(server_name(&mut p).as_deref(), Some("www.example.com"));
    }

    #[test]
    fn a_retransmission_of_held_bytes_is_not_held_twice() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_004);
        let hello = client_hello("openssl_tls13_sni");
        let cut = 100;
        let (first, second) =
            (data(40_004, 0, &hello[..cut]), data(40_004, cut as u32, &hello[cut..]));
        assert_eq!(run(&mut p, &first), Outcome::Held);
        assert_eq!(run(&mut p, &first), Outcome::Held, "the retransmission waits too");
        assert_eq!(run(&mut p, &second), Outcome::Held);
        assert_eq!(releases(&mut p), [first, second], "the first copy once");
        assert_eq!(p.take_held_verdicts().0[Action::Allow.index()].0, 3, "all three judged");
    }

    #[test]
    fn past_max_bytes_the_flow_is_judged_with_no_name_and_counted() {
        let limits = NameLimits { max_bytes: 1024, ..small() };
        let (mut p, _) = named(limits);
        handshake(&mut p, 40_005);
        // An HTTP request head that never ends within the budget.
        let head = [&b"GET / HTTP/1.1\r\nX-Padding: "[..], &[b'a'; 1100]].concat();
        assert_eq!(run(&mut p, &data(40_005, 0, &head[..600])), Outcome::Held);
        assert_eq!(run(&mut p, &data(40_005, 600, &head[600..])), Outcome::Held);
        // No name: the reject rule decides, and the RSTs replace what was held.
        assert_eq!(releases(&mut p).len(), 2);
        assert_eq!(names(&p, NameResult::TooLong), 1);
        assert_eq!(p.flow_counts().pending, 0);
    }

    #[test]
    fn past_max_pending_a_new_flow_is_judged_with_no_name_and_counted() {
        let limits = NameLimits { max_pending: 1, ..small() };
        let (mut p, _) = named(limits);
        handshake(&mut p, 40_006);
        let syn = segment((CLIENT, 40_007), (SERVER, 443), SYN, ISN, 0, &[]);
        assert!(matches!(run(&mut p, &syn), Outcome::Reject { .. }), "the reject rule, at once");
        assert_eq!(names(&p, NameResult::PendingFull), 1);
        assert_eq!(p.flow_counts().pending, 1);
    }

    #[test]
    fn past_the_timeout_the_flow_is_judged_with_no_name_and_counted() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_008);
        p.begin_batch(1 + 4_999);
        assert_eq!(p.flow_counts().pending, 1, "not yet");
        p.begin_batch(1 + 5_000);
        assert_eq!(p.flow_counts().pending, 0);
        assert_eq!(names(&p, NameResult::Timeout), 1);
        // Rejected with no name: the client (its ACK seen) and the server get their RSTs.
        assert_eq!(releases(&mut p).len(), 2);
        let late = data(40_008, 0, b"GET / HTTP/1.1\r\n");
        assert!(matches!(run(&mut p, &late), Outcome::Reject { .. }));
    }

    #[test]
    fn a_flow_picked_up_mid_flow_is_judged_with_no_name_and_counted() {
        let (mut p, _) = named(small());
        assert!(matches!(run(&mut p, &data(40_009, 5, b"mid-stream")), Outcome::Reject { .. }));
        assert_eq!(names(&p, NameResult::PickedUpMidFlow), 1);
        assert_eq!(p.flow_counts().pending, 0);
    }

    #[test]
    fn a_policy_change_rejudges_a_flow_with_its_name() {
        let (mut p, cell) = named(small());
        handshake(&mut p, 40_010);
        let hello = client_hello("openssl_tls13_sni");
        run(&mut p, &data(40_010, 0, &hello));
        releases(&mut p);
        let next = |n: u32| data(40_010, hello.len() as u32 + n, b"x");
        // Another rule order: still allowed by name (without it the reject rule would match).
        cell.store(snapshot(2, &NAMED.replace("action: deny}", "action: audit}")));
        p.begin_batch(2);
        assert_eq!(run(&mut p, &next(0)), Outcome::SendBack(Action::Allow));
        // The name's rule now denies.
        cell.store(snapshot(
            3,
            &NAMED.replace("udp/443], action: allow", "udp/443], action: deny"),
        ));
        p.begin_batch(3);
        assert_eq!(run(&mut p, &next(1)), Outcome::Withhold(Action::Deny));
    }

    #[test]
    fn a_policy_change_that_no_longer_needs_the_name_decides_a_waiting_flow() {
        let (mut p, cell) = named(small());
        handshake(&mut p, 40_015);
        let first = data(40_015, 0, b"GET / HT");
        assert_eq!(run(&mut p, &first), Outcome::Held);
        // The names rules are gone: clients to tcp/443 are allowed by address.
        let by_address = "default_action: deny\ngroups:\n  clients: {cidrs: [10.0.1.0/24]}\n\
            rules:\n  - {name: web, from: [clients], to: [any], ports: [tcp/443], action: allow}\n";
        cell.store(snapshot(2, by_address));
        p.begin_batch(2);
        let second = data(40_015, 8, b"TP/1.1\r\n");
        assert_eq!(run(&mut p, &second), Outcome::SendBack(Action::Allow), "after the held one");
        assert_eq!(releases(&mut p), [first]);
        assert_eq!(p.flow_counts().pending, 0);
        assert_eq!(p.flow_counts().server_names, NameCounts::default(), "no name was read");
    }

    #[test]
    fn a_policy_without_domains_groups_never_holds() {
        let (mut p, _) = pipeline();
        let c = (CLIENT, 40_011);
        let db = (DB, 3306);
        let pass = Outcome::SendBack(Action::Allow);
        assert_eq!(run(&mut p, &segment(c, db, SYN, ISN, 0, &[])), pass);
        assert_eq!(run(&mut p, &segment(c, db, ACK, ISN + 1, 1, b"\x16\x03\x01")), pass);
        assert_eq!(p.flow_counts().pending, 0);
        assert_eq!(p.flow_counts().server_names, NameCounts::default());
    }

    #[test]
    fn a_logged_flow_starts_in_the_flow_log_at_its_verdict_with_its_name() {
        let policy = NAMED.replace("udp/443], action: allow", "udp/443], action: allow, log: true");
        let cell = Arc::new(arc_swap::ArcSwap::new(snapshot(1, &policy)));
        let settings = FlowSettings { names: small(), ..FlowSettings::default() };
        let mut p = Pipeline::new(Mode::Inspect, 0, Some(cell), settings, true);
        p.begin_batch(1);
        handshake(&mut p, 40_012);
        assert!(p.poll_flow_record().is_none(), "no verdict, no start yet");
        run(&mut p, &data(40_012, 0, &client_hello("openssl_tls13_sni")));
        let start = p.poll_flow_record().expect("the start, at the verdict");
        assert_eq!(start.rule.as_deref(), Some("allowed-api"));
        assert_eq!(start.server_name.map(|n| n.to_string()).as_deref(), Some("www.example.com"));
    }

    #[test]
    fn a_syn_from_the_server_of_a_pending_flow_is_a_connection_of_its_own() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_013);
        let syn = segment((SERVER, 443), (CLIENT, 40_013), SYN, 7, 0, &[]);
        assert_eq!(run(&mut p, &syn), Outcome::Withhold(Action::Deny), "the default denies");
        assert_eq!(p.flow_counts().pending, 1, "the pending flow is untouched");
    }

    #[test]
    fn past_the_held_datagrams_room_the_flow_is_judged_and_the_last_goes_after_the_held() {
        let (mut p, _) = named(small());
        handshake(&mut p, 40_014);
        let head = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX: 0123456789\r\n";
        let mut sent = 0;
        for byte in &head[..MAX_HELD] {
            assert_eq!(run(&mut p, &data(40_014, sent, &[*byte])), Outcome::Held);
            sent += 1;
        }
        // One more than the pool holds per flow: judged with no name (the reject rule).
        let last = data(40_014, sent, &head[MAX_HELD..]);
        assert_eq!(run(&mut p, &last), Outcome::Withhold(Action::Reject));
        assert_eq!(releases(&mut p).len(), 2, "the RSTs, not the held bytes");
        assert_eq!(names(&p, NameResult::TooLong), 1);
    }

    #[test]
    fn quic_initials_are_held_until_their_name_is_read() {
        let (mut p, _) = named(small());
        let capture = client_capture("aioquic_v1");
        let mut sent = Vec::new();
        for payload in &capture.datagrams {
            let mut inner = Vec::new();
            PacketBuilder::ipv4(CLIENT, SERVER, 64)
                .udp(50_000, 443)
                .write(&mut inner, payload)
                .unwrap();
            let datagram = geneve(inner);
            assert_eq!(run(&mut p, &datagram), Outcome::Held);
            sent.push(datagram);
            if p.flow_counts().pending == 0 {
                break;
            }
        }
        assert_eq!(releases(&mut p), sent);
        assert_eq!(server_name(&mut p).as_deref(), Some("quic.example.com"));
    }
}
