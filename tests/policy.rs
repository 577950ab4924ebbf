//! The policy language through the public API: a bookinfo inventory parsed from YAML, policies
//! written as YAML and compiled, and verdicts asked of a [`Snapshot`] exactly as the data plane
//! asks them (two address lookups, group bitsets, first matching rule). Compile errors are
//! checked to the line and the text an operator reads. At the end: the control plane's policy
//! reload (a broken policy keeps the running one) and the flow log's rule names across a
//! reload. Stateful behaviour (return traffic, mid-flow pickup, rematch, fragments) belongs to
//! the pipeline and is tested by its unit tests in src/pipeline.rs.

mod common;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use labelwall::config::Config;
use labelwall::conntrack::Timeouts;
use labelwall::control::ControlPlane;
use labelwall::flowlog::FlowLogWriter;
use labelwall::labels::{EndpointKind, LabelTable, SourceRecords};
use labelwall::packet::ip_proto::{ICMP, ICMPV6, TCP, UDP};
use labelwall::pipeline::{FlowSettings, Mode, Outcome, Pipeline};
use labelwall::policy::compile::{MAX_GROUPS, PortMatch, parse_port};
use labelwall::policy::{Action, CompiledPolicy};
use labelwall::prefix::parse_network;
use labelwall::snapshot::{RuleHits, Snapshot};
use labelwall::sources::inventory;

/// Bookinfo in cluster `demo`, plus look-alikes in another namespace and another cluster, a
/// node, and the rating database as an external network (IPv4 and IPv6).
const INVENTORY: &str = r#"
endpoints:
  - {ip: 10.0.1.10, cluster: demo, namespace: bookinfo, name: productpage-v1, kind: pod,
     labels: {app: productpage, version: v1}}
  - {ip: 10.0.1.11, cluster: demo, namespace: bookinfo, name: details-v1, kind: pod,
     labels: {app: details, version: v1}}
  - {ip: 10.0.1.12, cluster: demo, namespace: bookinfo, name: reviews-v1, kind: pod,
     labels: {app: reviews, version: v1}}
  - {ip: 10.0.1.13, cluster: demo, namespace: bookinfo, name: reviews-v2, kind: pod,
     labels: {app: reviews, version: v2}}
  - {ip: 10.0.1.14, cluster: demo, namespace: bookinfo, name: reviews-v3, kind: pod,
     labels: {app: reviews, version: v3}}
  - {ip: 10.0.1.20, cluster: demo, namespace: bookinfo, name: ratings-v1-a, kind: pod,
     labels: {app: ratings, version: v1}}
  - {ip: 10.0.1.21, cluster: demo, namespace: bookinfo, name: ratings-v1-b, kind: pod,
     labels: {app: ratings, version: v1}}
  - {ip: 10.0.1.30, cluster: demo, namespace: bookinfo, name: other-5c6d, kind: pod,
     labels: {app: other}}
  - {ip: "fd00:10::20", cluster: demo, namespace: bookinfo, name: ratings-v2-v6, kind: pod,
     labels: {app: ratings, version: v2}}
  - {ip: "fd00:10::30", cluster: demo, namespace: bookinfo, name: other-v6, kind: pod,
     labels: {app: other}}
  - {ip: 10.0.2.20, cluster: demo, namespace: shop, name: ratings-shop, kind: pod,
     labels: {app: ratings}}
  - {ip: 10.9.1.20, cluster: staging, namespace: bookinfo, name: ratings-staging, kind: pod,
     labels: {app: ratings}}
  - {ip: 10.0.0.5, cluster: demo, name: ip-10-0-0-5, kind: node, labels: {node-role: worker}}
  - {ip: 10.20.0.0/24, name: rating-database, kind: external, labels: {app: mysql}}
  - {ip: "fd00:20::/64", name: rating-database-v6, kind: external, labels: {app: mysql}}
namespaces:
  - {cluster: demo, name: bookinfo, labels: {team: books, env: prod}}
  - {cluster: demo, name: shop, labels: {team: shop, env: dev}}
  - {cluster: staging, name: bookinfo, labels: {team: books, env: staging}}
"#;

const PRODUCTPAGE: &str = "10.0.1.10";
const DETAILS: &str = "10.0.1.11";
const REVIEWS_V1: &str = "10.0.1.12";
const REVIEWS_V2: &str = "10.0.1.13";
const REVIEWS_V3: &str = "10.0.1.14";
const RATINGS_A: &str = "10.0.1.20";
const RATINGS_B: &str = "10.0.1.21";
const OTHER: &str = "10.0.1.30";
const RATINGS_V6: &str = "fd00:10::20";
const OTHER_V6: &str = "fd00:10::30";
const SHOP_RATINGS: &str = "10.0.2.20";
const STAGING_RATINGS: &str = "10.9.1.20";
const NODE: &str = "10.0.0.5";
/// An address inside the rating database's network.
const DB: &str = "10.20.0.5";
const DB_V6: &str = "fd00:20::5";
/// In the pod range, but no label source knows it.
const UNKNOWN: &str = "10.0.1.99";
const INTERNET: &str = "192.0.2.10";
const INTERNET_V6: &str = "2001:db8::1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn bookinfo() -> Arc<SourceRecords> {
    let records = inventory::parse(Path::new("inventory.yaml"), INVENTORY)
        .unwrap_or_else(|errors| panic!("the inventory must load:\n{errors}"));
    Arc::new(records)
}

fn compile(text: &str) -> CompiledPolicy {
    CompiledPolicy::parse(Path::new("policy.yaml"), text)
        .unwrap_or_else(|errors| panic!("the policy must compile:\n{errors}"))
}

/// Every diagnostic of a policy that must not compile, as `labelwall check` prints them.
fn compile_errors(text: &str) -> Vec<String> {
    match CompiledPolicy::parse(Path::new("policy.yaml"), text) {
        Ok(_) => panic!("the policy must not compile:\n{text}"),
        Err(diagnostics) => diagnostics.0.iter().map(ToString::to_string).collect(),
    }
}

fn snapshot(policy: &str) -> Snapshot {
    let policy = compile(policy);
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    Snapshot::new(1, Arc::new(LabelTable::build(&[bookinfo()])), Arc::new(policy), hits)
}

/// Verdict and deciding rule for a new flow from `src` to `dst`.
fn verdict<'a>(
    s: &'a Snapshot,
    src: &str,
    dst: &str,
    protocol: u8,
    port: Option<u16>,
) -> (Action, &'a str) {
    let decision = s.decide(ip(src), ip(dst), protocol, port);
    (decision.action, s.rule_name(decision.rule))
}

fn tcp<'a>(s: &'a Snapshot, src: &str, dst: &str, port: u16) -> (Action, &'a str) {
    verdict(s, src, dst, TCP, Some(port))
}

fn udp<'a>(s: &'a Snapshot, src: &str, dst: &str, port: u16) -> (Action, &'a str) {
    verdict(s, src, dst, UDP, Some(port))
}

/// The groups an address belongs to, `any` first, then by name.
fn groups_of<'a>(s: &'a Snapshot, addr: &str) -> Vec<&'a str> {
    s.group_names(&s.groups_of(ip(addr)))
}

// ---------------------------------------------------------------------------------------------
// The inventory the tests stand on.

