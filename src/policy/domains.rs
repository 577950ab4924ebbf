//! Server-name patterns of `domains` groups: their syntax (what `check` accepts) and the
//! compiled [`DomainMatcher`] that finds every domains group a name belongs to.
//!
//! Must not depend on: the label table, snapshots, sockets, the data plane.
//!
//! Invariants: patterns are stored lowercase without a trailing dot; `*.example.com` is kept
//! as its suffix `example.com` and matches one or more labels before it, never the suffix
//! itself. Matching costs one hash probe for the whole name plus one per label suffix, never
//! a scan of patterns, and allocates nothing.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::compile::{GROUP_WORDS, GroupBits};

/// Longest name, without its trailing dot (RFC 1035: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// One validated entry of a `domains` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// `api.stripe.com`: that name only.
    Exact(String),
    /// `*.stripe.com`, kept as `stripe.com`: names with one or more labels before it.
    Wildcard(String),
}

impl DomainPattern {
    /// Parses one pattern as written in policy.yaml; the error says what is wrong with it
    /// (the caller puts file, line, group and the pattern itself in front).
    pub fn parse(text: &str) -> Result<DomainPattern, String> {
        if text.is_empty() {
            return Err("an empty name".into());
        }
        // One trailing dot (the absolute form) is ignored, as it is in names.
        let name = text.strip_suffix('.').unwrap_or(text);
        let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        if bare.parse::<IpAddr>().is_ok() {
            return Err("an IP address; domains name servers by name: put addresses in a \
                        `cidrs` group"
                .into());
        }
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "{} characters long; a name has at most {MAX_NAME_LEN}",
                name.len()
            ));
        }
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None if name == "*" => {
                return Err("`*` alone would match every name; write `*.example.com`, or use \
                            an address group such as `any`"
                    .into());
            }
            None => (false, name),
        };
        let mut last = "";
        for label in rest.split('.') {
            check_label(label)?;
            last = label;
        }
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the last label `{last}` is all digits: no host name ends so (an IP address?)"
            ));
        }
        let lower = rest.to_ascii_lowercase();
        Ok(if wildcard { DomainPattern::Wildcard(lower) } else { DomainPattern::Exact(lower) })
    }

    /// The pattern as an operator writes it (lowercase, no trailing dot).
    pub fn display(&self) -> String {
        match self {
            DomainPattern::Exact(name) => name.clone(),
            DomainPattern::Wildcard(suffix) => format!("*.{suffix}"),
        }
    }
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("an empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label `{label}` is {} characters long; a label has at most {MAX_LABEL_LEN}",
            label.len()
        ));
    }
    if let Some(bad) =
        label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(match bad {
            '*' => "`*` is allowed only as the whole first label (`*.example.com`)".into(),
            c if !c.is_ascii() => format!(
                "label `{label}` has the non-ASCII character `{c}`: write internationalized \
                 names in their `xn--` form"
            ),
            c => format!(
                "label `{label}` has the character `{}`: labels are ASCII letters, digits, `-` \
                 and `_`",
                c.escape_default()
            ),
        });
    }
    Ok(())
}

/// Every domains group's patterns, compiled: exact names and wildcard suffixes in two hash
/// maps, each key pointing at the set of groups that list it.
#[derive(Debug, Clone, Default)]
pub struct DomainMatcher {
    exact: FxHashMap<Box<[u8]>, u32>,
    /// Keyed by the suffix after `*.`.
    wildcard: FxHashMap<Box<[u8]>, u32>,
    /// Group sets the maps point at.
    sets: Vec<GroupBits>,
    /// Words of a group set in use.
    words: usize,
    /// Patterns compiled, for reports.
    patterns: usize,
}

