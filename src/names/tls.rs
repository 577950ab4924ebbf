//! The TLS ClientHello reader: handshake bytes, from TLS records (TCP) or a QUIC CRYPTO
//! stream, to the `server_name` extension (RFC 8446 4.1.2, RFC 6066 3).
//! Must not depend on: anything but `names`.
//!
//! Hand-written rather than tls-parser: tls-parser (rusticata) parses one record at a time
//! and leaves joining a ClientHello split over records to the caller, which would mean
//! copying the fragments into a second buffer per flow; and its ClientHello and extension
//! parsers return `Vec`s (cipher suites, extensions), an allocation per read on the packet
//! path. What is needed here is a length-checked walk over a few length prefixes: a cursor
//! that reads across record boundaries in place (the record headers are skipped as it goes,
//! so a field split between two records reads like any other), and about fifty lines of
//! ClientHello walking.

use super::{Reading, ServerName, TLS_HANDSHAKE};

/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of `server_name`.
const SERVER_NAME: u16 = 0;
/// `NameType` of a host name in the server name list.
const HOST_NAME: u8 = 0;
/// Record header: type, legacy version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Largest plaintext record fragment (RFC 8446 5.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Handshake header: type, length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;

/// Why reading stopped before a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    NeedMore,
    NoName,
    TooLong,
}

impl From<Stop> for Reading {
    fn from(stop: Stop) -> Reading {
        match stop {
            Stop::NeedMore => Reading::NeedMore,
            Stop::NoName => Reading::NoName,
            Stop::TooLong => Reading::TooLong,
        }
    }
}

/// Reads the ClientHello carried in TLS handshake records from the start of `bytes`.
/// `budget` is the most bytes that will ever be available (names.max_bytes).
pub(super) fn read_records(bytes: &[u8], budget: usize) -> Reading {
    let cursor = Cursor { data: bytes, records: true, pos: 0, fragment_end: 0 };
    read_client_hello(cursor, budget, RECORD_HEADER_LEN)
}

/// Reads the ClientHello at the start of a handshake byte stream without records (a QUIC
/// CRYPTO stream); `budget` as above.
pub(super) fn read_handshake(bytes: &[u8], budget: usize) -> Reading {
    let cursor = Cursor { data: bytes, records: false, pos: 0, fragment_end: bytes.len() };
    read_client_hello(cursor, budget, 0)
}

fn read_client_hello(mut cursor: Cursor<'_>, budget: usize, framing: usize) -> Reading {
    match handshake_message(&mut cursor, budget, framing) {
        Ok(name) => Reading::Found(name),
        Err(stop) => stop.into(),
    }
}

/// The handshake header, then the ClientHello. `framing` is the least the message costs on
/// top of its own bytes (one record header), to tell early that it cannot fit in `budget`.
fn handshake_message(
    cursor: &mut Cursor<'_>,
    budget: usize,
    framing: usize,
) -> Result<ServerName, Stop> {
    let header = cursor.array::<HANDSHAKE_HEADER_LEN>()?;
    if header[0] != CLIENT_HELLO {
        return Err(Stop::NoName);
    }
    let length = usize::from(header[1]) << 16 | usize::from(header[2]) << 8;
    let length = length | usize::from(header[3]);
    if length + HANDSHAKE_HEADER_LEN + framing > budget {
        return Err(Stop::TooLong);
    }
    // The whole message must be there before its fields are read. Telling costs a look at
    // each record header, and saves walking the fields of a partial message at every segment.
    cursor.clone().take(length, |_| ())?;
    client_hello(&mut Body { cursor, left: length })
}

/// The ClientHello body: its fields, then every extension, so that `Found` means the whole
/// message was there and well-formed.
fn client_hello(body: &mut Body<'_, '_>) -> Result<ServerName, Stop> {
    body.skip(2 + 32)?; // legacy_version, random
    let session_id = body.u8()?;
    if session_id > 32 {
        return Err(Stop::NoName);
    }
    body.skip(usize::from(session_id))?;
    let cipher_suites = body.u16()?;
    if cipher_suites < 2 || cipher_suites % 2 != 0 {
        return Err(Stop::NoName);
    }
    body.skip(usize::from(cipher_suites))?;
    let compression = body.u8()?;
    if compression == 0 {
        return Err(Stop::NoName);
    }
    body.skip(usize::from(compression))?;
    if body.left == 0 {
        return Err(Stop::NoName); // no extensions, so no server_name
    }
    if usize::from(body.u16()?) != body.left {
        return Err(Stop::NoName);
    }
    let mut found = None;
    while body.left > 0 {
        let kind = body.u16()?;
        let length = usize::from(body.u16()?);
        if length > body.left {
            return Err(Stop::NoName);
        }
        if kind != SERVER_NAME {
            body.skip(length)?;
        } else if found.is_some() {
            return Err(Stop::NoName); // RFC 8446 4.2: at most one of each type
        } else {
            found = Some(server_name(&mut Body { cursor: body.cursor, left: length })?);
            body.left -= length;
        }
    }
    found.ok_or(Stop::NoName)
}

