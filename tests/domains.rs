//! `domains` groups through the public API: policies with server-name patterns compiled from
//! YAML (every error to the file, line, group and pattern), and flows judged with what is known
//! of their server name exactly as the data plane asks ([`Snapshot::judge`]): decided at once
//! when a rule that decides by addresses and ports alone comes first, waiting for the name
//! while a rule that needs it could still decide. Last, a reload: a bad pattern keeps the
//! running policy.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use labelwall::config::Config;
use labelwall::control::ControlPlane;
use labelwall::labels::LabelTable;
use labelwall::packet::ip_proto::{ICMP, TCP, UDP};
use labelwall::policy::{Action, CompiledPolicy, Judgement, NameState};
use labelwall::snapshot::{RuleHits, Snapshot};
use labelwall::sources::inventory;

const INVENTORY: &str = r#"
endpoints:
  - {ip: 10.0.1.10, cluster: demo, namespace: shop, name: web-1, kind: pod, labels: {app: web}}
  - {ip: 10.0.1.20, cluster: demo, namespace: shop, name: batch-1, kind: pod, labels: {app: batch}}
"#;

const WEB: &str = "10.0.1.10";
const BATCH: &str = "10.0.1.20";
/// In `blocked`.
const BLOCKED: &str = "198.51.100.7";
/// In `partners`.
const PARTNER: &str = "203.0.113.5";
/// Some address on the internet that no group but `internet` holds.
const SERVER: &str = "192.0.2.10";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn snapshot(policy: &str) -> Snapshot {
    let policy = CompiledPolicy::parse(Path::new("policy.yaml"), policy)
        .unwrap_or_else(|errors| panic!("the policy must compile:\n{errors}"));
    let records = inventory::parse(Path::new("inventory.yaml"), INVENTORY).unwrap();
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    Snapshot::new(1, Arc::new(LabelTable::build(&[Arc::new(records)])), Arc::new(policy), hits)
}

fn compile_errors(text: &str) -> Vec<String> {
    match CompiledPolicy::parse(Path::new("policy.yaml"), text) {
        Ok(_) => panic!("the policy must not compile:\n{text}"),
        Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
    }
}

/// What `judge` answers, as `(action, rule)` or `("waits", rule)`.
fn judge(s: &Snapshot, dst: &str, protocol: u8, port: u16, name: NameState<'_>) -> String {
    judge_from(s, WEB, dst, protocol, port, name)
}

fn judge_from(
    s: &Snapshot,
    src: &str,
    dst: &str,
    protocol: u8,
    port: u16,
    name: NameState<'_>,
) -> String {
    let port = matches!(protocol, TCP | UDP).then_some(port);
    match s.judge(ip(src), ip(dst), protocol, port, name) {
        Judgement::Decided(d) => format!("{} {}", d.action.as_str(), s.rule_name(d.rule)),
        Judgement::NeedsName { rule } => format!("waits {}", s.rule_name(Some(rule))),
    }
}

use NameState::{Absent, Name, Unknown};

// ---------------------------------------------------------------------------------------------
// policy.yaml: what check accepts and refuses.

