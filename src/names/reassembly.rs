//! Joining a byte stream that arrives in pieces (TCP segments, QUIC CRYPTO frames) into the
//! contiguous bytes from its start, in a caller-provided buffer.
//! Must not depend on: anything but std.
//!
//! `Reassembly` works on offsets from the stream's start (a QUIC CRYPTO offset is one);
//! `TcpReassembly` turns sequence numbers into such offsets (the SYN's sequence number is the
//! ISN, data starts one after it, arithmetic modulo 2^32). The state is a small `Copy` struct
//! and the bytes live in a buffer the caller owns, whose length is the capacity
//! (`names.max_bytes`), so buffers can come from a pool and nothing is allocated per piece.
//!
//! Invariants: the first copy of a byte wins (a retransmission or overlap never changes a byte
//! already stored, since what was judged must be what the server gets); bytes past the
//! capacity are dropped and remembered (`beyond_capacity`); at most `MAX_RANGES` separate
//! ranges wait behind gaps, and a piece that would need one more is refused whole (it is
//! retransmitted, or the caller gives up at its timeout).

/// How many separate ranges may wait behind gaps. Chrome splits a ClientHello into a handful
/// of CRYPTO frames; TCP rarely has more than a few segments in flight this early.
pub const MAX_RANGES: usize = 16;

/// The state of one stream's reassembly (the bytes are in the caller's buffer).
#[derive(Debug, Clone, Copy)]
pub struct Reassembly {
    /// Bytes `[0, contiguous)` are stored.
    contiguous: u32,
    /// Stored ranges past `contiguous`, sorted, neither overlapping nor touching.
    ranges: [(u32, u32); MAX_RANGES],
    count: u8,
    beyond_capacity: bool,
    conflicting: bool,
}

/// What one piece did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The contiguous bytes from the start grew: worth reading again.
    Advanced,
    /// Stored behind a gap.
    Buffered,
    /// Nothing new: a copy of stored bytes, bytes past the capacity, or no bytes.
    Nothing,
    /// Not stored: it would have needed more than `MAX_RANGES` ranges behind gaps.
    Refused,
}

impl Default for Reassembly {
    fn default() -> Reassembly {
        Reassembly::new()
    }
}

impl Reassembly {
    pub const fn new() -> Reassembly {
        Reassembly {
            contiguous: 0,
            ranges: [(0, 0); MAX_RANGES],
            count: 0,
            beyond_capacity: false,
            conflicting: false,
        }
    }

    /// Stores the bytes of `data` at `offset` from the stream's start that are not stored
    /// yet. `buf` is the stream's buffer; pass the same one every time.
    pub fn insert(&mut self, buf: &mut [u8], offset: u64, data: &[u8]) -> Insert {
        let capacity = buf.len().min(u32::MAX as usize) as u64;
        let end = offset.saturating_add(data.len() as u64);
        if end > capacity {
            self.beyond_capacity = true;
        }
        let end = end.min(capacity);
        if offset >= end {
            return Insert::Nothing;
        }
        let (start, end) = (offset as u32, end as u32);
        let data = &data[..(end - start) as usize];
        let was = self.contiguous;
        // A piece past the gaps that touches no stored range needs a range of its own.
        if start > was
            && usize::from(self.count) == MAX_RANGES
            && !self.live().iter().any(|&(s, e)| s <= end && e >= start)
        {
            return Insert::Refused;
        }
        let before = self.stored_within(start, end);
        self.write_gaps(buf, start, data);
        if before == end - start {
            return Insert::Nothing;
        }
        self.merge(start, end);
        if self.contiguous > was { Insert::Advanced } else { Insert::Buffered }
    }

    /// How many bytes from the start are stored without a gap.
    pub fn contiguous(&self) -> usize {
        self.contiguous as usize
    }