#[test]
fn the_bookinfo_inventory_interns_pods_with_equal_labels_once() {
    let table = LabelTable::build(&[bookinfo()]);
    assert_eq!(table.endpoint_count(), 15);
    let a = table.lookup(ip(RATINGS_A)).unwrap();
    let b = table.lookup(ip(RATINGS_B)).unwrap();
    assert_eq!((&*a.name, &*b.name), ("ratings-v1-a", "ratings-v1-b"));
    assert_eq!(a.identity, b.identity, "same cluster, namespace, kind and labels");
    // Same labels in another namespace or cluster are another identity.
    assert_ne!(table.identity_of(ip(SHOP_RATINGS)), Some(a.identity));
    assert_ne!(table.identity_of(ip(STAGING_RATINGS)), Some(a.identity));
    let identity = table.identity(a.identity);
    assert_eq!(identity.namespace_labels["team"], "books");
    assert_eq!(&*table.lookup(ip(DB)).unwrap().name, "rating-database");
    assert_eq!(table.identity(table.identity_of(ip(DB)).unwrap()).kind, EndpointKind::External);
    assert_eq!(&*table.lookup(ip(DB_V6)).unwrap().name, "rating-database-v6");
    assert_eq!(table.identity(table.identity_of(ip(NODE)).unwrap()).kind, EndpointKind::Node);
    assert!(table.lookup(ip(UNKNOWN)).is_none());
    assert!(table.lookup(ip(INTERNET_V6)).is_none());
}

// ---------------------------------------------------------------------------------------------
// Rule order and the default action.

const REVIEWS_TO_RATINGS: &str = r#"
default_action: allow
groups:
  reviews: {pods: {selector: app=reviews}}
  reviews-v1: {pods: {selector: "app=reviews,version=v1"}}
  ratings: {pods: {selector: app=ratings}}
rules:
  - {name: block-reviews-v1, from: [reviews-v1], to: [ratings], action: deny}
  - {name: reviews-to-ratings, from: [reviews], to: [ratings], ports: [tcp/9080], action: allow}
  - {name: reviews-elsewhere, from: [reviews], to: [any], action: reject}
"#;

#[test]
fn an_earlier_deny_shadows_a_later_allow() {
    let s = snapshot(REVIEWS_TO_RATINGS);
    assert_eq!(tcp(&s, REVIEWS_V1, RATINGS_A, 9080), (Action::Deny, "block-reviews-v1"));
    assert_eq!(tcp(&s, REVIEWS_V2, RATINGS_A, 9080), (Action::Allow, "reviews-to-ratings"));
    assert_eq!(tcp(&s, REVIEWS_V3, RATINGS_B, 9080), (Action::Allow, "reviews-to-ratings"));
    // The allow admits only its port; the next matching rule decides the rest.
    assert_eq!(tcp(&s, REVIEWS_V2, RATINGS_A, 22), (Action::Reject, "reviews-elsewhere"));
    assert_eq!(tcp(&s, REVIEWS_V2, DETAILS, 9080), (Action::Reject, "reviews-elsewhere"));
}

#[test]
fn an_earlier_allow_shadows_a_later_deny() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  reviews: {pods: {selector: app=reviews}}
  ratings: {pods: {selector: app=ratings}}
rules:
  - {name: reviews-to-ratings, from: [reviews], to: [ratings], ports: [tcp/9080], action: allow}
  - {name: nobody-to-ratings, from: [any], to: [ratings], action: deny}
  - {name: too-late, from: [reviews], to: [ratings], action: allow}
"#,
    );
    assert_eq!(tcp(&s, REVIEWS_V1, RATINGS_A, 9080), (Action::Allow, "reviews-to-ratings"));
    assert_eq!(tcp(&s, REVIEWS_V1, RATINGS_A, 9081), (Action::Deny, "nobody-to-ratings"));
    assert_eq!(tcp(&s, PRODUCTPAGE, RATINGS_A, 9080), (Action::Deny, "nobody-to-ratings"));
}

#[test]
fn rules_match_by_initiator_so_the_reverse_direction_is_a_different_question() {
    let s = snapshot(REVIEWS_TO_RATINGS);
    // ratings -> reviews is matched by no rule (`from` is where the flow started).
    assert_eq!(tcp(&s, RATINGS_A, REVIEWS_V2, 9080), (Action::Allow, "default"));
}

#[test]
fn default_action_deny_decides_flows_that_no_rule_matches() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  productpage: {pods: {selector: app=productpage}}
  details: {pods: {selector: app=details}}
rules:
  - {name: productpage-to-details, from: [productpage], to: [details], action: allow}
"#,
    );
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9080), (Action::Allow, "productpage-to-details"));
    let decision = s.decide(ip(DETAILS), ip(PRODUCTPAGE), TCP, Some(9080));
    assert_eq!((decision.action, decision.rule, decision.log), (Action::Deny, None, false));
    assert_eq!(s.rule_name(decision.rule), "default");
    assert_eq!(tcp(&s, UNKNOWN, INTERNET, 443), (Action::Deny, "default"));
}

#[test]
fn default_action_allow_with_default_log_marks_unmatched_flows_for_the_flow_log() {
    let s = snapshot(
        r#"
default_action: allow
default_log: true
groups:
  other: {pods: {selector: app=other}}
rules:
  - {name: other-out, from: [other], to: [any], action: reject}
"#,
    );
    let decision = s.decide(ip(PRODUCTPAGE), ip(INTERNET), TCP, Some(443));
    assert_eq!((decision.action, decision.rule, decision.log), (Action::Allow, None, true));
    let decision = s.decide(ip(OTHER), ip(INTERNET), TCP, Some(443));
    assert_eq!((decision.action, decision.rule, decision.log), (Action::Reject, Some(0), false));
}

#[test]
fn a_rule_with_log_true_asks_for_the_flow_log_and_audit_is_its_own_action() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  ratings: {pods: {selector: app=ratings}}
  rating-database: {cidrs: [10.20.0.0/24]}
rules:
  - {name: ratings-to-db, from: [ratings], to: [rating-database], ports: [tcp/3306], action: allow,
     log: true}
  - {name: try-it, from: [any], to: [rating-database], action: audit}
"#,
    );
    let decision = s.decide(ip(RATINGS_A), ip(DB), TCP, Some(3306));
    assert_eq!((decision.action, decision.rule, decision.log), (Action::Allow, Some(0), true));
    let decision = s.decide(ip(OTHER), ip(DB), TCP, Some(3306));
    assert_eq!((decision.action, decision.rule, decision.log), (Action::Audit, Some(1), false));
    assert!(decision.action.passes(), "audit lets the flow through");
}

// ---------------------------------------------------------------------------------------------
// except

#[test]
fn except_removes_addresses_from_the_whole_group_including_pods_selected_by_labels() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  bookinfo-but-ratings-ips:
    pods: {namespace: bookinfo}
    cidrs: [10.20.0.0/24]
    except: [10.0.1.20/31, 10.20.0.128/25]
  ratings: {pods: {selector: app=ratings}}
rules:
  - {name: from-bookinfo, from: [bookinfo-but-ratings-ips], to: [any], action: allow}
"#,
    );
    // Pods in the excepted range leave the group although their labels select them.
    assert_eq!(groups_of(&s, RATINGS_A), ["any", "ratings"]);
    assert_eq!(groups_of(&s, RATINGS_B), ["any", "ratings"]);
    assert_eq!(groups_of(&s, PRODUCTPAGE), ["any", "bookinfo-but-ratings-ips"]);
    assert_eq!(groups_of(&s, RATINGS_V6), ["any", "bookinfo-but-ratings-ips", "ratings"]);
    // And CIDR members in the excepted range leave it too.
    assert_eq!(groups_of(&s, "10.20.0.127"), ["any", "bookinfo-but-ratings-ips"]);
    assert_eq!(groups_of(&s, "10.20.0.128"), ["any"]);
    assert_eq!(tcp(&s, PRODUCTPAGE, INTERNET, 443), (Action::Allow, "from-bookinfo"));
    assert_eq!(tcp(&s, RATINGS_A, INTERNET, 443), (Action::Deny, "default"));
    assert_eq!(tcp(&s, "10.20.0.200", INTERNET, 443), (Action::Deny, "default"));
    assert_eq!(tcp(&s, "10.20.0.100", INTERNET, 443), (Action::Allow, "from-bookinfo"));
}