impl DomainMatcher {
    /// Compiles `(group bit position, its patterns)` pairs; `group_words` words of a group set
    /// are in use.
    pub fn new<'a>(
        groups: impl IntoIterator<Item = (usize, &'a [DomainPattern])>,
        group_words: usize,
    ) -> DomainMatcher {
        let mut matcher = DomainMatcher { words: group_words, ..DomainMatcher::default() };
        for (group, patterns) in groups {
            for pattern in patterns {
                let (map, key) = match pattern {
                    DomainPattern::Exact(name) => (&mut matcher.exact, name),
                    DomainPattern::Wildcard(suffix) => (&mut matcher.wildcard, suffix),
                };
                let next = matcher.sets.len() as u32;
                let set = *map.entry(key.as_bytes().into()).or_insert(next);
                if set == next {
                    matcher.sets.push([0; GROUP_WORDS]);
                }
                matcher.sets[set as usize][group / 64] |= 1 << (group % 64);
                matcher.patterns += 1;
            }
        }
        matcher.exact.shrink_to_fit();
        matcher.wildcard.shrink_to_fit();
        matcher
    }

    /// Whether the policy has no domains groups (then names change nothing).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Patterns compiled (a pattern listed by two groups counts twice).
    pub fn pattern_count(&self) -> usize {
        self.patterns
    }

    /// The domains groups `name` belongs to, for a name as anyone may write it (a user's
    /// `--server-name`): any case, one trailing dot. A name longer than 253 characters, or
    /// with an empty label, belongs to none.
    pub fn matches(&self, name: &str) -> GroupBits {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let mut lower = [0u8; MAX_NAME_LEN];
        let Some(copy) = lower.get_mut(..name.len()) else { return [0; GROUP_WORDS] };
        for (to, from) in copy.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        self.matches_normalized(copy)
    }

    /// As [`DomainMatcher::matches`], for a name already lowercase without a trailing dot (as
    /// the data plane's readers hand it over): the per-flow path, nothing copied.
    #[inline]
    pub fn matches_normalized(&self, name: &[u8]) -> GroupBits {
        let mut groups = [0u64; GROUP_WORDS];
        if self.sets.is_empty() || name.is_empty() || name.len() > MAX_NAME_LEN {
            return groups;
        }
        // An empty label (leading, trailing or doubled dot) makes it no host name at all,
        // and could otherwise pass for the labels a wildcard wants in front of its suffix.
        if name[0] == b'.' || name[name.len() - 1] == b'.' || name.windows(2).any(|w| w == b"..") {
            return groups;
        }
        if let Some(&set) = self.exact.get(name) {
            self.add(&mut groups, set);
        }
        if !self.wildcard.is_empty() {
            for (i, _) in name.iter().enumerate().filter(|&(_, &b)| b == b'.') {
                if let Some(&set) = self.wildcard.get(&name[i + 1..]) {
                    self.add(&mut groups, set);
                }
            }
        }
        groups
    }