    /// The contiguous bytes from the start.
    pub fn bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[..self.contiguous()]
    }

    /// Whether a piece reached past the buffer's capacity.
    pub fn beyond_capacity(&self) -> bool {
        self.beyond_capacity
    }

    /// Whether a later copy of a byte differed from the stored first one (an evasion attempt,
    /// or a broken sender).
    pub fn conflicting(&self) -> bool {
        self.conflicting
    }

    fn live(&self) -> &[(u32, u32)] {
        &self.ranges[..usize::from(self.count)]
    }

    /// How many bytes of `[start, end)` are stored already.
    fn stored_within(&self, start: u32, end: u32) -> u32 {
        let overlap = |s: u32, e: u32| e.min(end).saturating_sub(s.max(start));
        overlap(0, self.contiguous) + self.live().iter().map(|&(s, e)| overlap(s, e)).sum::<u32>()
    }

    /// Copies the bytes of `data` (at `start`) that fall in gaps; compares the others.
    fn write_gaps(&mut self, buf: &mut [u8], start: u32, data: &[u8]) {
        let end = start + data.len() as u32;
        let mut conflicting = false;
        let mut at = start;
        let mut visit = |buf: &mut [u8], from: u32, to: u32, stored: bool| {
            let (b, d) =
                (from as usize..to as usize, (from - start) as usize..(to - start) as usize);
            if stored {
                conflicting |= buf[b] != data[d];
            } else {
                buf[b].copy_from_slice(&data[d]);
            }
        };
        for &(s, e) in std::iter::once(&(0, self.contiguous)).chain(self.live()) {
            let (s, e) = (s.max(at), e.min(end));
            if s >= e {
                continue;
            }
            if s > at {
                visit(buf, at, s, false);
            }
            visit(buf, s, e, true);
            at = e;
        }
        if at < end {
            visit(buf, at, end, false);
        }
        self.conflicting |= conflicting;
    }

    /// Records `[start, end)` as stored: joins the ranges it overlaps or touches, and moves
    /// ranges that now touch the start into `contiguous`.
    fn merge(&mut self, start: u32, end: u32) {
        let (mut s, mut e) = (start, end);
        let mut kept = 0;
        for i in 0..usize::from(self.count) {
            let (rs, re) = self.ranges[i];
            if rs <= e && re >= s {
                (s, e) = (s.min(rs), e.max(re));
            } else {
                self.ranges[kept] = (rs, re);
                kept += 1;
            }
        }
        self.count = kept as u8;
        if s <= self.contiguous {
            self.contiguous = self.contiguous.max(e);
            return;
        }
        // Ranges stay sorted: the joined one goes before the first that starts after it.
        let at = self.live().iter().position(|&(rs, _)| rs > s).unwrap_or(kept);
        self.ranges.copy_within(at..kept, at + 1);
        self.ranges[at] = (s, e);
        self.count += 1;
    }
}

/// A TCP client's bytes by sequence number: `Reassembly` once the SYN told where the stream
/// starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpReassembly {
    /// Sequence number of the stream's first byte (the ISN plus one), once the SYN was seen.
    start: Option<u32>,
    stream: Reassembly,
}

impl TcpReassembly {
    pub const fn new() -> TcpReassembly {
        TcpReassembly { start: None, stream: Reassembly::new() }
    }

    /// Feeds one client segment. The first SYN fixes the ISN (data in it counts); segments
    /// before it, and a later SYN with another sequence number, store nothing. Bytes before
    /// the stream's start (keep-alive probes, a SYN's sequence number) are cut off.
    pub fn segment(&mut self, buf: &mut [u8], seq: u32, syn: bool, payload: &[u8]) -> Insert {
        let first = if syn { seq.wrapping_add(1) } else { seq };
        let start = match self.start {
            None if syn => *self.start.insert(first),
            Some(start) if !syn || start == first => start,
            _ => return Insert::Nothing,
        };
        // Modulo 2^32: a distance of 2^31 or more is taken as lying before the start.
        let distance = first.wrapping_sub(start);
        let (offset, payload) = match distance.checked_sub(1 << 31) {
            None => (u64::from(distance), payload),
            Some(_) => {
                let behind = start.wrapping_sub(first) as usize;
                match payload.get(behind..) {
                    Some(rest) if !rest.is_empty() => (0, rest),
                    _ => return Insert::Nothing,
                }
            }
        };
        self.stream.insert(buf, offset, payload)
    }

    /// Whether the SYN was seen.
    pub fn started(&self) -> bool {
        self.start.is_some()
    }

    pub fn stream(&self) -> &Reassembly {
        &self.stream
    }

    /// The contiguous bytes from the stream's start.
    pub fn bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.stream.bytes(buf)
    }
}
