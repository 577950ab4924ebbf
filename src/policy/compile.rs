//! From policy.yaml to a [`CompiledPolicy`]: names resolved to bit positions, selectors parsed,
//! CIDRs folded into one prefix map, `domains` patterns into one hash matcher, every rule
//! turned into two group bitsets and a port list; first match, with a server name or without.
//! Every problem is reported at once, each naming the file, line, rule or group, and field.
//! Must not depend on: sockets, async, the label table, snapshots.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::domains::{DomainMatcher, DomainPattern};
use super::file::{Action, GroupSpec, KindSpec, PodsSpec, PolicyFile, RuleSpec};
use super::selector::Selector;
use super::{Decision, Judgement, NameState};
use crate::diagnostics::{Diagnostic, Diagnostics, read_file};
use crate::labels::{EndpointKind, Identity};
use crate::packet::ip_proto;
use crate::prefix::{PrefixMap, parse_network};
use crate::yaml_lines::LineIndex;

/// Groups a policy may define, `any` included: group bitsets are fixed-size arrays on the
/// per-packet path.
pub const MAX_GROUPS: usize = 1024;
/// Words of a group bitset.
pub const GROUP_WORDS: usize = MAX_GROUPS / 64;
/// Bit position of the built-in group `any`.
pub const ANY_GROUP: usize = 0;

/// A set of groups, one bit per group.
pub type GroupBits = [u64; GROUP_WORDS];

/// Which identities a group selects, and how.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub pods: Option<PodMatcher>,
    pub nodes: Option<KindMatcher>,
    pub external: Option<KindMatcher>,
    pub cidrs: Vec<IpNet>,
    pub except: Vec<IpNet>,
    /// Server names; a group with these has no other part (it selects no address).
    pub domains: Vec<DomainPattern>,
}

#[derive(Debug, Clone)]
pub struct PodMatcher {
    pub selector: Selector,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub namespace_selector: Selector,
}

#[derive(Debug, Clone)]
pub struct KindMatcher {
    pub selector: Selector,
    pub cluster: Option<String>,
}

impl Group {
    /// Whether the group's label parts select `identity` (CIDRs are matched by address).
    pub fn selects(&self, identity: &Identity) -> bool {
        let cluster_ok = |c: &Option<String>| c.as_ref().is_none_or(|c| *c == identity.cluster);
        match identity.kind {
            EndpointKind::Pod => self.pods.as_ref().is_some_and(|p| {
                cluster_ok(&p.cluster)
                    && p.namespace.as_ref().is_none_or(|n| *n == identity.namespace)
                    && p.selector.matches(&identity.labels)
                    && p.namespace_selector.matches(&identity.namespace_labels)
            }),
            EndpointKind::Node => self
                .nodes
                .as_ref()
                .is_some_and(|m| cluster_ok(&m.cluster) && m.selector.matches(&identity.labels)),
            EndpointKind::External => self
                .external
                .as_ref()
                .is_some_and(|m| cluster_ok(&m.cluster) && m.selector.matches(&identity.labels)),
        }
    }
}

/// One protocol and port range a rule admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMatch {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl PortMatch {
    /// `port` is the destination port for TCP/UDP, `None` for ICMP or when unknown
    /// (a fragment): then only a rule that admits the whole protocol matches.
    pub fn admits(&self, protocol: u8, port: Option<u16>) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match port {
            Some(p) => self.first <= p && p <= self.last,
            None => self.first == 0 && self.last == u16::MAX,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Shared, so that flows logged under it can keep the name past a reload.
    pub name: std::sync::Arc<str>,
    pub action: Action,
    pub log: bool,
    pub from: Vec<usize>,
    pub to: Vec<usize>,
    /// `None`: every protocol and port.
    pub ports: Option<Vec<PortMatch>>,
    pub line: Option<usize>,
}

impl Rule {
    pub fn admits(&self, protocol: u8, port: Option<u16>) -> bool {
        self.ports.as_ref().is_none_or(|ports| ports.iter().any(|m| m.admits(protocol, port)))
    }
}

/// Include/exclude group bits of one network from the groups' `cidrs` and `except`.
#[derive(Debug, Clone, Default)]
pub struct CidrBits {
    pub include: GroupBits,
    pub exclude: GroupBits,
}

impl CidrBits {
    fn merge(&mut self, other: CidrBits) {
        for w in 0..GROUP_WORDS {
            self.include[w] |= other.include[w];
            self.exclude[w] |= other.exclude[w];
        }
    }
}

