//! Server names: the name a client asks for, read from its first bytes (TLS SNI, HTTP/1.x
//! `Host` or absolute-form target, QUIC v1/v2 Initial packets), as pure functions over bytes.
//! Must not depend on: sockets, logging, the pipeline, policy, the flow table.
//!
//! What it owns:
//! - `ServerName`: a normalized DNS host name stored inline (no heap, `Copy`), so that readers
//!   and pools hold it without allocating; `ServerName::parse` is the one definition of what a
//!   name is (ASCII lowercase, one trailing dot removed, labels of letters, digits, `-` and
//!   `_`, 1..=63 characters, at most 253 in all, not an IP literal).
//! - `Reading`: what the bytes seen so far say (a name, never a name, more bytes needed, or
//!   the name cannot show within the byte budget).
//! - `NameTable`: the names a worker's flows showed, each kept once and referenced by a 4-byte
//!   `NameId` from the flows that showed it.
//! - `read_stream` (TCP: TLS ClientHello over any number of records, else HTTP/1.x),
//!   `QuicInitials` (QUIC: keys, header protection, decryption, frames, CRYPTO reassembly),
//!   and `Reassembly`/`TcpReassembly`, which join out-of-order pieces of a byte stream in a
//!   caller-provided buffer (the first copy of a byte wins).
//!
//! Use (per pending flow, the buffers from a pool): TCP, `TcpReassembly::segment` for each
//! client segment (the SYN first), and `read_stream(stream.bytes(&buf), buf.len())` whenever
//! it returns `Insert::Advanced`; QUIC, `QuicInitials::datagram` for each client datagram
//! (the flow's first one first: it fixes the keys), with a per-worker scratch buffer of at
//! least the largest datagram. `NeedMore` means wait (up to `names.timeout`); the other
//! readings are final.
//!
//! Invariants: nothing here allocates, locks or logs; every function is total over arbitrary
//! input (the fuzz target in `fuzzing.rs` checks it); a reader answers `Found` only for a
//! complete, well-formed message (a whole ClientHello, a whole HTTP header block), never from a
//! prefix of one.

mod http;
mod quic;
mod reassembly;
mod table;
mod tls;

#[doc(hidden)]
pub mod fuzzing;

pub use quic::{QuicInitials, QuicVersion};
pub use reassembly::{Insert, MAX_RANGES, Reassembly, TcpReassembly};
pub use table::{NameId, NameTable};

/// The longest name: 253 characters (RFC 1035's 255 octets in wire form).
pub const MAX_NAME_LEN: usize = 253;

/// The longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// A normalized server name, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerName {
    len: u8,
    bytes: [u8; MAX_NAME_LEN],
}

/// Why bytes are not a server name (for `explain --server-name` and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("the name has an empty label")]
    EmptyLabel,
    #[error("a label is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("the name has a character that is not a letter, digit, '-' or '_' (byte {0:#04x})")]
    BadCharacter(u8),
    #[error("an IP address is not a server name")]
    IpLiteral,
}

impl ServerName {
    /// Normalizes and checks `raw`: ASCII lowercase, one trailing dot removed, DNS host
    /// syntax. A last label that is all digits (or `0x` and hex digits) makes an IPv4 literal
    /// in URL parsers (WHATWG), and no top-level domain is numeric, so such names are refused;
    /// IPv6 literals fail on ':' already.
    pub fn parse(raw: &[u8]) -> Result<ServerName, NameError> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let mut name = ServerName { len: raw.len() as u8, bytes: [0; MAX_NAME_LEN] };
        let mut label_len = 0;
        for (slot, &byte) in name.bytes.iter_mut().zip(raw) {
            match byte {
                b'.' if label_len == 0 => return Err(NameError::EmptyLabel),
                b'.' => label_len = 0,
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {
                    label_len += 1;
                    if label_len > MAX_LABEL_LEN {
                        return Err(NameError::LabelTooLong);
                    }
                }
                other => return Err(NameError::BadCharacter(other)),
            }
            *slot = byte.to_ascii_lowercase();
        }
        if label_len == 0 {
            // A name ending in "..": the one trailing dot was removed, another remains.
            return Err(NameError::EmptyLabel);
        }
        let last = name.as_str().rsplit('.').next().unwrap_or_default();
        let hex = last.strip_prefix("0x").filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if last.bytes().all(|b| b.is_ascii_digit()) || hex.is_some() {
            return Err(NameError::IpLiteral);
        }
        Ok(name)
    }

    /// The name, lowercase, without a trailing dot.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerName({:?})", self.as_str())
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServerName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<ServerName, NameError> {
        ServerName::parse(s.as_bytes())
    }
}

/// What a flow's bytes so far say about its server name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "the name is inline on purpose: boxing allocates")]
pub enum Reading {
    /// The name, from a complete and well-formed ClientHello or HTTP request head.
    Found(ServerName),
    /// These bytes can never show a name: not TLS, HTTP or QUIC, a ClientHello without
    /// `server_name` (or with an invalid one), a malformed message.
    NoName,
    /// The message is not complete yet.
    NeedMore,
    /// The message would not fit in the byte budget (`names.max_bytes`).
    TooLong,
}

/// The first record-layer byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 22;

/// Reads the server name from the first `max_bytes` of what a TCP client sent, from the
/// start of the stream: the SNI of a TLS ClientHello when the bytes begin with a TLS
/// handshake record (the ClientHello may span several records), else the host of an
/// HTTP/1.x request. `client_bytes` holds the contiguous bytes received so far; anything past
/// `max_bytes` is ignored, and a message still incomplete at `max_bytes` is `TooLong`.
pub fn read_stream(client_bytes: &[u8], max_bytes: usize) -> Reading {
    let bytes = &client_bytes[..client_bytes.len().min(max_bytes)];
    let reading = match bytes {
        [] => Reading::NeedMore,
        // A record header: type 22, major version 3 (SSL 3.0 up to TLS 1.3's legacy 3.1).
        [TLS_HANDSHAKE] | [TLS_HANDSHAKE, 3, ..] => tls::read_records(bytes, max_bytes),
        _ => http::read_request(bytes),
    };
    match reading {
        Reading::NeedMore if bytes.len() >= max_bytes => Reading::TooLong,
        other => other,
    }
}

#[cfg(test)]
mod tests;
