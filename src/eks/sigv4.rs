//! AWS Signature Version 4, query-string (presigned URL) form, for GET requests: what an EKS
//! token needs and no more. HMAC-SHA256 and SHA-256 are ring's (already linked for TLS).
//! Must not depend on: anything of labelwall's, I/O.
//!
//! Proven by AWS's SigV4 test suite (the query-signing vectors below) and, in
//! tests/eks_token.rs, against botocore's presigner. Dates are jiff's.

use jiff::Timestamp;
use ring::{digest, hmac};

/// AWS credentials. `Debug` never prints the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One GET request to presign.
#[derive(Debug, Clone)]
pub struct Presign<'a> {
    pub host: &'a str,
    /// Already normalized, e.g. `/`.
    pub path: &'a str,
    /// The request's own query parameters (unencoded).
    pub query: &'a [(&'a str, &'a str)],
    /// Headers signed besides `host` (name, value); names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    pub region: &'a str,
    pub service: &'a str,
    /// Seconds since the UNIX epoch.
    pub time: u64,
    /// `X-Amz-Expires`, seconds.
    pub expires: u64,
}

/// The steps of a signature, kept for tests and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    /// What goes after `?`: the query parameters (the request's in their order, then
    /// `X-Amz-Algorithm`, `-Credential`, `-Date`, `-Expires`, `-SignedHeaders`,
    /// `-Security-Token`), then `X-Amz-Signature`.
    pub query: String,
}

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Presigns `request` with `credentials` (SigV4 query parameters, session token included in
/// the signed query as `X-Amz-Security-Token`, the empty payload hashed).
pub fn presign(request: &Presign<'_>, credentials: &Credentials) -> Signed {
    let (date, amz_date) = amz_dates(request.time);
    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);

    let mut headers: Vec<(String, String)> =
        std::iter::once(("host".to_string(), request.host.to_string()))
            .chain(
                request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), trim_header_value(v))),
            )
            .collect();
    headers.sort();
    let signed_headers = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");

    let mut query: Vec<(String, String)> =
        request.query.iter().map(|(k, v)| (uri_encode(k), uri_encode(v))).collect();
    let credential = format!("{}/{scope}", credentials.access_key_id);
    let expires = request.expires.to_string();
    let mut auth = vec![
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", credential.as_str()),
        ("X-Amz-Date", amz_date.as_str()),
        ("X-Amz-Expires", expires.as_str()),
        ("X-Amz-SignedHeaders", signed_headers.as_str()),
    ];
    if let Some(token) = &credentials.session_token {
        auth.push(("X-Amz-Security-Token", token.as_str()));
    }
    query.extend(auth.iter().map(|(k, v)| (uri_encode(k), uri_encode(v))));
    let join = |pairs: &[(String, String)]| {
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
    };
    // The URL keeps botocore's order (the request's parameters, then the X-Amz-* ones), so
    // tokens are byte for byte those of `aws eks get-token`; the signature covers them sorted.
    let url_query = join(&query);
    query.sort();
    let canonical_query = join(&query);

    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "GET\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.path,
        hex(digest::digest(&digest::SHA256, b"").as_ref()),
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{}", credentials.secret_access_key).into_bytes();
    for part in [date.as_str(), request.region, request.service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    let query = format!("{url_query}&X-Amz-Signature={signature}");
    Signed { canonical_request, string_to_sign, signature, query }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SigV4's URI encoding: every byte but `A-Z a-z 0-9 - _ . ~` as `%XX` (upper-case hex).
pub fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header value as signed: trimmed, runs of spaces collapsed to one.
fn trim_header_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of a UNIX time (UTC).
pub fn amz_dates(time: u64) -> (String, String) {
    let time = timestamp(time);
    (time.strftime("%Y%m%d").to_string(), time.strftime("%Y%m%dT%H%M%SZ").to_string())
}

/// RFC 3339 in UTC with a `Z`, seconds precision: `2026-11-27T15:20:30Z`.
pub fn rfc3339(time: u64) -> String {
    timestamp(time).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The instant of a UNIX time; times past jiff's range (the year 9999) are its last second.
fn timestamp(time: u64) -> Timestamp {
    i64::try_from(time)
        .ok()
        .and_then(|time| Timestamp::from_second(time).ok())
        .unwrap_or_else(|| Timestamp::from_second(Timestamp::MAX.as_second()).unwrap())
}

/// The UNIX time of an RFC 3339 time as AWS writes them (`2026-11-27T21:42:07Z`, fractions of
/// a second ignored); `None` for anything else or before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    if !rfc3339_shaped(text) {
        return None;
    }
    let time: Timestamp = text.parse().ok()?;
    // `as_second` rounds toward zero: half a second before 1970 would be 0.
    if time < Timestamp::UNIX_EPOCH {
        return None;
    }
    u64::try_from(time.as_second()).ok()
}