/// A validated policy, ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub path: PathBuf,
    pub default_action: Action,
    pub default_log: bool,
    /// Index = bit position; `groups[0]` is `any`.
    pub groups: Vec<Group>,
    pub rules: Vec<Rule>,
    pub(crate) cidrs: PrefixMap<CidrBits>,
    /// Words used in group bitsets (`groups.len()` rounded up).
    pub(crate) group_words: usize,
    /// Words of a rule bitset.
    pub(crate) rule_words: usize,
    /// Per group: the rules whose `from` names it (`groups × rule_words`).
    pub(crate) rules_from: Vec<u64>,
    /// Per group: the rules whose `to` names it.
    pub(crate) rules_to: Vec<u64>,
    /// The `domains` groups' patterns.
    pub(crate) domains: DomainMatcher,
    /// The rules whose `to` names a `domains` group (`rule_words`).
    pub(crate) name_rules: Vec<u64>,
    /// Whether `name_rules` has any.
    pub(crate) names_used: bool,
}

impl CompiledPolicy {
    /// Reads and compiles a policy file.
    pub fn load(path: &Path) -> Result<CompiledPolicy, Diagnostics> {
        let text = read_file(path)?;
        CompiledPolicy::parse(path, &text)
    }

    /// Compiles `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<CompiledPolicy, Diagnostics> {
        let file: PolicyFile =
            serde_yaml_ng::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
        let lines = LineIndex::build(text);
        let errors = crate::diagnostics::duplicate_keys(path, &lines);
        let mut compiler = Compiler { path, lines, errors, failed_groups: HashSet::new() };
        let policy = compiler.compile(file);
        if compiler.errors.is_empty() { Ok(policy) } else { Err(Diagnostics(compiler.errors)) }
    }

    /// The group index of `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The compiled patterns of the `domains` groups.
    pub fn domains(&self) -> &DomainMatcher {
        &self.domains
    }

    /// Whether some rule may decide by the server name (its `to` names a `domains` group):
    /// else names change no verdict, and need not be read.
    #[inline]
    pub fn uses_names(&self) -> bool {
        self.names_used
    }

    /// What `rule` (`None`: the default action) does.
    #[inline]
    pub fn decision(&self, rule: Option<usize>) -> Decision {
        match rule {
            Some(r) => {
                let rule = &self.rules[r];
                Decision { action: rule.action, rule: Some(r), log: rule.log }
            }
            None => Decision { action: self.default_action, rule: None, log: self.default_log },
        }
    }

    /// First match with the flow's server name: `dst` holds the destination address's groups
    /// (no `domains` group is ever among them). A known name adds the `domains` groups it
    /// matches; no name adds none. While the name is not known yet, the flow needs it when
    /// the first rule that could match with *some* name (every rule naming a `domains` group
    /// taken as meeting `dst`) matches only through a `domains` group: that rule would come
    /// before whatever decides by addresses and ports alone. Allocation-free; without
    /// rules naming `domains` groups, one branch more than [`CompiledPolicy::first_match`].
    #[inline]
    pub fn judge(
        &self,
        src: &GroupBits,
        dst: &GroupBits,
        protocol: u8,
        port: Option<u16>,
        name: NameState<'_>,
    ) -> Judgement {
        if !self.names_used {
            return Judgement::Decided(self.decision(self.first_match(src, dst, protocol, port)));
        }
        let rule = match name {
            NameState::Absent => self.first_match(src, dst, protocol, port),
            NameState::Name(name) => {
                let mut with_name = *dst;
                let matched = self.domains.matches(name);
                for w in 0..self.group_words {
                    with_name[w] |= matched[w];
                }
                self.first_match(src, &with_name, protocol, port)
            }
            NameState::Unknown => {
                // Some name could match every `domains` group: their rules' `to` counts as met
                // (one rule bitset, however many `domains` groups there are).
                let rule = self.first_match_or(src, dst, protocol, port, |w| self.name_rules[w]);
                if let Some(r) = rule
                    && !self.rules[r].to.iter().any(|&g| dst[g / 64] & (1 << (g % 64)) != 0)
                {
                    // Matched only through a `domains` group: no address group of its `to`
                    // holds dst.
                    return Judgement::NeedsName { rule: r };
                }
                rule
            }
        };
        Judgement::Decided(self.decision(rule))
    }

    /// The first rule (in order) whose `from` meets `src`, whose `to` meets `dst` and whose
    /// ports admit the packet. Allocation-free: the set groups are listed once, then the rule
    /// bitsets are walked 64 rules per word.
    #[inline]
    pub fn first_match(
        &self,
        src: &GroupBits,
        dst: &GroupBits,
        protocol: u8,
        port: Option<u16>,
    ) -> Option<usize> {
        self.first_match_or(src, dst, protocol, port, |_| 0)
    }

    /// As [`CompiledPolicy::first_match`], with the rules of `extra_to(word)` counted as if
    /// their `to` met `dst` (a constant 0 compiles away).
    #[inline(always)]
    fn first_match_or(
        &self,
        src: &GroupBits,
        dst: &GroupBits,
        protocol: u8,
        port: Option<u16>,
        extra_to: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let src_rows = GroupRows::of(src, self.group_words, self.rule_words);
        let dst_rows = GroupRows::of(dst, self.group_words, self.rule_words);
        for w in 0..self.rule_words {
            let from = src_rows.union(&self.rules_from, w);
            if from == 0 {
                continue;
            }
            let mut candidates = from & (dst_rows.union(&self.rules_to, w) | extra_to(w));
            while candidates != 0 {
                let rule = w * 64 + candidates.trailing_zeros() as usize;
                if self.rules[rule].admits(protocol, port) {
                    return Some(rule);
                }
                candidates &= candidates - 1;
            }
        }
        None
    }
}