#[test]
fn every_domains_error_names_file_line_group_and_pattern() {
    let text = "\
default_action: deny
groups:
  apis:
    domains:
      - api.stripe.com
      - 10.0.0.1
      - \"*.amazonaws.com\"
      - api..stripe.com
      - api.*.stripe.com
      - bücher.example
      - aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com
      - \"::1\"
      - \"*\"
      - api.stripe.com:443
  mixed:
    domains: [api.stripe.com]
    cidrs: [10.0.0.0/8]
  none:
    domains: []
  web:
    pods: {selector: app=web}
rules:
  - name: from-names
    from: [apis]
    to: [web]
    action: allow
  - name: no-ports
    from: [web]
    to: [apis]
    action: allow
  - name: icmp-to-names
    from: [web]
    to: [web, apis]
    ports: [tcp/443, icmp, udp/443]
    action: allow
";
    let long = "a".repeat(64);
    let expected = [
        "policy.yaml:6: group `apis`: domains[1]: `10.0.0.1`: an IP address; domains name \
         servers by name: put addresses in a `cidrs` group"
            .to_string(),
        "policy.yaml:8: group `apis`: domains[3]: `api..stripe.com`: an empty label (two dots \
         in a row, or a leading dot)"
            .into(),
        "policy.yaml:9: group `apis`: domains[4]: `api.*.stripe.com`: `*` is allowed only as the \
         whole first label (`*.example.com`)"
            .into(),
        "policy.yaml:10: group `apis`: domains[5]: `bücher.example`: label `bücher` has the \
         non-ASCII character `ü`: write internationalized names in their `xn--` form"
            .into(),
        format!(
            "policy.yaml:11: group `apis`: domains[6]: `{long}.com`: label `{long}` is 64 \
             characters long; a label has at most 63"
        ),
        "policy.yaml:12: group `apis`: domains[7]: `::1`: an IP address; domains name servers \
         by name: put addresses in a `cidrs` group"
            .into(),
        "policy.yaml:13: group `apis`: domains[8]: `*`: `*` alone would match every name; write \
         `*.example.com`, or use an address group such as `any`"
            .into(),
        "policy.yaml:14: group `apis`: domains[9]: `api.stripe.com:443`: label `com:443` has the \
         character `:`: labels are ASCII letters, digits, `-` and `_`"
            .into(),
        "policy.yaml:16: group `mixed`: domains: a domains group combines with no other kind; \
         move cidrs to a group of its own and list both in the rule's `to`"
            .into(),
        "policy.yaml:19: group `none`: domains: an empty list matches no name; list at least one \
         name"
            .into(),
        "policy.yaml:24: rule `from-names`: from[0]: `apis` is a domains group: a server name \
         names the destination, so it is used in `to` only"
            .into(),
        "policy.yaml:27: rule `no-ports`: ports: `to` names the domains group `apis`: list the \
         tcp or udp ports its names are asked on (`[tcp/443]`); without `ports` every flow of \
         `from`, on any protocol and port, would wait for a server name"
            .into(),
        "policy.yaml:34: rule `icmp-to-names`: ports[1]: `icmp`: `to` names the domains group \
         `apis`, and only tcp and udp flows have server names; list tcp or udp ports"
            .into(),
    ];
    assert_eq!(compile_errors(text), expected);
}

#[test]
fn a_name_over_253_characters_is_an_error_naming_its_length() {
    let name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(62));
    let text =
        format!("default_action: deny\ngroups:\n  long:\n    domains: [{name}]\nrules: []\n");
    assert_eq!(
        compile_errors(&text),
        [format!(
            "policy.yaml:4: group `long`: domains[0]: `{name}`: 254 characters long; a name has \
             at most 253"
        )]
    );
}

#[test]
fn spec_examples_compile_and_select_no_address() {
    let s = snapshot(POLICY);
    let names: Vec<_> = s.policy.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["any", "aws", "blocked", "internet", "partners", "stripe", "web"]);
    assert_eq!(s.policy.domains().pattern_count(), 3);
    assert!(s.policy.uses_names());
    // A domains group holds names, never addresses: no address is ever in it.
    for addr in [WEB, BATCH, BLOCKED, PARTNER, SERVER, "::1", "0.0.0.0"] {
        let groups = s.group_names(&s.groups_of(ip(addr)));
        assert!(!groups.iter().any(|g| ["aws", "stripe"].contains(g)), "{addr}: {groups:?}");
    }
    // The patterns as written, normalized.
    let stripe = &s.policy.groups[s.policy.group_index("stripe").unwrap()];
    let shown: Vec<_> = stripe.domains.iter().map(|p| p.display()).collect();
    assert_eq!(shown, ["api.stripe.com", "*.stripe-cdn.com"]);
    assert!(s.policy.groups[s.policy.group_index("web").unwrap()].domains.is_empty());
}