    #[inline]
    fn add(&self, groups: &mut GroupBits, set: u32) {
        let set = &self.sets[set as usize];
        for w in 0..self.words {
            groups[w] |= set[w];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(name: &str) -> DomainPattern {
        DomainPattern::Exact(name.into())
    }

    fn wildcard(suffix: &str) -> DomainPattern {
        DomainPattern::Wildcard(suffix.into())
    }

    #[test]
    fn names_and_wildcards_parse_to_lowercase_without_the_trailing_dot() {
        assert_eq!(DomainPattern::parse("api.stripe.com"), Ok(exact("api.stripe.com")));
        assert_eq!(DomainPattern::parse("API.Stripe.COM."), Ok(exact("api.stripe.com")));
        assert_eq!(DomainPattern::parse("*.amazonaws.com"), Ok(wildcard("amazonaws.com")));
        assert_eq!(DomainPattern::parse("*.Stripe.com."), Ok(wildcard("stripe.com")));
        assert_eq!(DomainPattern::parse("localhost"), Ok(exact("localhost")));
        assert_eq!(DomainPattern::parse("_dmarc.x-y.example"), Ok(exact("_dmarc.x-y.example")));
        assert_eq!(
            DomainPattern::parse("xn--bcher-kva.example"),
            Ok(exact("xn--bcher-kva.example"))
        );
        assert_eq!(DomainPattern::parse("1.2.3.example"), Ok(exact("1.2.3.example")));
        let longest_label = "a".repeat(63);
        assert!(DomainPattern::parse(&format!("{longest_label}.com")).is_ok());
        // 4 labels of 63 and dots: 4 * 63 + 3 = 255; cut to 253.
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(61));
        assert_eq!(longest.len(), 253);
        assert!(DomainPattern::parse(&longest).is_ok());
        assert!(DomainPattern::parse(&format!("{longest}.")).is_ok());
        assert_eq!(wildcard("stripe.com").display(), "*.stripe.com");
        assert_eq!(exact("api.stripe.com").display(), "api.stripe.com");
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_reason() {
        let refused = |text: &str, reason: &str| {
            let error = DomainPattern::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        };
        refused("", "an empty name");
        refused("10.0.0.1", "an IP address");
        refused("10.0.0.1.", "an IP address");
        refused("::1", "an IP address");
        refused("fd00::5", "an IP address");
        refused("[2001:db8::1]", "an IP address");
        refused("1.2.3", "all digits");
        refused("example.123", "all digits");
        refused("api..stripe.com", "empty label");
        refused(".stripe.com", "empty label");
        refused("stripe.com..", "empty label");
        refused("*..stripe.com", "empty label");
        refused(&format!("{}.com", "a".repeat(64)), "at most 63");
        let too_long = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(62));
        refused(&too_long, "254 characters long");
        refused("*", "`*` alone");
        refused("*.", "`*` alone");
        refused("api.*.stripe.com", "only as the whole first label");
        refused("*.*.stripe.com", "only as the whole first label");
        refused("a*.stripe.com", "only as the whole first label");
        refused("**.stripe.com", "only as the whole first label");
        refused("api.stripe.com/v1", "the character `/`");
        refused("api stripe.com", "the character ` `");
        refused("api.stripe.com:443", "the character `:`");
        refused("bücher.example", "`xn--` form");
        refused("tab\t.example", "the character `\\t`");
    }

    fn matcher() -> DomainMatcher {
        let groups: Vec<(usize, Vec<DomainPattern>)> = vec![
            (1, vec![exact("api.stripe.com")]),
            (2, vec![wildcard("stripe.com")]),
            (3, vec![wildcard("amazonaws.com"), exact("example.org")]),
            (70, vec![exact("api.stripe.com"), wildcard("s3.amazonaws.com")]),
        ];
        DomainMatcher::new(groups.iter().map(|(g, p)| (*g, p.as_slice())), 2)
    }

    fn names(bits: GroupBits) -> Vec<usize> {
        (0..128).filter(|&g| bits[g / 64] & (1 << (g % 64)) != 0).collect()
    }

    #[test]
    fn exact_names_match_in_any_case_with_one_trailing_dot() {
        let m = matcher();
        assert_eq!(names(m.matches("example.org")), [3]);
        assert_eq!(names(m.matches("EXAMPLE.Org")), [3]);
        assert_eq!(names(m.matches("example.org.")), [3]);
        assert_eq!(names(m.matches("example.org..")), [] as [usize; 0]);
        assert_eq!(names(m.matches("www.example.org")), [] as [usize; 0]);
        assert_eq!(names(m.matches("example.or")), [] as [usize; 0]);
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_but_never_its_apex() {
        let m = matcher();
        assert_eq!(names(m.matches("ec2.amazonaws.com")), [3]);
        assert_eq!(names(m.matches("ec2.eu-west-1.amazonaws.com")), [3]);
        assert_eq!(names(m.matches("a.b.c.d.amazonaws.com")), [3]);
        assert_eq!(names(m.matches("amazonaws.com")), [] as [usize; 0]);
        assert_eq!(names(m.matches("AMAZONAWS.COM.")), [] as [usize; 0]);
        // A suffix of the pattern's suffix, or a name merely ending in the same letters.
        assert_eq!(names(m.matches("com")), [] as [usize; 0]);
        assert_eq!(names(m.matches("notamazonaws.com")), [] as [usize; 0]);
        assert_eq!(names(m.matches("x.notamazonaws.com")), [] as [usize; 0]);
    }

    #[test]
    fn overlapping_exact_and_wildcard_patterns_give_every_group_that_matches() {
        let m = matcher();
        assert_eq!(names(m.matches("api.stripe.com")), [1, 2, 70]);
        assert_eq!(names(m.matches("API.STRIPE.COM.")), [1, 2, 70]);
        assert_eq!(names(m.matches("dashboard.stripe.com")), [2]);
        assert_eq!(names(m.matches("stripe.com")), [] as [usize; 0]);
        assert_eq!(names(m.matches("bucket.s3.amazonaws.com")), [3, 70]);
        assert_eq!(names(m.matches("s3.amazonaws.com")), [3]);
    }

    #[test]
    fn names_with_empty_labels_or_over_253_characters_match_nothing() {
        let m = matcher();
        for name in ["", ".", ".api.stripe.com", "x..stripe.com", "..stripe.com", ".stripe.com"] {
            assert_eq!(names(m.matches(name)), [] as [usize; 0], "{name:?}");
        }
        let long = format!("{}abc.stripe.com", "a.".repeat(120));
        assert_eq!(long.len(), MAX_NAME_LEN + 1);
        assert_eq!(names(m.matches(&long)), [] as [usize; 0]);
        let fits = format!("{}ab.stripe.com", "a.".repeat(120));
        assert_eq!(fits.len(), MAX_NAME_LEN);
        assert_eq!(names(m.matches(&fits)), [2]);
        assert_eq!(names(m.matches(&format!("{fits}."))), [2]);
    }

    #[test]
    fn the_normalized_path_agrees_with_the_general_one_on_normalized_names() {
        let m = matcher();
        for name in ["api.stripe.com", "a.b.amazonaws.com", "amazonaws.com", "x", "example.org"] {
            assert_eq!(m.matches(name), m.matches_normalized(name.as_bytes()), "{name}");
        }
        // Not normalized: the fast path does not fold case (the readers do that).
        assert_eq!(names(m.matches_normalized(b"API.STRIPE.COM")), [] as [usize; 0]);
    }

    /// What the matcher must give, by a scan of every pattern.
    fn scan(groups: &[(usize, Vec<DomainPattern>)], name: &str) -> Vec<usize> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.len() > MAX_NAME_LEN || name.split('.').any(str::is_empty) {
            return Vec::new();
        }
        let mut found: Vec<usize> = groups
            .iter()
            .filter(|(_, patterns)| {
                patterns.iter().any(|p| match p {
                    DomainPattern::Exact(exact) => name == *exact,
                    DomainPattern::Wildcard(suffix) => name
                        .strip_suffix(suffix.as_str())
                        .and_then(|front| front.strip_suffix('.'))
                        .is_some_and(|front| !front.is_empty()),
                })
            })
            .map(|(g, _)| *g)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    #[test]
    fn matching_agrees_with_a_scan_of_every_pattern_on_generated_names() {
        const LABELS: [&str; 7] = ["a", "B", "api", "Stripe", "com", "x-y", "s3"];
        let groups: Vec<(usize, Vec<DomainPattern>)> = vec![
            (1, vec![exact("api.stripe.com"), wildcard("stripe.com")]),
            (2, vec![wildcard("com")]),
            (3, vec![exact("a.b"), wildcard("a.b"), exact("s3")]),
            (64, vec![wildcard("x-y.s3.com"), exact("b.a.stripe.com")]),
            (127, vec![wildcard("b"), exact("com")]),
        ];
        let m = DomainMatcher::new(groups.iter().map(|(g, p)| (*g, p.as_slice())), 2);
        // A fixed linear congruential sequence: the same names every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        let mut hits = std::collections::BTreeMap::new();
        for _ in 0..20_000 {
            let mut name = String::new();
            for i in 0..1 + next(5) {
                if i > 0 {
                    name.push_str(if next(20) == 0 { ".." } else { "." });
                }
                name.push_str(LABELS[next(LABELS.len() as u64) as usize]);
            }
            match next(10) {
                0 => name.push('.'),
                1 => name.insert(0, '.'),
                _ => {}
            }
            let found = names(m.matches(&name));
            assert_eq!(found, scan(&groups, &name), "{name:?}");
            for g in found {
                *hits.entry(g).or_insert(0) += 1;
            }
        }
        // Every group was matched many times: the names exercise the patterns.
        assert_eq!(hits.len(), groups.len(), "{hits:?}");
        assert!(hits.values().all(|&n| n >= 20), "{hits:?}");
    }

    #[test]
    fn an_empty_matcher_matches_nothing() {
        let m = DomainMatcher::new(std::iter::empty(), 1);
        assert!(m.is_empty());
        assert_eq!(m.matches("api.stripe.com"), [0; GROUP_WORDS]);
        assert_eq!(matcher().pattern_count(), 6);
    }
}