/// The `server_name` extension's data: a list of (type, name) of which exactly one is a host
/// name (RFC 6066: no two of one type; an unknown type is skipped).
fn server_name(data: &mut Body<'_, '_>) -> Result<ServerName, Stop> {
    if usize::from(data.u16()?) != data.left || data.left == 0 {
        return Err(Stop::NoName);
    }
    let mut found = None;
    while data.left > 0 {
        let kind = data.u8()?;
        let length = usize::from(data.u16()?);
        if length > data.left {
            return Err(Stop::NoName);
        }
        if kind != HOST_NAME {
            data.skip(length)?;
            continue;
        }
        // One byte over the longest name: a trailing dot.
        let mut raw = [0u8; super::MAX_NAME_LEN + 1];
        if found.is_some() || length > raw.len() {
            return Err(Stop::NoName);
        }
        data.copy(&mut raw[..length])?;
        found = Some(ServerName::parse(&raw[..length]).map_err(|_| Stop::NoName)?);
    }
    found.ok_or(Stop::NoName)
}

/// Handshake bytes in place: with `records`, the bytes are TLS records and their headers are
/// checked and skipped between fragments; without, `data` is the handshake stream itself.
#[derive(Clone)]
struct Cursor<'a> {
    data: &'a [u8],
    records: bool,
    /// The next byte to read.
    pos: usize,
    /// Where the current record's fragment ends (may lie past the data received so far).
    fragment_end: usize,
}

impl Cursor<'_> {
    /// Passes the next `n` handshake bytes to `sink`, piece by piece.
    fn take(&mut self, mut n: usize, mut sink: impl FnMut(&[u8])) -> Result<(), Stop> {
        while n > 0 {
            if self.pos == self.fragment_end {
                self.next_record()?;
            }
            let available = self.fragment_end.min(self.data.len());
            if self.pos >= available {
                return Err(Stop::NeedMore);
            }
            let piece = n.min(available - self.pos);
            sink(&self.data[self.pos..self.pos + piece]);
            self.pos += piece;
            n -= piece;
        }
        Ok(())
    }

    /// Steps over the next record header; every record of the message must be a non-empty
    /// handshake record (RFC 8446 5.1: no interleaving, no empty handshake fragments).
    fn next_record(&mut self) -> Result<(), Stop> {
        if !self.records {
            return Err(Stop::NeedMore);
        }
        let Some(header) = self.data.get(self.pos..self.pos + RECORD_HEADER_LEN) else {
            // What there is of the header must still be a handshake record's.
            return match self.data.get(self.pos..) {
                Some([kind, ..]) if *kind != TLS_HANDSHAKE => Err(Stop::NoName),
                Some([_, major, ..]) if *major != 3 => Err(Stop::NoName),
                _ => Err(Stop::NeedMore),
            };
        };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != TLS_HANDSHAKE || header[1] != 3 || length == 0 {
            return Err(Stop::NoName);
        }
        if length > MAX_FRAGMENT_LEN {
            return Err(Stop::NoName); // record_overflow
        }
        self.pos += RECORD_HEADER_LEN;
        self.fragment_end = self.pos + length;
        Ok(())
    }

    fn copy(&mut self, out: &mut [u8]) -> Result<(), Stop> {
        let mut at = 0;
        self.take(out.len(), |piece| {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        })
    }

    /// The next `N` bytes; straight from the data when they are in the current fragment
    /// (nearly always: these are the ClientHello's 1- and 2-byte length fields).
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let end = self.fragment_end.min(self.data.len());
        let mut out = [0; N];
        if self.pos + N <= end {
            out.copy_from_slice(&self.data[self.pos..self.pos + N]);
            self.pos += N;
        } else {
            self.copy(&mut out)?;
        }
        Ok(out)
    }
}

/// A length-prefixed part of the message: reading past its end is malformed (a length that
/// lies), not a reason to wait for more bytes.
struct Body<'c, 'a> {
    cursor: &'c mut Cursor<'a>,
    left: usize,
}

impl Body<'_, '_> {
    fn claim(&mut self, n: usize) -> Result<(), Stop> {
        self.left = self.left.checked_sub(n).ok_or(Stop::NoName)?;
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        self.claim(n)?;
        self.cursor.take(n, |_| ())
    }

    fn copy(&mut self, out: &mut [u8]) -> Result<(), Stop> {
        self.claim(out.len())?;
        self.cursor.copy(out)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        self.claim(1)?;
        Ok(self.cursor.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        self.claim(2)?;
        Ok(u16::from_be_bytes(self.cursor.array()?))
    }
}