#[test]
fn a_domains_group_may_share_a_to_list_with_address_groups_and_take_udp_ports() {
    snapshot(
        "default_action: deny\ngroups:\n  q: {domains: [\"*.example.com\"]}\n  n: {cidrs: [10.0.0.0/8]}\n\
         rules:\n  - {name: r, from: [any], to: [n, q], ports: [udp/443, tcp, udp/8000-8999], action: allow}\n",
    );
}

// ---------------------------------------------------------------------------------------------
// Judging with names.

/// Rule order is the point: an address deny first, a rule whose `to` mixes names and
/// addresses, a names-only allow, a port that names never decide, a names deny, then an
/// address rule that names could overtake.
const POLICY: &str = "\
default_action: deny
groups:
  web: {pods: {selector: app=web}}
  blocked: {cidrs: [198.51.100.0/24]}
  partners: {cidrs: [203.0.113.0/24]}
  internet: {cidrs: [0.0.0.0/0]}
  stripe: {domains: [API.Stripe.com, \"*.stripe-cdn.com\"]}
  aws: {domains: [\"*.amazonaws.com\"]}
rules:
  - {name: deny-blocked, from: [any], to: [blocked], action: deny}
  - {name: web-to-aws-or-partners, from: [web], to: [aws, partners], ports: [tcp/443], action: allow}
  - {name: web-to-stripe, from: [web], to: [stripe], ports: [tcp/443, udp/443], action: allow}
  - {name: web-dns, from: [web], to: [any], ports: [udp/53], action: allow}
  - {name: web-out-reject, from: [web], to: [internet], ports: [tcp/443], action: reject}
";

#[test]
fn an_address_rule_before_every_names_rule_decides_at_once() {
    let s = snapshot(POLICY);
    assert_eq!(judge(&s, BLOCKED, TCP, 443, Unknown), "deny deny-blocked");
    // A name that a later rule would allow changes nothing: first match.
    assert_eq!(judge(&s, BLOCKED, TCP, 443, Name("api.stripe.com")), "deny deny-blocked");
}

#[test]
fn a_names_rule_first_waits_for_the_name_and_the_name_decides() {
    let s = snapshot(POLICY);
    assert_eq!(judge(&s, SERVER, TCP, 443, Unknown), "waits web-to-aws-or-partners");
    assert_eq!(
        judge(&s, SERVER, TCP, 443, Name("s3.amazonaws.com")),
        "allow web-to-aws-or-partners"
    );
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.com")), "allow web-to-stripe");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("API.STRIPE.COM.")), "allow web-to-stripe");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("img.stripe-cdn.com")), "allow web-to-stripe");
    // Not the apex of a wildcard, not a look-alike: the address rule after them decides.
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("amazonaws.com")), "reject web-out-reject");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("stripe.com")), "reject web-out-reject");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.com.evil")), "reject web-out-reject");
    // UDP (QUIC) on a port a names rule lists.
    assert_eq!(judge(&s, SERVER, UDP, 443, Unknown), "waits web-to-stripe");
    assert_eq!(judge(&s, SERVER, UDP, 443, Name("api.stripe.com")), "allow web-to-stripe");
    assert_eq!(judge(&s, SERVER, UDP, 443, Name("x.amazonaws.com")), "deny default");
}

