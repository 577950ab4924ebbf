//! The HTTP/1.x reader: a request head (httparse) to its host, from an absolute-form target
//! (`GET http://host:port/x HTTP/1.1`, which proxies and origin servers use instead of `Host`,
//! RFC 9112 3.2.2) or else the one `Host` header field; the port is stripped.
//! Must not depend on: anything but `names`.

use super::{Reading, ServerName};

/// Header fields looked at; a request with more is not read (httparse fails it whole).
const MAX_HEADERS: usize = 128;

pub(super) fn read_request(bytes: &[u8]) -> Reading {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Reading::NeedMore,
        Err(_) => return Reading::NoName,
    }
    let mut hosts = request.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next();
    if hosts.next().is_some() {
        return Reading::NoName; // RFC 9112 3.2: answered with 400, never served
    }
    let authority = match request.path.and_then(absolute_form_authority) {
        Some(authority) => authority,
        None => match host {
            Some(host) => host.value,
            None => return Reading::NoName,
        },
    };
    match host_of(authority).map(ServerName::parse) {
        Some(Ok(name)) => Reading::Found(name),
        _ => Reading::NoName,
    }
}

/// The authority of an `http://` or `https://` target; `None` for other forms.
fn absolute_form_authority(target: &str) -> Option<&[u8]> {
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let rest = &target.as_bytes()[scheme_end + 3..];
    let end = rest.iter().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The host of `host[:port]`, surrounding whitespace removed. `None` for an IPv6 literal,
/// userinfo (`user@host`, forbidden in http URIs and a classic way to confuse readers) or a
/// port that is not digits.
fn host_of(authority: &[u8]) -> Option<&[u8]> {
    let authority = authority.trim_ascii();
    if authority.starts_with(b"[") || authority.contains(&b'@') {
        return None;
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            let port = &authority[colon + 1..];
            (port.len() <= 5 && port.iter().all(u8::is_ascii_digit)).then(|| &authority[..colon])
        }
        None => Some(authority),
    }
}