/// The groups set in a bitset, as offsets of their rows in a rule table. An address is in a
/// handful of groups, so listing them once beats scanning every group word per rule word.
enum GroupRows<'a> {
    Listed {
        rows: [u32; MAX_LISTED_GROUPS],
        len: usize,
    },
    /// An address in more groups than fit the list: scan the bitset per rule word.
    Many {
        groups: &'a GroupBits,
        group_words: usize,
        rule_words: usize,
    },
}

const MAX_LISTED_GROUPS: usize = 32;

impl<'a> GroupRows<'a> {
    fn of(groups: &'a GroupBits, group_words: usize, rule_words: usize) -> GroupRows<'a> {
        let mut rows = [0u32; MAX_LISTED_GROUPS];
        let mut len = 0;
        for (gw, &bits) in groups[..group_words].iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                if len == MAX_LISTED_GROUPS {
                    return GroupRows::Many { groups, group_words, rule_words };
                }
                let group = gw * 64 + bits.trailing_zeros() as usize;
                rows[len] = (group * rule_words) as u32;
                len += 1;
                bits &= bits - 1;
            }
        }
        GroupRows::Listed { rows, len }
    }

    /// OR of word `word` of the rows of every listed group.
    #[inline]
    fn union(&self, table: &[u64], word: usize) -> u64 {
        match self {
            GroupRows::Listed { rows, len } => {
                rows[..*len].iter().fold(0, |acc, &row| acc | table[row as usize + word])
            }
            GroupRows::Many { groups, group_words, rule_words } => {
                let mut union = 0;
                for (gw, &bits) in groups[..*group_words].iter().enumerate() {
                    let mut bits = bits;
                    while bits != 0 {
                        let group = gw * 64 + bits.trailing_zeros() as usize;
                        union |= table[group * rule_words + word];
                        bits &= bits - 1;
                    }
                }
                union
            }
        }
    }
}

struct Compiler<'a> {
    path: &'a Path,
    lines: LineIndex,
    errors: Vec<Diagnostic>,
    /// Groups with errors of their own: rules naming them get no second, misleading error.
    failed_groups: HashSet<String>,
}