#[test]
fn except_of_one_group_does_not_touch_another_group_with_the_same_cidr() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  internet:
    cidrs: [0.0.0.0/0, "::/0"]
    except: [10.0.0.0/8, "fd00::/8"]
  everything: {cidrs: [0.0.0.0/0, "::/0"]}
rules:
  - {name: to-internet, from: [any], to: [internet], ports: [tcp/443], action: allow}
"#,
    );
    assert_eq!(groups_of(&s, INTERNET), ["any", "everything", "internet"]);
    assert_eq!(groups_of(&s, INTERNET_V6), ["any", "everything", "internet"]);
    assert_eq!(groups_of(&s, UNKNOWN), ["any", "everything"]);
    assert_eq!(groups_of(&s, RATINGS_V6), ["any", "everything"]);
    assert_eq!(tcp(&s, PRODUCTPAGE, INTERNET, 443), (Action::Allow, "to-internet"));
    assert_eq!(tcp(&s, RATINGS_V6, INTERNET_V6, 443), (Action::Allow, "to-internet"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DB, 443), (Action::Deny, "default"));
    assert_eq!(tcp(&s, RATINGS_V6, DB_V6, 443), (Action::Deny, "default"));
}

// ---------------------------------------------------------------------------------------------
// Ports and protocols.

const PORTS: &str = r#"
default_action: deny
rules:
  - {name: web-range, from: [any], to: [any], ports: [tcp/8000-8999], action: allow}
  - {name: dns, from: [any], to: [any], ports: [udp/53], action: audit}
  - {name: ping, from: [any], to: [any], ports: [icmp], action: allow}
  - {name: ping6, from: [any], to: [any], ports: [icmpv6], action: reject}
  - {name: any-udp, from: [any], to: [any], ports: [udp], action: reject}
  - {name: mysql-or-ssh, from: [any], to: [any], ports: [tcp/3306, tcp/22], action: allow}
"#;

#[test]
fn a_port_range_includes_both_ends_and_nothing_beyond() {
    let s = snapshot(PORTS);
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 7999), (Action::Deny, "default"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 8000), (Action::Allow, "web-range"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 8500), (Action::Allow, "web-range"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 8999), (Action::Allow, "web-range"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9000), (Action::Deny, "default"));
    // The range is TCP only.
    assert_eq!(udp(&s, PRODUCTPAGE, DETAILS, 8000), (Action::Reject, "any-udp"));
}

#[test]
fn a_list_of_ports_admits_each_of_them() {
    let s = snapshot(PORTS);
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "mysql-or-ssh"));
    assert_eq!(tcp(&s, RATINGS_A, DB, 22), (Action::Allow, "mysql-or-ssh"));
    assert_eq!(tcp(&s, RATINGS_A, DB, 23), (Action::Deny, "default"));
}

#[test]
fn udp_53_does_not_match_tcp_53_and_bare_udp_matches_every_udp_port() {
    let s = snapshot(PORTS);
    assert_eq!(udp(&s, PRODUCTPAGE, UNKNOWN, 53), (Action::Audit, "dns"));
    assert_eq!(tcp(&s, PRODUCTPAGE, UNKNOWN, 53), (Action::Deny, "default"));
    assert_eq!(udp(&s, PRODUCTPAGE, UNKNOWN, 1), (Action::Reject, "any-udp"));
    assert_eq!(udp(&s, PRODUCTPAGE, UNKNOWN, 65535), (Action::Reject, "any-udp"));
}

#[test]
fn bare_tcp_matches_every_tcp_port_and_nothing_else() {
    let s = snapshot(
        r#"
default_action: deny
rules:
  - {name: all-tcp, from: [any], to: [any], ports: [tcp], action: allow}
"#,
    );
    for port in [1, 80, 8080, 65535] {
        assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, port), (Action::Allow, "all-tcp"), "{port}");
    }
    assert_eq!(udp(&s, PRODUCTPAGE, DETAILS, 80), (Action::Deny, "default"));
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, ICMP, None), (Action::Deny, "default"));
    // A packet without a known port (a non-first fragment) still matches the whole protocol.
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, TCP, None), (Action::Allow, "all-tcp"));
}

#[test]
fn icmp_and_icmpv6_rules_match_only_their_own_protocol() {
    let s = snapshot(PORTS);
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, ICMP, None), (Action::Allow, "ping"));
    assert_eq!(verdict(&s, RATINGS_V6, OTHER_V6, ICMPV6, None), (Action::Reject, "ping6"));
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, 47, None), (Action::Deny, "default"));
}

#[test]
fn a_port_rule_does_not_match_a_packet_whose_port_is_unknown() {
    let s = snapshot(PORTS);
    // A non-first fragment carries no ports: only whole-protocol rules can match it.
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, TCP, None), (Action::Deny, "default"));
    assert_eq!(verdict(&s, PRODUCTPAGE, DETAILS, UDP, None), (Action::Reject, "any-udp"));
}

#[test]
fn a_rule_without_ports_matches_every_protocol_and_port() {
    let s = snapshot(
        r#"
default_action: allow
groups:
  other: {pods: {selector: app=other}}
rules:
  - {name: other-nowhere, from: [other], to: [any], action: deny}
"#,
    );
    assert_eq!(tcp(&s, OTHER, DB, 3306), (Action::Deny, "other-nowhere"));
    assert_eq!(udp(&s, OTHER, DB, 53), (Action::Deny, "other-nowhere"));
    assert_eq!(verdict(&s, OTHER, DB, ICMP, None), (Action::Deny, "other-nowhere"));
    assert_eq!(verdict(&s, OTHER_V6, DB_V6, ICMPV6, None), (Action::Deny, "other-nowhere"));
    assert_eq!(verdict(&s, OTHER, DB, 132, None), (Action::Deny, "other-nowhere"));
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "default"));
}

#[test]
fn every_port_form_parses_to_its_protocol_and_range() {
    let cases = [
        ("tcp/443", TCP, 443, 443),
        ("udp/53", UDP, 53, 53),
        ("tcp/8000-8999", TCP, 8000, 8999),
        ("tcp/1-65535", TCP, 1, 65535),
        ("udp/5000-5000", UDP, 5000, 5000),
        ("tcp", TCP, 0, 65535),
        ("udp", UDP, 0, 65535),
        ("icmp", ICMP, 0, 65535),
        ("icmpv6", ICMPV6, 0, 65535),
    ];
    for (text, protocol, first, last) in cases {
        assert_eq!(parse_port(text), Ok(PortMatch { protocol, first, last }), "{text}");
    }
    let bad = [
        ("tcp/0", "`tcp/0`: `0` is not a port from 1 to 65535"),
        ("tcp/65536", "`tcp/65536`: `65536` is not a port from 1 to 65535"),
        ("tcp/90-80", "`tcp/90-80`: the range is backwards"),
        ("tcp/", "`tcp/`: `` is not a port from 1 to 65535"),
        ("tcp/80-", "`tcp/80-`: `` is not a port from 1 to 65535"),
        ("sctp/1", "`sctp/1`: unknown protocol `sctp` (use tcp, udp, icmp or icmpv6)"),
        ("TCP/80", "`TCP/80`: unknown protocol `TCP` (use tcp, udp, icmp or icmpv6)"),
        ("icmp/3", "`icmp/3`: icmp has no ports"),
        ("icmpv6/128", "`icmpv6/128`: icmpv6 has no ports"),
    ];
    for (text, message) in bad {
        assert_eq!(parse_port(text), Err(message.to_string()), "{text}");
    }
}

