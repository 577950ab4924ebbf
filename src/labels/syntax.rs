//! The syntax of label keys and values, as Kubernetes validates them (`IsQualifiedName`,
//! `IsValidLabelValue`): what every label source and every selector must respect.
//!
//! Must not depend on: policy, sources.

/// Longest name part of a label key, and longest label value (`validation.LabelValueMaxLength`).
const LABEL_NAME_MAX_LEN: usize = 63;
/// Longest label value.
const LABEL_VALUE_MAX_LEN: usize = 63;
/// Longest label key prefix (`validation.DNS1123SubdomainMaxLength`).
const DNS_SUBDOMAIN_MAX_LEN: usize = 253;

/// Checks a label key as Kubernetes' `IsQualifiedName` does: an optional prefix that is a DNS
/// (RFC 1123) subdomain of at most 253 characters, then `/`, then a name of 1 to 63
/// characters that are alphanumeric, `-`, `_` or `.`, starting and ending alphanumeric.
///
/// # Errors
///
/// Every problem found, separated by `; `.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    let name = match key.split_once('/') {
        None => key,
        Some((_, name)) if name.contains('/') => {
            return Err("must contain at most one '/': an optional DNS subdomain prefix, '/', \
                        and a name (e.g. 'example.com/MyName')"
                .to_owned());
        }
        Some((prefix, name)) => {
            if prefix.is_empty() {
                problems.push("prefix part must not be empty".to_owned());
            } else {
                problems.extend(
                    dns_subdomain_problems(prefix)
                        .into_iter()
                        .map(|problem| format!("prefix part {problem}")),
                );
            }
            name
        }
    };
    if name.is_empty() {
        problems.push("name part must not be empty".to_owned());
    } else {
        if name.len() > LABEL_NAME_MAX_LEN {
            problems
                .push(format!("name part must be no more than {LABEL_NAME_MAX_LEN} characters"));
        }
        if !is_label_name(name) {
            problems.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                 start and end with an alphanumeric character"
                    .to_owned(),
            );
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Checks a label value as Kubernetes' `IsValidLabelValue` does: empty, or at most 63
/// characters that are alphanumeric, `-`, `_` or `.`, starting and ending alphanumeric.
///
/// # Errors
///
/// Every problem found, separated by `; `.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LEN {
        problems.push(format!("must be no more than {LABEL_VALUE_MAX_LEN} characters"));
    }
    if !value.is_empty() && !is_label_name(value) {
        problems.push(
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the shape of key names and non-empty values.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// What keeps `text` from being an RFC 1123 subdomain: dot-separated labels matching
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 253 characters in all.
fn dns_subdomain_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if text.len() > DNS_SUBDOMAIN_MAX_LEN {
        problems.push(format!("must be no more than {DNS_SUBDOMAIN_MAX_LEN} characters"));
    }
    if !text.split('.').all(is_dns_label) {
        problems.push(
            "must be a lowercase RFC 1123 subdomain: lowercase alphanumeric characters, '-' or \
             '.', with each dot-separated part starting and ending with an alphanumeric character"
                .to_owned(),
        );
    }
    problems
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_dns_label(text: &str) -> bool {
    let is_lower_alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    let bytes = text.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            is_lower_alphanumeric(first)
                && is_lower_alphanumeric(last)
                && bytes.iter().all(|byte| is_lower_alphanumeric(byte) || *byte == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_validate_like_upstream() {
        // validate/content/kube_test.go TestIsLabelKey (formerly util/validation
        // validation_test.go TestIsQualifiedName), plus labelwall edge cases.
        let valid = [
            "simple".to_owned(),
            "now-with-dashes".to_owned(),
            "1-starts-with-num".to_owned(),
            "1234".to_owned(),
            "simple/simple".to_owned(),
            "now-with-dashes/simple".to_owned(),
            "now-with-dashes/now-with-dashes".to_owned(),
            "now.with.dots/simple".to_owned(),
            "now-with.dashes-and.dots/simple".to_owned(),
            "1-num.2-num/3-num".to_owned(),
            "1234/5678".to_owned(),
            "1.2.3.4/5678".to_owned(),
            "Uppercase_Is_OK_123".to_owned(),
            "example.com/Uppercase_Is_OK_123".to_owned(),
            "requests.storage-foo".to_owned(),
            "a".repeat(63),
            format!("{}/{}", "a".repeat(253), "b".repeat(63)),
            // labelwall
            "a".to_owned(),
            "a.b_c-d".to_owned(),
            format!("{}.{}/x", "a".repeat(126), "b".repeat(126)),
        ];
        let invalid = [
            "nospecialchars%^=@".to_owned(),
            "cantendwithadash-".to_owned(),
            "-cantstartwithadash-".to_owned(),
            "only/one/slash".to_owned(),
            "Example.com/abc".to_owned(),
            "example_com/abc".to_owned(),
            "example.com/".to_owned(),
            "/simple".to_owned(),
            "a".repeat(64),
            format!("{}/abc", "a".repeat(254)),
            // labelwall
            String::new(),
            "/".to_owned(),
            "example.com-/abc".to_owned(),
            "-example.com/abc".to_owned(),
            "example..com/abc".to_owned(),
            "example.-com/abc".to_owned(),
            ".example.com/abc".to_owned(),
            "example.com./abc".to_owned(),
            "exAmple.com/abc".to_owned(),
            format!("a/{}", "b".repeat(64)),
            format!("{}.{}/x", "a".repeat(127), "b".repeat(126)),
            "name_".to_owned(),
            "name.".to_owned(),
            "na me".to_owned(),
            "n\u{e4}me".to_owned(),
        ];
        for key in &valid {
            assert_eq!(validate_label_key(key), Ok(()), "{key:?} must be valid");
        }
        for key in &invalid {
            assert!(validate_label_key(key).is_err(), "{key:?} must be invalid");
        }
        let upper_prefix = validate_label_key("Example.com/abc").unwrap_err();
        assert!(upper_prefix.starts_with("prefix part "), "{upper_prefix}");
        let too_long = validate_label_key(&"a".repeat(64)).unwrap_err();
        assert!(too_long.contains("63"), "{too_long}");
        let both = validate_label_key(&format!("{}/", "A".repeat(254))).unwrap_err();
        assert_eq!(both.split("; ").count(), 3, "all problems are listed: {both}");
    }

    #[test]
    fn label_values_validate_like_upstream() {
        // validate/content/kube_test.go TestIsLabelValue (formerly util/validation
        // validation_test.go TestIsValidLabelValue), plus labelwall edge cases.
        let valid = [
            "simple".to_owned(),
            "now-with-dashes".to_owned(),
            "1-starts-with-num".to_owned(),
            "end-with-num-1".to_owned(),
            "1234".to_owned(),
            "a".repeat(63),
            String::new(),
            // labelwall
            "A".to_owned(),
            "Mixed_Case.and-1".to_owned(),
        ];
        let invalid = [
            "nospecialchars%^=@".to_owned(),
            "Tama-nui-te-r\u{101}.is.M\u{101}ori.sun".to_owned(),
            "\\backslashes\\are\\bad".to_owned(),
            "-starts-with-dash".to_owned(),
            "ends-with-dash-".to_owned(),
            ".starts.with.dot".to_owned(),
            "ends.with.dot.".to_owned(),
            "a".repeat(64),
            // labelwall
            "_a".to_owned(),
            "a_".to_owned(),
            "a b".to_owned(),
            "a/b".to_owned(),
            "-1".to_owned(),
            "a\n".to_owned(),
        ];
        for value in &valid {
            assert_eq!(validate_label_value(value), Ok(()), "{value:?} must be valid");
        }
        for value in &invalid {
            assert!(validate_label_value(value).is_err(), "{value:?} must be invalid");
        }
    }
}