#[test]
fn a_flow_with_no_name_never_matches_a_domains_group() {
    let s = snapshot(POLICY);
    assert_eq!(judge(&s, SERVER, TCP, 443, Absent), "reject web-out-reject");
    assert_eq!(judge(&s, SERVER, UDP, 443, Absent), "deny default");
    assert_eq!(judge(&s, PARTNER, TCP, 443, Absent), "allow web-to-aws-or-partners");
    // A name that is no host name matches nothing either.
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("")), "reject web-out-reject");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("x..amazonaws.com")), "reject web-out-reject");
    // No name is what `decide` (the judging without names) gives.
    for (dst, protocol, port) in [(SERVER, TCP, 443), (SERVER, UDP, 443), (PARTNER, TCP, 443)] {
        let d = s.decide(ip(WEB), ip(dst), protocol, Some(port));
        let expected = format!("{} {}", d.action.as_str(), s.rule_name(d.rule));
        assert_eq!(judge(&s, dst, protocol, port, Absent), expected);
    }
}

#[test]
fn a_mixed_to_list_needs_no_name_when_the_address_already_matches() {
    let s = snapshot(POLICY);
    assert_eq!(judge(&s, PARTNER, TCP, 443, Unknown), "allow web-to-aws-or-partners");
    assert_eq!(judge(&s, PARTNER, TCP, 443, Name("evil.example")), "allow web-to-aws-or-partners");
}

#[test]
fn ports_and_sources_that_no_names_rule_admits_decide_at_once() {
    let s = snapshot(POLICY);
    assert_eq!(judge(&s, SERVER, UDP, 53, Unknown), "allow web-dns");
    assert_eq!(judge(&s, SERVER, TCP, 80, Unknown), "deny default");
    assert_eq!(judge(&s, SERVER, ICMP, 0, Unknown), "deny default");
    // `batch` is in no names rule's `from`.
    assert_eq!(judge_from(&s, BATCH, SERVER, TCP, 443, Unknown), "deny default");
    assert_eq!(judge_from(&s, BATCH, SERVER, TCP, 443, Name("api.stripe.com")), "deny default");
}

#[test]
fn a_names_deny_before_an_allow_waits_and_blocks_only_its_names() {
    let s = snapshot(
        "default_action: deny\ngroups:\n  bad: {domains: [\"*.evil.example\", evil.example]}\n\
         rules:\n  - {name: no-evil, from: [any], to: [bad], ports: [tcp/443], action: reject}\n\
         \x20 - {name: web-out, from: [any], to: [any], ports: [tcp/443], action: allow}\n",
    );
    assert_eq!(judge(&s, SERVER, TCP, 443, Unknown), "waits no-evil");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("evil.example")), "reject no-evil");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("Www.Evil.Example")), "reject no-evil");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("good.example")), "allow web-out");
    assert_eq!(judge(&s, SERVER, TCP, 443, Absent), "allow web-out");
    assert_eq!(judge(&s, SERVER, TCP, 8443, Unknown), "deny default");
}

#[test]
fn without_domains_groups_judging_is_deciding_and_never_waits() {
    let s = snapshot(
        "default_action: reject\ngroups:\n  web: {pods: {selector: app=web}}\n  net: {cidrs: [192.0.2.0/24]}\n\
         rules:\n  - {name: a, from: [web], to: [net], ports: [tcp/443], action: allow}\n\
         \x20 - {name: b, from: [any], to: [any], ports: [udp], action: deny}\n",
    );
    assert!(!s.policy.uses_names());
    for src in [WEB, BATCH, SERVER] {
        for dst in [WEB, SERVER, PARTNER, BLOCKED] {
            for (protocol, port) in [(TCP, 443), (TCP, 80), (UDP, 443), (ICMP, 0)] {
                let port = matches!(protocol, TCP | UDP).then_some(port);
                let decision = s.decide(ip(src), ip(dst), protocol, port);
                for name in [Unknown, Absent, Name("api.stripe.com")] {
                    let judged = s.judge(ip(src), ip(dst), protocol, port, name);
                    assert_eq!(judged, Judgement::Decided(decision), "{src} {dst} {port:?}");
                }
            }
        }
    }
    assert_eq!(
        s.judge(ip(WEB), ip(SERVER), TCP, Some(443), Unknown).decision().map(|d| d.action),
        Some(Action::Allow)
    );
}