#[test]
fn networks_are_cidrs_or_single_addresses_without_host_bits() {
    assert_eq!(parse_network("10.20.0.0/24").unwrap().to_string(), "10.20.0.0/24");
    assert_eq!(parse_network("10.20.0.5").unwrap().to_string(), "10.20.0.5/32");
    assert_eq!(parse_network("fd00::1").unwrap().to_string(), "fd00::1/128");
    assert_eq!(parse_network("::/0").unwrap().to_string(), "::/0");
    assert_eq!(
        parse_network("10.20.0.5/24"),
        Err("`10.20.0.5/24` has host bits set; did you mean 10.20.0.0/24?".to_string())
    );
    assert_eq!(
        parse_network("fd00::1/64"),
        Err("`fd00::1/64` has host bits set; did you mean fd00::/64?".to_string())
    );
    assert_eq!(
        parse_network("10.0.0.0/33"),
        Err("`10.0.0.0/33` is not an IPv4 or IPv6 network (a.b.c.d/len)".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// IPv6

#[test]
fn ipv6_pods_and_ipv6_cidrs_are_matched_like_ipv4_ones() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  ratings: {pods: {namespace: bookinfo, selector: app=ratings}}
  rating-database: {cidrs: [10.20.0.0/24, "fd00:20::/64"]}
  other: {pods: {selector: app=other}}
rules:
  - {name: ratings-to-db, from: [ratings], to: [rating-database], ports: [tcp/3306], action: allow}
  - {name: others-to-db, from: [any], to: [rating-database], action: reject}
"#,
    );
    assert_eq!(groups_of(&s, RATINGS_V6), ["any", "ratings"]);
    assert_eq!(groups_of(&s, DB_V6), ["any", "rating-database"]);
    assert_eq!(groups_of(&s, "fd00:20::ffff:1"), ["any", "rating-database"]);
    assert_eq!(groups_of(&s, "fd00:21::1"), ["any"]);
    assert_eq!(tcp(&s, RATINGS_V6, DB_V6, 3306), (Action::Allow, "ratings-to-db"));
    assert_eq!(tcp(&s, OTHER_V6, DB_V6, 3306), (Action::Reject, "others-to-db"));
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "ratings-to-db"));
    assert_eq!(tcp(&s, OTHER, DB, 3306), (Action::Reject, "others-to-db"));
    // An IPv4 CIDR never matches an IPv6 address and vice versa.
    assert_eq!(tcp(&s, RATINGS_V6, "::ffff:10.20.0.5", 3306), (Action::Deny, "default"));
}

// ---------------------------------------------------------------------------------------------
// Unknown addresses.

#[test]
fn unknown_addresses_match_only_any_and_cidr_groups() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  all-pods: {pods: {}}
  all-nodes: {nodes: {}}
  all-external: {external: {}}
  not-other: {pods: {selector: "app!=other"}}
  no-app: {pods: {selector: "!app"}}
  pod-range: {cidrs: [10.0.1.0/24]}
  internet: {cidrs: [0.0.0.0/0, "::/0"], except: [10.0.0.0/8]}
rules:
  - {name: pods-out, from: [all-pods], to: [any], action: allow}
  - {name: nodes-out, from: [all-nodes], to: [any], action: allow}
  - {name: external-out, from: [all-external], to: [any], action: allow}
  - {name: not-other-out, from: [not-other], to: [any], action: allow}
  - {name: no-app-out, from: [no-app], to: [any], action: allow}
  - {name: pod-range-out, from: [pod-range], to: [any], ports: [tcp/80], action: audit}
  - {name: any-to-internet, from: [any], to: [internet], ports: [tcp/443], action: reject}
"#,
    );
    // An unknown address has no labels: negative selectors and empty selectors do not make it
    // a pod, a node or an external endpoint.
    assert_eq!(groups_of(&s, UNKNOWN), ["any", "pod-range"]);
    assert_eq!(groups_of(&s, INTERNET), ["any", "internet"]);
    assert_eq!(groups_of(&s, INTERNET_V6), ["any", "internet"]);
    assert_eq!(groups_of(&s, "fd00:99::1"), ["any", "internet"]);
    assert_eq!(tcp(&s, UNKNOWN, PRODUCTPAGE, 9080), (Action::Deny, "default"));
    assert_eq!(tcp(&s, UNKNOWN, PRODUCTPAGE, 80), (Action::Audit, "pod-range-out"));
    assert_eq!(tcp(&s, UNKNOWN, INTERNET, 443), (Action::Reject, "any-to-internet"));
    assert_eq!(tcp(&s, INTERNET, PRODUCTPAGE, 9080), (Action::Deny, "default"));
    // Known ones of each kind do match.
    assert_eq!(tcp(&s, PRODUCTPAGE, INTERNET, 9080), (Action::Allow, "pods-out"));
    assert_eq!(tcp(&s, NODE, INTERNET, 9080), (Action::Allow, "nodes-out"));
    assert_eq!(tcp(&s, DB, INTERNET, 9080), (Action::Allow, "external-out"));
}

// ---------------------------------------------------------------------------------------------
// Narrowing pods by cluster, namespace and namespace labels.

const NARROWING: &str = r#"
default_action: deny
groups:
  ratings-anywhere: {pods: {selector: app=ratings}}
  ratings-in-bookinfo: {pods: {namespace: bookinfo, selector: app=ratings}}
  ratings-in-demo: {pods: {cluster: demo, selector: app=ratings}}
  ratings-in-demo-bookinfo: {pods: {cluster: demo, namespace: bookinfo, selector: app=ratings}}
  books-team: {pods: {namespace_selector: team=books}}
  prod-ratings: {pods: {namespace_selector: "env in (prod)", selector: app=ratings}}
  not-prod-ratings: {pods: {namespace_selector: "env!=prod", selector: app=ratings}}
rules:
  - {name: demo-bookinfo-ratings-to-db, from: [ratings-in-demo-bookinfo], to: [any],
     ports: [tcp/3306], action: allow}
  - {name: other-ratings-to-db, from: [ratings-anywhere], to: [any], ports: [tcp/3306],
     action: reject}
"#;

#[test]
fn namespace_narrows_pods_to_that_namespace_in_every_cluster() {
    let s = snapshot(NARROWING);
    let members: Vec<&str> = [RATINGS_A, RATINGS_V6, SHOP_RATINGS, STAGING_RATINGS, PRODUCTPAGE]
        .into_iter()
        .filter(|a| groups_of(&s, a).contains(&"ratings-in-bookinfo"))
        .collect();
    assert_eq!(members, [RATINGS_A, RATINGS_V6, STAGING_RATINGS]);
}

#[test]
fn cluster_narrows_pods_to_that_cluster() {
    let s = snapshot(NARROWING);
    let members: Vec<&str> = [RATINGS_A, RATINGS_V6, SHOP_RATINGS, STAGING_RATINGS, PRODUCTPAGE]
        .into_iter()
        .filter(|a| groups_of(&s, a).contains(&"ratings-in-demo"))
        .collect();
    assert_eq!(members, [RATINGS_A, RATINGS_V6, SHOP_RATINGS]);
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "demo-bookinfo-ratings-to-db"));
    assert_eq!(tcp(&s, SHOP_RATINGS, DB, 3306), (Action::Reject, "other-ratings-to-db"));
    assert_eq!(tcp(&s, STAGING_RATINGS, DB, 3306), (Action::Reject, "other-ratings-to-db"));
}