/// Whether `text` is laid out as RFC 3339 (section 5.6) has it: `YYYY-MM-DDTHH:MM:SS`, an
/// optional fraction, then `Z` or `+HH:MM`/`-HH:MM`. jiff's parser, which checks the values,
/// also takes the ISO 8601 and RFC 9557 variants (a space for the `T`, no seconds, `+HHMM`,
/// a `[zone]` suffix) that AWS does not write.
fn rfc3339_shaped(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let date_time = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut zone = &b[19..];
    if let Some(fraction) = zone.strip_prefix(b".") {
        let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return false;
        }
        zone = &fraction[count..];
    }
    match zone {
        b"Z" | b"z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-08-30T12:36:00Z, the time of AWS's test suite.
    const SUITE_TIME: u64 = 1_440_938_160;

    fn suite_credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
        }
    }

    fn suite_request<'a>(
        query: &'a [(&'a str, &'a str)],
        headers: &'a [(&'a str, &'a str)],
    ) -> Presign<'a> {
        Presign {
            host: "example.amazonaws.com",
            path: "/",
            query,
            headers,
            region: "us-east-1",
            service: "service",
            time: SUITE_TIME,
            expires: 3600,
        }
    }

    fn string_to_sign(hash: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{hash}"
        )
    }

    // The vectors are the query-signing cases of the AWS SigV4 test suite (aws-c-auth's
    // aws-signing-test-suite/v4, Apache-2.0): canonical request, string to sign, signature.

    #[test]
    fn aws_suite_get_vanilla() {
        let signed = presign(&suite_request(&[], &[]), &suite_credentials(None));
        assert_eq!(
            signed.canonical_request,
            "GET\n/\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\nhost:example.amazonaws.com\n\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signed.string_to_sign,
            string_to_sign("bb7705b4aa3cb8e8f5e1e0b3d4c0b64030797a313c8ceee43e33117cc43eadc5")
        );
        assert_eq!(
            signed.signature,
            "e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        let query = [("Param2", "value2"), ("Param1", "value1")];
        let signed = presign(&suite_request(&query, &[]), &suite_credentials(None));
        assert_eq!(
            signed.canonical_request,
            "GET\n/\nParam1=value1&Param2=value2&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host\nhost:example.amazonaws.com\n\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signed.string_to_sign,
            string_to_sign("b82878ecb2ab7ad194b9fe79b2946c2a36ee1627a219408089b2d774c1a0cedb")
        );
        assert_eq!(
            signed.signature,
            "86012e2c9ad4d77369f5d81c11f75158aae4f895a085212cc6d3f923d300bed5"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let signed = presign(&suite_request(&[], &[]), &suite_credentials(Some(token)));
        assert_eq!(
            signed.string_to_sign,
            string_to_sign("cb30434103085aa9e73780fc60dc9a9df818fd2a7b1de12a9f6f4d791f898761")
        );
        assert_eq!(
            signed.signature,
            "7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c"
        );
        assert!(signed.query.contains(&format!("&X-Amz-Security-Token={token}&")));
    }

    #[test]
    fn aws_suite_get_header_value_trim() {
        let headers = [("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")];
        let signed = presign(&suite_request(&[], &headers), &suite_credentials(None));
        assert!(
            signed.canonical_request.ends_with(
                "X-Amz-SignedHeaders=host%3Bmy-header1%3Bmy-header2\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\n\nhost;my-header1;my-header2\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            "{}",
            signed.canonical_request
        );
        assert_eq!(
            signed.string_to_sign,
            string_to_sign("84c9e353b6161b689210977f93b93e6a7182f9ecb2ceae8af8c3d86b080a88ae")
        );
        assert_eq!(
            signed.signature,
            "e7bb0fd515e125e1aec2ecc4c0c17484fb06f6846b927c35e46005dd3df3acd4"
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_unreserved_and_utf8() {
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let query = [(unreserved, unreserved)];
        let signed = presign(&suite_request(&query, &[]), &suite_credentials(None));
        assert_eq!(signed.signature, UNRESERVED_SIGNATURE);
        let query = [("ሴ", "bar")];
        let signed = presign(&suite_request(&query, &[]), &suite_credentials(None));
        assert!(signed.canonical_request.contains("\n%E1%88%B4=bar&X-Amz-Algorithm"));
        assert_eq!(signed.signature, UTF8_SIGNATURE);
    }

    const UNRESERVED_SIGNATURE: &str =
        "8e76a88a7433637b12778d5592799b29ad21ecd6cf6325051c21d86f0acda2bf";
    const UTF8_SIGNATURE: &str = "0bdd809b1519ac4f0c1dc3540e2cc46bd0c7f778eda408b2ebf3b913d21ff600";

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_dates(SUITE_TIME), ("20150830".into(), "20150830T123600Z".into()));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
        for time in [0, 951_782_400, 1_440_938_160, 1_798_761_599, 4_107_542_400, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(time)), Some(time));
        }
        assert_eq!(parse_rfc3339("2015-08-30T12:36:00.123Z"), Some(SUITE_TIME));
        assert_eq!(parse_rfc3339("2015-08-30T14:36:00+02:00"), Some(SUITE_TIME));
        for bad in ["", "2015-08-30 12:36:00Z", "1969-12-31T23:59:59Z", "2015-13-30T12:36:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_keep_their_exact_shapes() {
        // 2026-11-27T15:20:30Z, an instant with every field two-digit.
        let time = 1_795_792_830;
        assert_eq!(amz_dates(time), ("20261127".into(), "20261127T152030Z".into()));
        assert_eq!(rfc3339(time), "2026-11-27T15:20:30Z");
        assert_eq!(amz_dates(9), ("19700101".into(), "19700101T000009Z".into()));
        // Past the year 9999 (jiff's range), the last second it has.
        assert_eq!(rfc3339(u64::MAX), "9999-12-30T22:00:00Z");
        assert_eq!(amz_dates(u64::MAX).1, "99991230T220000Z");
        for (text, time) in [
            ("2026-11-27T15:20:30Z", Some(1_795_792_830)),
            ("2026-11-27t15:20:30z", Some(1_795_792_830)),
            ("2026-11-27T15:20:30.999999999Z", Some(1_795_792_830)),
            ("2026-11-27T16:20:30+01:00", Some(1_795_792_830)),
            ("2026-11-27T10:50:30-04:30", Some(1_795_792_830)),
            ("2026-11-27T15:20:30+0100", None),
            ("2026-11-27T15:20Z", None),
            ("2026-11-27T15:20:30", None),
            ("2026-11-27T15:20:30Z[UTC]", None),
            ("2026-11-27T15:20:30.Z", None),
            ("2026-02-30T15:20:30Z", None),
            ("2026-11-27T24:20:30Z", None),
            ("+02026-11-27T15:20:30Z", None),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1969-12-31T23:59:59.5Z", None),
            ("1970-01-01T00:59:59.5+01:00", None),
        ] {
            assert_eq!(parse_rfc3339(text), time, "{text}");
        }
    }

    #[test]
    fn debug_hides_the_secrets() {
        let text = format!("{:?}", suite_credentials(Some("tok")));
        assert!(text.contains("AKIDEXAMPLE") && !text.contains("wJalr") && !text.contains("tok\""));
    }
}