#[test]
fn many_domains_groups_wait_at_the_first_names_rule_that_admits_the_flow() {
    let mut text =
        String::from("default_action: deny\ngroups:\n  web: {pods: {selector: app=web}}\n");
    for g in 0..70 {
        text.push_str(&format!("  n{g:02}: {{domains: [\"*.n{g}.example\", n{g}.example]}}\n"));
    }
    text.push_str("rules:\n");
    for r in 0..70 {
        // Rules 0-9 on another port; rule 65 from another source.
        let port = if r < 10 { 8443 } else { 443 };
        let from = if r == 65 { "web" } else { "any" };
        text.push_str(&format!(
            "  - {{name: r{r}, from: [{from}], to: [n{r:02}], ports: [tcp/{port}], action: allow}}\n"
        ));
    }
    text.push_str("  - {name: last, from: [any], to: [any], ports: [tcp], action: reject}\n");
    let s = snapshot(&text);
    assert_eq!(judge(&s, SERVER, TCP, 443, Unknown), "waits r10");
    assert_eq!(judge(&s, SERVER, TCP, 8443, Unknown), "waits r0");
    assert_eq!(judge(&s, SERVER, TCP, 80, Unknown), "reject last");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("x.n67.example")), "allow r67");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("n5.example")), "reject last");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("a.b.n65.example")), "allow r65");
    assert_eq!(judge_from(&s, BATCH, SERVER, TCP, 443, Name("a.b.n65.example")), "reject last");
    assert_eq!(judge(&s, SERVER, TCP, 443, Absent), "reject last");
}

#[test]
fn a_reload_with_a_bad_pattern_keeps_the_running_policy_and_a_good_one_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    std::fs::write(dir.path().join("inventory.yaml"), INVENTORY).unwrap();
    let config = "policy: policy.yaml\nlabels:\n  inventory: [inventory.yaml]\n";
    std::fs::write(&path, config).unwrap();
    let config = Config::parse(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let mut plane = ControlPlane::start(&config, 1, None).unwrap_or_else(|e| panic!("{e}"));
    let state = plane.state();
    let before = state.snapshot();
    assert_eq!(judge(&before, SERVER, TCP, 443, Name("api.stripe.com")), "allow web-to-stripe");

    std::fs::write(&policy, POLICY.replace("API.Stripe.com", "api.*.stripe.com")).unwrap();
    plane.reload_all();
    assert_eq!(state.reloads_error.load(std::sync::atomic::Ordering::Relaxed), 1);
    let s = state.snapshot();
    assert_eq!(s.generation, before.generation, "nothing new was published");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.com")), "allow web-to-stripe");

    std::fs::write(&policy, POLICY.replace("API.Stripe.com", "api.stripe.net")).unwrap();
    plane.reload_all();
    assert_eq!(state.reloads_ok.load(std::sync::atomic::Ordering::Relaxed), 1);
    let s = state.snapshot();
    assert!(s.generation > before.generation);
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.com")), "reject web-out-reject");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.net")), "allow web-to-stripe");
}

#[test]
fn a_domains_group_that_no_rule_names_makes_no_flow_wait() {
    let s = snapshot(
        "default_action: deny\ngroups:\n  stripe: {domains: [api.stripe.com]}\n\
         rules:\n  - {name: out, from: [any], to: [any], ports: [tcp/443], action: allow}\n",
    );
    assert!(!s.policy.uses_names(), "names decide nothing here: the data plane need not read them");
    assert_eq!(s.policy.domains().pattern_count(), 1);
    assert_eq!(judge(&s, SERVER, TCP, 443, Unknown), "allow out");
    assert_eq!(judge(&s, SERVER, TCP, 443, Name("api.stripe.com")), "allow out");
    assert_eq!(judge(&s, SERVER, TCP, 80, Unknown), "deny default");
}