#[test]
fn namespace_selector_matches_the_labels_of_the_pods_namespace() {
    let s = snapshot(NARROWING);
    assert_eq!(
        groups_of(&s, RATINGS_A),
        [
            "any",
            "books-team",
            "prod-ratings",
            "ratings-anywhere",
            "ratings-in-bookinfo",
            "ratings-in-demo",
            "ratings-in-demo-bookinfo"
        ]
    );
    assert_eq!(
        groups_of(&s, SHOP_RATINGS),
        ["any", "not-prod-ratings", "ratings-anywhere", "ratings-in-demo"]
    );
    // staging's bookinfo has team=books too, but env=staging.
    assert_eq!(
        groups_of(&s, STAGING_RATINGS),
        ["any", "books-team", "not-prod-ratings", "ratings-anywhere", "ratings-in-bookinfo"]
    );
    assert_eq!(groups_of(&s, PRODUCTPAGE), ["any", "books-team"]);
    // Namespace labels are for pods: a node or external endpoint is never selected by them.
    assert_eq!(groups_of(&s, NODE), ["any"]);
}

#[test]
fn a_namespace_without_a_namespaces_record_has_no_labels() {
    let mut records = (*bookinfo()).clone();
    records.namespaces.retain(|ns| ns.name != "shop");
    let policy = compile(
        r#"
default_action: deny
groups:
  unlabelled-namespaces: {pods: {namespace_selector: "!team"}}
"#,
    );
    let hits = Arc::new(RuleHits::new(1, 0));
    let labels = Arc::new(LabelTable::build(&[Arc::new(records)]));
    let s = Snapshot::new(1, labels, Arc::new(policy), hits);
    assert_eq!(groups_of(&s, SHOP_RATINGS), ["any", "unlabelled-namespaces"]);
    assert_eq!(groups_of(&s, RATINGS_A), ["any"]);
}

#[test]
fn every_selector_operator_selects_the_pods_kubectl_would() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  eq: {pods: {cluster: demo, namespace: bookinfo, selector: app=reviews}}
  eqeq: {pods: {cluster: demo, namespace: bookinfo, selector: app==reviews}}
  ne: {pods: {cluster: demo, namespace: bookinfo, selector: app!=reviews}}
  in: {pods: {cluster: demo, namespace: bookinfo, selector: "version in (v2, v3)"}}
  notin: {pods: {cluster: demo, namespace: bookinfo, selector: "version notin (v1)"}}
  exists: {pods: {cluster: demo, namespace: bookinfo, selector: version}}
  not-exists: {pods: {cluster: demo, namespace: bookinfo, selector: "!version"}}
  and: {pods: {cluster: demo, namespace: bookinfo, selector: "app=reviews, version!=v1"}}
"#,
    );
    let pods = [
        PRODUCTPAGE,
        DETAILS,
        REVIEWS_V1,
        REVIEWS_V2,
        REVIEWS_V3,
        RATINGS_A,
        RATINGS_B,
        OTHER,
        RATINGS_V6,
        OTHER_V6,
    ];
    let members = |group: &str| -> Vec<&str> {
        pods.into_iter().filter(|pod| groups_of(&s, pod).contains(&group)).collect()
    };
    assert_eq!(members("eq"), [REVIEWS_V1, REVIEWS_V2, REVIEWS_V3]);
    assert_eq!(members("eqeq"), [REVIEWS_V1, REVIEWS_V2, REVIEWS_V3]);
    assert_eq!(
        members("ne"),
        [PRODUCTPAGE, DETAILS, RATINGS_A, RATINGS_B, OTHER, RATINGS_V6, OTHER_V6]
    );
    assert_eq!(members("in"), [REVIEWS_V2, REVIEWS_V3, RATINGS_V6]);
    // notin and != also hold when the label is absent, as in Kubernetes.
    assert_eq!(members("notin"), [REVIEWS_V2, REVIEWS_V3, OTHER, RATINGS_V6, OTHER_V6]);
    assert_eq!(
        members("exists"),
        [
            PRODUCTPAGE,
            DETAILS,
            REVIEWS_V1,
            REVIEWS_V2,
            REVIEWS_V3,
            RATINGS_A,
            RATINGS_B,
            RATINGS_V6
        ]
    );
    assert_eq!(members("not-exists"), [OTHER, OTHER_V6]);
    assert_eq!(members("and"), [REVIEWS_V2, REVIEWS_V3]);
}

// ---------------------------------------------------------------------------------------------
// Kinds and unions.

#[test]
fn nodes_and_external_groups_select_only_their_own_kind() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  all-pods: {pods: {}}
  all-nodes: {nodes: {}}
  demo-nodes: {nodes: {cluster: demo, selector: node-role=worker}}
  staging-nodes: {nodes: {cluster: staging}}
  all-external: {external: {}}
  mysql: {external: {selector: app=mysql}}
  mysql-in-demo: {external: {cluster: demo, selector: app=mysql}}
  mysql-pods: {pods: {selector: app=mysql}}
"#,
    );
    assert_eq!(groups_of(&s, PRODUCTPAGE), ["any", "all-pods"]);
    assert_eq!(groups_of(&s, NODE), ["any", "all-nodes", "demo-nodes"]);
    // The database has no cluster, so a cluster-narrowed external group does not select it.
    assert_eq!(groups_of(&s, DB), ["any", "all-external", "mysql"]);
    assert_eq!(groups_of(&s, DB_V6), ["any", "all-external", "mysql"]);
}

#[test]
fn a_union_group_selects_pods_nodes_external_endpoints_and_cidrs_together() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  ratings-and-friends:
    pods: {selector: app=ratings, namespace: bookinfo}
    nodes: {selector: node-role=worker}
    external: {selector: app=mysql}
    cidrs: [192.0.2.0/24]
rules:
  - {name: friends, from: [ratings-and-friends], to: [ratings-and-friends], action: allow}
"#,
    );
    for member in [RATINGS_A, RATINGS_V6, STAGING_RATINGS, NODE, DB, DB_V6, INTERNET] {
        assert_eq!(groups_of(&s, member), ["any", "ratings-and-friends"], "{member}");
    }
    for outsider in [OTHER, SHOP_RATINGS, PRODUCTPAGE, UNKNOWN, INTERNET_V6] {
        assert_eq!(groups_of(&s, outsider), ["any"], "{outsider}");
    }
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "friends"));
    assert_eq!(tcp(&s, NODE, INTERNET, 443), (Action::Allow, "friends"));
    assert_eq!(tcp(&s, OTHER, DB, 3306), (Action::Deny, "default"));
}

#[test]
fn a_group_in_both_from_and_to_allows_traffic_within_it() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  bookinfo: {pods: {cluster: demo, namespace: bookinfo}}
rules:
  - {name: within-bookinfo, from: [bookinfo], to: [bookinfo], action: allow}
"#,
    );
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9080), (Action::Allow, "within-bookinfo"));
    assert_eq!(tcp(&s, RATINGS_V6, OTHER_V6, 9080), (Action::Allow, "within-bookinfo"));
    assert_eq!(tcp(&s, PRODUCTPAGE, SHOP_RATINGS, 9080), (Action::Deny, "default"));
    assert_eq!(tcp(&s, STAGING_RATINGS, PRODUCTPAGE, 9080), (Action::Deny, "default"));
    assert_eq!(tcp(&s, UNKNOWN, PRODUCTPAGE, 9080), (Action::Deny, "default"));
}