impl Compiler<'_> {
    fn error(&mut self, item: String, path: &str, field: Option<&str>, message: String) {
        let field_path = match field {
            Some(f) if path.is_empty() => f.to_string(),
            Some(f) => format!("{path}.{f}"),
            None => path.to_string(),
        };
        self.errors.push(Diagnostic {
            line: self.lines.line(&field_path),
            item: Some(item),
            field: field.map(str::to_string),
            ..Diagnostic::file(self.path, message)
        });
    }

    fn compile(&mut self, file: PolicyFile) -> CompiledPolicy {
        let mut groups = vec![Group {
            name: "any".into(),
            pods: None,
            nodes: None,
            external: None,
            cidrs: Vec::new(),
            except: Vec::new(),
            domains: Vec::new(),
        }];
        if file.groups.len() + 1 > MAX_GROUPS {
            self.error(
                "policy".into(),
                "groups",
                None,
                format!("{} groups, at most {} are supported", file.groups.len(), MAX_GROUPS - 1),
            );
        }
        for (name, spec) in file.groups.iter().take(MAX_GROUPS - 1) {
            match self.group(name, spec) {
                Some(group) => groups.push(group),
                None => {
                    self.failed_groups.insert(name.clone());
                }
            }
        }
        let index: BTreeMap<&str, usize> =
            groups.iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
        // From the file, so that rules naming a domains group with errors are checked too.
        let domain_groups: HashSet<&str> = file
            .groups
            .iter()
            .filter(|(_, spec)| spec.domains.is_some())
            .map(|(name, _)| name.as_str())
            .collect();

        let mut rules = Vec::with_capacity(file.rules.len());
        let mut names = HashSet::new();
        for (i, spec) in file.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let item = if spec.name.is_empty() {
                format!("rule #{}", i + 1)
            } else {
                format!("rule `{}`", spec.name)
            };
            if spec.name.is_empty() {
                self.error(item.clone(), &path, Some("name"), "must not be empty".into());
            } else if spec.name == "default" {
                self.error(
                    item.clone(),
                    &path,
                    Some("name"),
                    "`default` names the default action in metrics and logs; pick another name"
                        .into(),
                );
            } else if !names.insert(spec.name.as_str()) {
                self.error(item.clone(), &path, Some("name"), "another rule has this name".into());
            }
            if let Some(rule) = self.rule(&item, &path, spec, &index, &domain_groups) {
                rules.push(rule);
            }
        }

        let group_words = groups.len().div_ceil(64);
        let rule_words = rules.len().div_ceil(64).max(1);
        let mut rules_from = vec![0u64; groups.len() * rule_words];
        let mut rules_to = vec![0u64; groups.len() * rule_words];
        for (r, rule) in rules.iter().enumerate() {
            for &g in &rule.from {
                rules_from[g * rule_words + r / 64] |= 1 << (r % 64);
            }
            for &g in &rule.to {
                rules_to[g * rule_words + r / 64] |= 1 << (r % 64);
            }
        }
        let mut cidrs = PrefixMap::default();
        for (g, group) in groups.iter().enumerate() {
            for (nets, include) in [(&group.cidrs, true), (&group.except, false)] {
                for net in nets {
                    let mut bits = CidrBits::default();
                    let target = if include { &mut bits.include } else { &mut bits.exclude };
                    target[g / 64] |= 1 << (g % 64);
                    cidrs.insert_with(*net, bits, CidrBits::merge);
                }
            }
        }
        let domains = DomainMatcher::new(
            groups.iter().enumerate().map(|(g, group)| (g, group.domains.as_slice())),
            group_words,
        );
        let mut name_rules = vec![0u64; rule_words];
        for (r, rule) in rules.iter().enumerate() {
            if rule.to.iter().any(|&g| !groups[g].domains.is_empty()) {
                name_rules[r / 64] |= 1 << (r % 64);
            }
        }
        CompiledPolicy {
            path: self.path.to_path_buf(),
            default_action: file.default_action,
            default_log: file.default_log,
            groups,
            rules,
            cidrs,
            group_words,
            rule_words,
            rules_from,
            rules_to,
            domains,
            names_used: name_rules.iter().any(|&w| w != 0),
            name_rules,
        }
    }

    fn group(&mut self, name: &str, spec: &GroupSpec) -> Option<Group> {
        let item = format!("group `{name}`");
        let path = format!("groups.{name}");
        let before = self.errors.len();
        if name == "any" {
            self.error(
                item.clone(),
                &path,
                None,
                "`any` is built in and cannot be redefined".into(),
            );
        }
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ',') {
            self.error(
                item.clone(),
                &path,
                None,
                "names must be non-empty without spaces or commas".into(),
            );
        }
        let address_kinds = [
            ("pods", spec.pods.is_some()),
            ("nodes", spec.nodes.is_some()),
            ("external", spec.external.is_some()),
            ("cidrs", !spec.cidrs.is_empty()),
            ("except", !spec.except.is_empty()),
        ];
        let domains = match &spec.domains {
            Some(list) => {
                let others: Vec<&str> =
                    address_kinds.iter().filter(|(_, given)| *given).map(|(k, _)| *k).collect();
                if !others.is_empty() {
                    self.error(
                        item.clone(),
                        &path,
                        Some("domains"),
                        format!(
                            "a domains group combines with no other kind; move {} to a group \
                             of its own and list both in the rule's `to`",
                            others.join(", ")
                        ),
                    );
                }
                self.domains(&item, &path, list)
            }
            None => {
                if !address_kinds[..4].iter().any(|(_, given)| *given) {
                    self.error(
                        item.clone(),
                        &path,
                        None,
                        "selects nothing: give at least one of pods, nodes, external, cidrs, \
                         domains"
                            .into(),
                    );
                }
                Vec::new()
            }
        };
        let pods = spec.pods.as_ref().map(|p| self.pods(&item, &path, p));
        let nodes = spec.nodes.as_ref().map(|k| self.kind(&item, &path, "nodes", k));
        let external = spec.external.as_ref().map(|k| self.kind(&item, &path, "external", k));
        let cidrs = self.networks(&item, &path, "cidrs", &spec.cidrs);
        let except = self.networks(&item, &path, "except", &spec.except);
        (self.errors.len() == before).then(|| Group {
            name: name.to_string(),
            pods,
            nodes,
            external,
            cidrs,
            except,
            domains,
        })
    }

    fn domains(&mut self, item: &str, path: &str, texts: &[String]) -> Vec<DomainPattern> {
        if texts.is_empty() {
            self.error(
                item.into(),
                path,
                Some("domains"),
                "an empty list matches no name; list at least one name".into(),
            );
        }
        let mut patterns = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            match DomainPattern::parse(text) {
                Ok(pattern) => patterns.push(pattern),
                Err(message) => self.error(
                    item.into(),
                    path,
                    Some(&format!("domains[{i}]")),
                    format!("`{text}`: {message}"),
                ),
            }
        }
        patterns
    }

    fn selector(&mut self, item: &str, path: &str, field: &str, text: Option<&str>) -> Selector {
        match text.map(Selector::parse) {
            None => Selector::everything(),
            Some(Ok(selector)) => selector,
            Some(Err(error)) => {
                self.error(item.into(), path, Some(field), format!("invalid selector: {error}"));
                Selector::everything()
            }
        }
    }

    fn pods(&mut self, item: &str, path: &str, spec: &PodsSpec) -> PodMatcher {
        PodMatcher {
            selector: self.selector(item, path, "pods.selector", spec.selector.as_deref()),
            cluster: spec.cluster.clone(),
            namespace: spec.namespace.clone(),
            namespace_selector: self.selector(
                item,
                path,
                "pods.namespace_selector",
                spec.namespace_selector.as_deref(),
            ),
        }
    }

    fn kind(&mut self, item: &str, path: &str, kind: &str, spec: &KindSpec) -> KindMatcher {
        KindMatcher {
            selector: self.selector(
                item,
                path,
                &format!("{kind}.selector"),
                spec.selector.as_deref(),
            ),
            cluster: spec.cluster.clone(),
        }
    }

    fn networks(&mut self, item: &str, path: &str, field: &str, texts: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let field = format!("{field}[{i}]");
            match parse_network(text) {
                Ok(net) => nets.push(net),
                Err(message) => self.error(item.into(), path, Some(&field), message),
            }
        }
        nets
    }

    fn rule(
        &mut self,
        item: &str,
        path: &str,
        spec: &RuleSpec,
        groups: &BTreeMap<&str, usize>,
        domain_groups: &HashSet<&str>,
    ) -> Option<Rule> {
        let before = self.errors.len();
        let resolve = |this: &mut Self, field: &str, names: &[String]| -> Vec<usize> {
            if names.is_empty() {
                this.error(
                    item.into(),
                    path,
                    Some(field),
                    "must name at least one group (or `any`)".into(),
                );
            }
            let mut found = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                match groups.get(name.as_str()) {
                    Some(&g) => found.push(g),
                    None if this.failed_groups.contains(name) => {}
                    None => this.error(
                        item.into(),
                        path,
                        Some(&format!("{field}[{i}]")),
                        format!("unknown group `{name}`"),
                    ),
                }
            }
            found
        };
        let from = resolve(self, "from", &spec.from);
        let to = resolve(self, "to", &spec.to);
        for (i, name) in spec.from.iter().enumerate() {
            if domain_groups.contains(name.as_str()) {
                self.error(
                    item.into(),
                    path,
                    Some(&format!("from[{i}]")),
                    format!(
                        "`{name}` is a domains group: a server name names the destination, so \
                         it is used in `to` only"
                    ),
                );
            }
        }
        let named = spec.to.iter().find(|name| domain_groups.contains(name.as_str()));
        let ports = spec.ports.as_ref().map(|list| {
            if list.is_empty() {
                self.error(
                    item.into(),
                    path,
                    Some("ports"),
                    "an empty list matches nothing; leave `ports` out to match every port".into(),
                );
            }
            let mut ports = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                match parse_port(text) {
                    Ok(p)
                        if named.is_some()
                            && !matches!(p.protocol, ip_proto::TCP | ip_proto::UDP) =>
                    {
                        self.error(
                            item.into(),
                            path,
                            Some(&format!("ports[{i}]")),
                            format!(
                                "`{text}`: `to` names the domains group `{}`, and only tcp and \
                                 udp flows have server names; list tcp or udp ports",
                                named.map_or("", |n| n.as_str())
                            ),
                        )
                    }
                    Ok(p) => ports.push(p),
                    Err(message) => {
                        self.error(item.into(), path, Some(&format!("ports[{i}]")), message)
                    }
                }
            }
            ports
        });
        if let (Some(group), None) = (named, &spec.ports) {
            self.error(
                item.into(),
                path,
                Some("ports"),
                format!(
                    "`to` names the domains group `{group}`: list the tcp or udp ports its names \
                     are asked on (`[tcp/443]`); without `ports` every flow of `from`, on any \
                     protocol and port, would wait for a server name"
                ),
            );
        }
        (self.errors.len() == before).then(|| Rule {
            name: spec.name.as_str().into(),
            action: spec.action,
            log: spec.log,
            from,
            to,
            ports,
            line: self.lines.line(path),
        })
    }
}