#[test]
fn a_rule_list_of_groups_is_a_union() {
    let s = snapshot(
        r#"
default_action: deny
groups:
  productpage: {pods: {selector: app=productpage}}
  reviews: {pods: {selector: app=reviews}}
  details: {pods: {selector: app=details}}
  ratings: {pods: {selector: app=ratings}}
rules:
  - {name: frontends-to-backends, from: [productpage, reviews], to: [details, ratings],
     action: allow}
"#,
    );
    for (src, dst) in [
        (PRODUCTPAGE, DETAILS),
        (PRODUCTPAGE, RATINGS_A),
        (REVIEWS_V2, DETAILS),
        (REVIEWS_V3, RATINGS_B),
    ] {
        assert_eq!(tcp(&s, src, dst, 9080), (Action::Allow, "frontends-to-backends"));
    }
    assert_eq!(tcp(&s, DETAILS, RATINGS_A, 9080), (Action::Deny, "default"));
    assert_eq!(tcp(&s, PRODUCTPAGE, REVIEWS_V1, 9080), (Action::Deny, "default"));
}

// ---------------------------------------------------------------------------------------------
// Many rules and many groups: bitsets of several words.

#[test]
fn the_first_match_is_found_among_300_rules_spanning_five_bitset_words() {
    let mut text = String::from(
        "default_action: deny\ngroups:\n  productpage: {pods: {selector: app=productpage}}\n  \
         details: {pods: {selector: app=details}}\n  other: {pods: {selector: app=other}}\n\
         rules:\n",
    );
    for i in 0..300 {
        let rule = match i {
            250 => "from: [productpage], to: [details], ports: [tcp/9080], action: allow",
            251.. => "from: [any], to: [any], action: reject",
            // One rule per bitset word that a ratings flow matches, on a port of its own.
            63 | 64 | 127 | 128 => "from: [any], to: [any], ports: [udp/5353], action: audit",
            _ => "from: [other], to: [details], action: deny",
        };
        writeln!(text, "  - {{name: rule-{i:03}, {rule}}}").unwrap();
    }
    let s = snapshot(&text);
    assert_eq!(s.policy.rules.len(), 300);
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9080), (Action::Allow, "rule-250"));
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9081), (Action::Reject, "rule-251"));
    assert_eq!(tcp(&s, OTHER, DETAILS, 9080), (Action::Deny, "rule-000"));
    assert_eq!(udp(&s, RATINGS_A, DB, 5353), (Action::Audit, "rule-063"));
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Reject, "rule-251"));
    assert_eq!(s.policy.rules[250].line, Some(257), "rule lines are kept for explain");
}

#[test]
fn the_first_match_crosses_a_bitset_word_boundary() {
    // Rules 0..=63 fill the first word and never match; rule 64 opens the second.
    let mut text = String::from("default_action: deny\nrules:\n");
    for i in 0..64 {
        writeln!(
            text,
            "  - {{name: miss-{i}, from: [any], to: [any], ports: [udp/{}], action: deny}}",
            i + 1
        )
        .unwrap();
    }
    text.push_str("  - {name: hit, from: [any], to: [any], ports: [tcp/443], action: allow}\n");
    let s = snapshot(&text);
    assert_eq!(tcp(&s, PRODUCTPAGE, INTERNET, 443), (Action::Allow, "hit"));
    assert_eq!(udp(&s, PRODUCTPAGE, INTERNET, 64), (Action::Deny, "miss-63"));
    assert_eq!(tcp(&s, PRODUCTPAGE, INTERNET, 444), (Action::Deny, "default"));
}

#[test]
fn groups_beyond_the_first_64_bits_are_selected_and_matched() {
    let mut text =
        String::from("default_action: deny\ngroups:\n  a-other: {pods: {selector: app=other}}\n");
    for i in 0..100 {
        writeln!(text, "  net-{i:03}: {{cidrs: [10.100.{i}.0/24]}}").unwrap();
    }
    text.push_str(
        "  zz-ratings: {pods: {selector: app=ratings}}\nrules:\n  \
         - {name: ratings-to-net-099, from: [zz-ratings], to: [net-099], action: allow}\n  \
         - {name: other-to-net-070, from: [a-other], to: [net-070], action: reject}\n  \
         - {name: net-000-to-net-065, from: [net-000], to: [net-065, net-099], action: audit}\n",
    );
    let s = snapshot(&text);
    assert_eq!(s.policy.groups.len(), 103);
    assert_eq!(s.policy.group_index("any"), Some(0));
    assert_eq!(s.policy.group_index("a-other"), Some(1));
    assert_eq!(s.policy.group_index("net-099"), Some(101));
    assert_eq!(s.policy.group_index("zz-ratings"), Some(102));
    assert_eq!(groups_of(&s, "10.100.99.1"), ["any", "net-099"]);
    assert_eq!(groups_of(&s, "10.100.65.7"), ["any", "net-065"]);
    assert_eq!(groups_of(&s, RATINGS_A), ["any", "zz-ratings"]);
    assert_eq!(tcp(&s, RATINGS_A, "10.100.99.1", 80), (Action::Allow, "ratings-to-net-099"));
    assert_eq!(tcp(&s, RATINGS_A, "10.100.98.1", 80), (Action::Deny, "default"));
    assert_eq!(tcp(&s, OTHER, "10.100.70.1", 80), (Action::Reject, "other-to-net-070"));
    assert_eq!(tcp(&s, "10.100.0.9", "10.100.65.9", 80), (Action::Audit, "net-000-to-net-065"));
    assert_eq!(tcp(&s, "10.100.0.9", "10.100.99.9", 80), (Action::Audit, "net-000-to-net-065"));
    assert_eq!(tcp(&s, "10.100.1.9", "10.100.65.9", 80), (Action::Deny, "default"));
}

fn many_groups(count: usize) -> String {
    let mut text = String::from("default_action: deny\ngroups:\n");
    for i in 0..count {
        writeln!(text, "  g{i:04}: {{cidrs: [10.{}.{}.0/24]}}", i / 256, i % 256).unwrap();
    }
    text.push_str("rules:\n  - {name: last-group, from: [any], to: [g1022], action: allow}\n");
    text
}

#[test]
fn a_policy_may_define_1023_groups_and_the_last_one_works() {
    assert_eq!(MAX_GROUPS, 1024, "1023 named groups plus `any`");
    let s = snapshot(&many_groups(1023));
    assert_eq!(s.policy.groups.len(), 1024);
    assert_eq!(s.policy.group_index("g1022"), Some(1023));
    assert_eq!(groups_of(&s, "10.3.254.1"), ["any", "g1022"]);
    assert_eq!(tcp(&s, PRODUCTPAGE, "10.3.254.1", 80), (Action::Allow, "last-group"));
    assert_eq!(tcp(&s, PRODUCTPAGE, "10.3.253.1", 80), (Action::Deny, "default"));
}

#[test]
fn a_policy_with_1024_groups_is_rejected_with_the_limit() {
    assert_eq!(
        compile_errors(&many_groups(1024)),
        ["policy.yaml:2: policy: 1024 groups, at most 1023 are supported"]
    );
}

// ---------------------------------------------------------------------------------------------
// What explain and the flow log print.

#[test]
fn rule_name_and_group_names_give_what_explain_prints() {
    let s = snapshot(REVIEWS_TO_RATINGS);
    let decision = s.decide(ip(REVIEWS_V1), ip(RATINGS_A), TCP, Some(9080));
    assert_eq!(decision.rule, Some(0));
    assert_eq!(s.rule_name(decision.rule), "block-reviews-v1");
    assert_eq!(s.rule_name(Some(2)), "reviews-elsewhere");
    assert_eq!(s.rule_name(None), "default");
    assert_eq!(s.policy.rules[1].line, Some(9));
    // Groups are numbered `any` first, then by name.
    let names: Vec<&str> = s.policy.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["any", "ratings", "reviews", "reviews-v1"]);
    assert_eq!(groups_of(&s, REVIEWS_V1), ["any", "reviews", "reviews-v1"]);
    assert_eq!(groups_of(&s, REVIEWS_V2), ["any", "reviews"]);
    assert_eq!(groups_of(&s, RATINGS_V6), ["any", "ratings"]);
    assert_eq!(groups_of(&s, UNKNOWN), ["any"]);
}

#[test]
fn explain_reports_verdict_rule_line_identities_and_groups() {
    let s = snapshot(REVIEWS_TO_RATINGS);
    let question = labelwall::explain::FlowQuestion {
        src: ip(REVIEWS_V1),
        dst: ip(UNKNOWN),
        protocol: TCP,
        sport: 40000,
        dport: 9080,
    };
    let text = labelwall::explain::explain(&s, &question).to_text();
    assert_eq!(
        text,
        "verdict: reject\n\
         rule:    reviews-elsewhere (policy.yaml:10)\n\
         flow:    tcp 10.0.1.12 -> 10.0.1.99 40000 -> 9080\n\
         src:     10.0.1.12 pod demo/bookinfo/reviews-v1 {app=reviews,version=v1} from \
         inventory:inventory.yaml\n         groups: any, reviews, reviews-v1\n\
         dst:     10.0.1.99 unknown (no label source knows this address)\n\
         \x20        groups: any\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Compile errors: every one at once, each with file, line, item and field.

#[test]
fn every_compile_error_is_reported_at_once_with_file_line_item_and_field() {
    let text = "\
default_action: deny
groups:
  any:
    cidrs: [0.0.0.0/0]
  db:
    cidrs: [10.20.0.5/24]
  ratings:
    pods: {selector: \"app in (ratings,,)\"}
  empty:
    except: [10.0.0.0/8]
  web:
    pods: {selector: app=productpage}
rules:
  - name: web-to-db
    from: [web]
    to: [web, nosuch]
    ports:
      - tcp/0
      - tcp/90-80
      - sctp/1
      - icmp/3
    action: allow
  - name: web-to-db
    from: [web]
    to: [web]
    ports: []
    action: deny
  - name: \"\"
    from: []
    to: [any]
    action: deny
";
    let errors = compile_errors(text);
    let expected = [
        "policy.yaml:3: group `any`: `any` is built in and cannot be redefined",
        "policy.yaml:6: group `db`: cidrs[0]: `10.20.0.5/24` has host bits set; \
         did you mean 10.20.0.0/24?",
        "policy.yaml:9: group `empty`: selects nothing: give at least one of pods, nodes, \
         external, cidrs, domains",
        "policy.yaml:8: group `ratings`: pods.selector: invalid selector: at position 17: expected \
         a value or ',' before ')': like Kubernetes, an even number of commas right before ')' \
         is rejected",
        "policy.yaml:16: rule `web-to-db`: to[1]: unknown group `nosuch`",
        "policy.yaml:18: rule `web-to-db`: ports[0]: `tcp/0`: `0` is not a port from 1 to 65535",
        "policy.yaml:19: rule `web-to-db`: ports[1]: `tcp/90-80`: the range is backwards",
        "policy.yaml:20: rule `web-to-db`: ports[2]: `sctp/1`: unknown protocol `sctp` \
         (use tcp, udp, icmp or icmpv6)",
        "policy.yaml:21: rule `web-to-db`: ports[3]: `icmp/3`: icmp has no ports",
        "policy.yaml:23: rule `web-to-db`: name: another rule has this name",
        "policy.yaml:26: rule `web-to-db`: ports: an empty list matches nothing; leave `ports` \
         out to match every port",
        "policy.yaml:28: rule #3: name: must not be empty",
        "policy.yaml:29: rule #3: from: must name at least one group (or `any`)",
    ];
    assert_eq!(errors, expected);
}

#[test]
fn a_bad_selector_error_shows_the_position_and_what_is_wrong() {
    let errors = compile_errors(
        "default_action: deny\ngroups:\n  web:\n    pods:\n      selector: \"app=web,,tier=db\"\n\
         \x20     namespace_selector: \"env==a==b\"\n",
    );
    assert_eq!(
        errors,
        [
            "policy.yaml:5: group `web`: pods.selector: invalid selector: at position 8: expected a \
             label key or '!' after ',', found ','",
            "policy.yaml:6: group `web`: pods.namespace_selector: invalid selector: at position 6: \
             expected ',' or end of input after a requirement, found '=='",
        ]
    );
}

#[test]
fn a_bad_label_key_or_value_list_in_a_selector_is_rejected_by_kubernetes_rules() {
    let errors = compile_errors(
        "default_action: deny\ngroups:\n  web:\n    nodes: {selector: \"-bad=x\"}\n  \
         db:\n    external: {selector: \"app in (a b)\"}\n",
    );
    assert_eq!(
        errors,
        [
            "policy.yaml:6: group `db`: external.selector: invalid selector: at position 10: expected ',' \
             or ')' after a value, found 'b'",
            "policy.yaml:4: group `web`: nodes.selector: invalid selector: at position 0: invalid label \
             key \"-bad\": name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character",
        ]
    );
}

#[test]
fn a_rule_naming_an_unknown_group_in_from_names_the_index() {
    let errors = compile_errors(
        "default_action: deny\ngroups:\n  web: {pods: {selector: app=web}}\nrules:\n  \
         - name: r\n    from:\n      - web\n      - wbe\n    to: [any]\n    action: allow\n",
    );
    assert_eq!(errors, ["policy.yaml:8: rule `r`: from[1]: unknown group `wbe`"]);
}

#[test]
fn an_unknown_key_is_reported_by_serde_with_its_line() {
    let errors =
        compile_errors("default_action: deny\ngroups:\n  web:\n    pod: {selector: app=web}\n");
    assert_eq!(
        errors,
        ["policy.yaml:4:5: groups.web: unknown field `pod`, expected one of `pods`, `nodes`, \
          `external`, `cidrs`, `except`, `domains`"]
    );
    let errors = compile_errors(
        "default_action: deny\nrules:\n  - name: r\n    from: [any]\n    to: [any]\n    \
         acton: allow\n",
    );
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("policy.yaml:6:5: rules[0]: unknown field `acton`, expected one of"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_missing_or_misspelt_action_is_a_yaml_error() {
    let errors = compile_errors("groups: {}\n");
    assert_eq!(errors, ["policy.yaml:1:1: missing field `default_action`"]);
    let errors = compile_errors("default_action: block\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("policy.yaml:1:17: default_action: unknown variant `block`"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_key_given_twice_in_one_mapping_is_an_error() {
    let errors = compile_errors("default_action: deny\ndefault_action: allow\n");
    assert_eq!(errors, ["policy.yaml:1:1: duplicate field `default_action`"]);
}

#[test]
fn a_group_defined_twice_is_an_error() {
    let text = "default_action: deny\ngroups:\n  web: {cidrs: [10.0.0.0/8]}\n  \
                web: {cidrs: [0.0.0.0/0]}\n";
    match CompiledPolicy::parse(Path::new("policy.yaml"), text) {
        Ok(policy) => panic!(
            "accepted; group `web` silently became {:?}",
            policy.groups[1].cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()
        ),
        Err(errors) => {
            let errors = errors.to_string();
            assert!(errors.starts_with("policy.yaml:4"), "the second definition: {errors}");
            assert!(errors.contains("web"), "{errors}");
        }
    }
}

#[test]
fn an_inventory_label_given_twice_is_an_error() {
    let text = "endpoints:\n  - {ip: 10.0.1.20, namespace: bookinfo, kind: pod,\n     \
                labels: {app: ratings, app: other}}\n";
    match inventory::parse(Path::new("inventory.yaml"), text) {
        Ok(records) => panic!("accepted; the labels became {:?}", records.endpoints[0].labels),
        Err(errors) => {
            let errors = errors.to_string();
            assert!(errors.starts_with("inventory.yaml:3"), "{errors}");
            assert!(errors.contains("app"), "{errors}");
        }
    }
}

#[test]
fn a_rule_naming_a_broken_group_gets_only_the_group_s_own_error() {
    let errors = compile_errors(
        "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.5/24]}\nrules:\n  \
         - {name: to-db, from: [any], to: [db], action: allow}\n",
    );
    assert_eq!(
        errors,
        ["policy.yaml:3: group `db`: cidrs[0]: `10.20.0.5/24` has host bits set; \
          did you mean 10.20.0.0/24?"]
    );
}

#[test]
fn the_smallest_policy_is_a_default_action() {
    let s = snapshot("default_action: reject\n");
    assert_eq!(s.policy.rules.len(), 0);
    assert_eq!(s.policy.groups.len(), 1);
    assert_eq!(tcp(&s, PRODUCTPAGE, DETAILS, 9080), (Action::Reject, "default"));
    assert_eq!(groups_of(&s, PRODUCTPAGE), ["any"]);
}

// ---------------------------------------------------------------------------------------------
// Reload: the control plane keeps a running policy when a new one fails.

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(policy: &str, inventories: &[&str]) -> (Files, ControlPlane) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let mut config = String::from("policy: policy.yaml\nlabels:\n  inventory:\n");
        for (i, text) in inventories.iter().enumerate() {
            std::fs::write(dir.path().join(format!("inventory-{i}.yaml")), text).unwrap();
            writeln!(config, "    - inventory-{i}.yaml").unwrap();
        }
        let path = dir.path().join("labelwall.yaml");
        std::fs::write(&path, &config).unwrap();
        let config = Config::parse(&path, &config).unwrap_or_else(|e| panic!("{e}"));
        let plane = ControlPlane::start(&config, 1, None).unwrap_or_else(|e| panic!("{e}"));
        (Files { dir }, plane)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }
}

const RATINGS_TO_DB: &str = r#"
default_action: deny
groups:
  ratings: {pods: {selector: app=ratings}}
  rating-database: {cidrs: [10.20.0.0/24]}
rules:
  - {name: ratings-to-db, from: [ratings], to: [rating-database], ports: [tcp/3306], action: allow}
"#;

#[test]
fn a_policy_reload_that_fails_validation_keeps_the_running_policy() {
    let (files, mut plane) = Files::new(RATINGS_TO_DB, &[INVENTORY]);
    let state = plane.state();
    let before = state.snapshot();
    assert_eq!(tcp(&before, RATINGS_A, DB, 3306), (Action::Allow, "ratings-to-db"));

    files.write("policy.yaml", &RATINGS_TO_DB.replace("tcp/3306", "tcp/0"));
    plane.reload_all();
    let s = state.snapshot();
    assert_eq!(state.reloads_error.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(state.reloads_ok.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(s.generation, before.generation, "nothing new was published");
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Allow, "ratings-to-db"));

    // A valid policy that tightens the rule replaces it, with a new generation.
    files.write("policy.yaml", &RATINGS_TO_DB.replace("action: allow", "action: reject"));
    plane.reload_all();
    let s = state.snapshot();
    assert_eq!(state.reloads_ok.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(s.generation > before.generation);
    assert_eq!(tcp(&s, RATINGS_A, DB, 3306), (Action::Reject, "ratings-to-db"));
}

#[test]
fn a_changed_inventory_file_is_picked_up_by_polling() {
    let (files, mut plane) = Files::new(RATINGS_TO_DB, &[INVENTORY]);
    let state = plane.state();
    assert_eq!(tcp(&state.snapshot(), OTHER, DB, 3306), (Action::Deny, "default"));
    // The `other` pod's IP now belongs to a ratings pod.
    files.write(
        "inventory-0.yaml",
        &INVENTORY.replace("labels: {app: other}}", "labels: {app: ratings}}"),
    );
    plane.poll_files();
    assert_eq!(tcp(&state.snapshot(), OTHER, DB, 3306), (Action::Allow, "ratings-to-db"));
}

#[test]
fn sighup_reloads_every_changed_inventory_file() {
    let first =
        "endpoints:\n  - {ip: 10.0.1.20, namespace: bookinfo, kind: pod, labels: {app: ratings}}\n";
    let second =
        "endpoints:\n  - {ip: 10.0.1.30, namespace: bookinfo, kind: pod, labels: {app: other}}\n";
    let (files, mut plane) = Files::new(RATINGS_TO_DB, &[first, second]);
    let state = plane.state();
    assert_eq!(tcp(&state.snapshot(), OTHER, DB, 3306), (Action::Deny, "default"));
    files.write("inventory-0.yaml", &first.replace("app: ratings", "app: ratings, v: \"2\""));
    files.write("inventory-1.yaml", &second.replace("app: other", "app: ratings"));
    plane.reload_all();
    assert_eq!(tcp(&state.snapshot(), OTHER, DB, 3306), (Action::Allow, "ratings-to-db"));
}

// ---------------------------------------------------------------------------------------------
// The flow log names the rule that decided a flow.

/// A flow-log output the test can read back.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_flow_end_record_after_a_reload_names_the_rule_that_decided_the_flow() {
    let labels = Arc::new(LabelTable::build(&[bookinfo()]));
    let publish = |generation: u64, text: &str| {
        let policy = compile(text);
        let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
        Arc::new(Snapshot::new(generation, Arc::clone(&labels), Arc::new(policy), hits))
    };
    let cell = Arc::new(ArcSwap::new(publish(
        1,
        r#"
default_action: deny
rules:
  - {name: first, from: [any], to: [any], ports: [tcp/1], action: deny}
  - {name: second, from: [any], to: [any], ports: [tcp/2], action: deny}
  - {name: dns-logged, from: [any], to: [any], ports: [udp/53], action: allow, log: true}
"#,
    )));
    let output = SharedBuffer::default();
    let (sender, writer) = FlowLogWriter::start_with(Box::new(output.clone()), None);
    let settings =
        FlowSettings { max_flows: 16, timeouts: Timeouts::default(), ..FlowSettings::default() };
    let mut pipeline = Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), settings, true);
    pipeline.begin_batch(1_000);
    let inner = common::ipv4_udp([10, 0, 1, 10], [10, 0, 1, 11], 40000, 53, 8);
    let mut inject = [0u8; 2048];
    let outcome = pipeline.process(&common::gwlb_datagram(7, &inner), &mut inject);
    assert_eq!(outcome, Outcome::SendBack(Action::Allow));
    sender.take_from(&mut pipeline);

    // A reload to a policy with a single rule, then the UDP flow idles out (120 s).
    cell.store(publish(
        2,
        "default_action: allow\nrules:\n  - {name: only, from: [any], to: [any], action: deny}\n",
    ));
    pipeline.begin_batch(1_000 + 121_000);
    sender.take_from(&mut pipeline);
    drop(sender);
    writer.join();

    let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a start and an end record:\n{text}");
    assert!(lines[0].contains(r#""event":"start""#) && lines[0].contains(r#""rule":"dns-logged""#));
    assert!(lines[1].contains(r#""event":"end""#), "{}", lines[1]);
    assert!(lines[1].contains(r#""rule":"dns-logged""#), "{}", lines[1]);
}