/// `tcp/443`, `udp/53`, `tcp/8000-8999`, `tcp`, `udp`, `icmp`, `icmpv6`.
pub fn parse_port(text: &str) -> Result<PortMatch, String> {
    let (protocol, range) = match text.split_once('/') {
        Some((p, r)) => (p, Some(r)),
        None => (text, None),
    };
    let protocol = match protocol {
        "tcp" => ip_proto::TCP,
        "udp" => ip_proto::UDP,
        "icmp" | "icmpv6" => {
            if range.is_some() {
                return Err(format!("`{text}`: {protocol} has no ports"));
            }
            let protocol = if protocol == "icmp" { ip_proto::ICMP } else { ip_proto::ICMPV6 };
            return Ok(PortMatch { protocol, first: 0, last: u16::MAX });
        }
        other => {
            return Err(format!(
                "`{text}`: unknown protocol `{other}` (use tcp, udp, icmp or icmpv6)"
            ));
        }
    };
    let Some(range) = range else {
        return Ok(PortMatch { protocol, first: 0, last: u16::MAX });
    };
    let port = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("`{text}`: `{s}` is not a port from 1 to 65535")),
        }
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(range)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("`{text}`: the range is backwards"));
    }
    Ok(PortMatch { protocol, first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address in more groups than the row list holds is still matched exactly.
    #[test]
    fn an_address_in_many_groups_finds_the_first_matching_rule() {
        let mut text = String::from("default_action: deny\ngroups:\n");
        for g in 0..40 {
            text.push_str(&format!("  g{g:02}: {{cidrs: [10.0.0.0/{}]}}\n", 8 + g % 16));
        }
        text.push_str("rules:\n");
        for r in 0..70 {
            let (from, port) = if r == 69 { ("g39", 80) } else { ("g00", 1000 + r) };
            text.push_str(&format!(
                "  - {{name: r{r}, from: [{from}], to: [any], ports: [tcp/{port}], action: allow}}\n"
            ));
        }
        let policy = CompiledPolicy::parse(Path::new("p.yaml"), &text).unwrap();
        let mut all = [0u64; GROUP_WORDS];
        for g in 0..=40 {
            all[g / 64] |= 1 << (g % 64);
        }
        let any_only = {
            let mut bits = [0u64; GROUP_WORDS];
            bits[0] = 1;
            bits
        };
        assert!(matches!(
            GroupRows::of(&all, policy.group_words, policy.rule_words),
            GroupRows::Many { .. }
        ));
        assert_eq!(policy.first_match(&all, &any_only, ip_proto::TCP, Some(80)), Some(69));
        assert_eq!(policy.first_match(&all, &any_only, ip_proto::TCP, Some(1005)), Some(5));
        assert_eq!(policy.first_match(&any_only, &all, ip_proto::TCP, Some(80)), None);
    }
}
