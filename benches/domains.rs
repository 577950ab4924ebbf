//! Server names against `domains` groups: what matching a name costs with 1,000 patterns (one
//! hash probe for the name plus one per label suffix), and what judging a new flow with and
//! without a known name costs under such a policy.
//!
//! Run: `cargo bench --bench domains` (figures in docs/performance.md, "Server names:
//! matching").

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use labelwall::labels::LabelTable;
use labelwall::packet::ip_proto;
use labelwall::policy::{CompiledPolicy, Judgement, NameState};
use labelwall::snapshot::{RuleHits, Snapshot};

/// Domains groups; each lists 5 exact names and 5 wildcards, 1,000 patterns in all.
const GROUPS: usize = 100;

/// `svc-<g>-<i>.example<g>.com` (exact) and `*.zone<i>.example<g>.com` (wildcard) for group g;
/// group g's rule lets `10.0.0.0/8` reach it on tcp/443, after 50 address rules that do not
/// match the benchmarked flow, and before a final address rule.
fn policy_text() -> String {
    let mut text = String::from("default_action: deny\ngroups:\n  pods: {cidrs: [10.0.0.0/8]}\n");
    text.push_str("  elsewhere: {cidrs: [172.16.0.0/12]}\n  internet: {cidrs: [0.0.0.0/0]}\n");
    for g in 0..GROUPS {
        let mut patterns = Vec::new();
        for i in 0..5 {
            patterns.push(format!("svc-{g}-{i}.example{g}.com"));
            patterns.push(format!("\"*.zone{i}.example{g}.com\""));
        }
        text.push_str(&format!("  names-{g:03}: {{domains: [{}]}}\n", patterns.join(", ")));
    }
    text.push_str("rules:\n");
    for r in 0..50 {
        text.push_str(&format!(
            "  - {{name: addr-{r}, from: [elsewhere], to: [internet], ports: [tcp/{}], action: allow}}\n",
            1000 + r
        ));
    }
    for g in 0..GROUPS {
        text.push_str(&format!(
            "  - {{name: names-{g}, from: [pods], to: [names-{g:03}], ports: [tcp/443], action: allow}}\n"
        ));
    }
    text.push_str(
        "  - {name: rest, from: [pods], to: [internet], ports: [tcp/443], action: reject}\n",
    );
    text
}

fn snapshot() -> Snapshot {
    let policy = CompiledPolicy::parse(Path::new("bench.yaml"), &policy_text()).unwrap();
    assert_eq!(policy.domains().pattern_count(), 1_000);
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    Snapshot::new(1, Arc::new(LabelTable::build(&[])), Arc::new(policy), hits)
}

fn matching(c: &mut Criterion) {
    let snapshot = snapshot();
    let domains = snapshot.policy.domains();
    let mut group = c.benchmark_group("domains_1000_patterns");
    // (bench name, name): an exact hit, a wildcard hit three labels in front of its suffix,
    // a miss with as many labels (every suffix probed), and a name in capitals with a dot.
    let names = [
        ("match_exact", "svc-77-3.example77.com"),
        ("match_wildcard_3_deep", "a.b.c.zone4.example42.com"),
        ("match_miss_6_labels", "a.b.c.zone4.example42.org"),
        ("match_unnormalized", "A.B.C.ZONE4.Example42.com."),
    ];
    assert_eq!(snapshot.group_names(&domains.matches(names[1].1)), ["names-042"]);
    assert_eq!(snapshot.group_names(&domains.matches(names[3].1)), ["names-042"]);
    assert_eq!(snapshot.group_names(&domains.matches(names[2].1)), [] as [&str; 0]);
    for (bench, name) in names {
        group.bench_function(bench, |b| b.iter(|| domains.matches(black_box(name))));
    }
    group.bench_function("match_normalized_wildcard_3_deep", |b| {
        b.iter(|| domains.matches_normalized(black_box(b"a.b.c.zone4.example42.com")))
    });

    // A new flow under the policy: 50 address rules, 100 names rules, then an address rule.
    let src = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    let judge =
        |name| snapshot.judge(black_box(src), black_box(dst), ip_proto::TCP, Some(443), name);
    // What each case measures: waiting at the first names rule, the address rule after the
    // names rules, names rule 90.
    let rule = |name| match judge(name) {
        Judgement::Decided(d) => snapshot.rule_name(d.rule).to_string(),
        Judgement::NeedsName { rule } => format!("waits {}", snapshot.rule_name(Some(rule))),
    };
    assert_eq!(rule(NameState::Unknown), "waits names-0");
    assert_eq!(rule(NameState::Absent), "rest");
    assert_eq!(rule(NameState::Name("a.b.zone1.example90.com")), "names-90");
    assert_eq!(rule(NameState::Name("www.example.org")), "rest");
    group.bench_function("judge_name_unknown", |b| b.iter(|| judge(NameState::Unknown)));
    group.bench_function("judge_no_name", |b| b.iter(|| judge(NameState::Absent)));
    group.bench_function("judge_name_rule_90", |b| {
        b.iter(|| judge(NameState::Name(black_box("a.b.zone1.example90.com"))))
    });
    group.bench_function("judge_name_matching_none", |b| {
        b.iter(|| judge(NameState::Name(black_box("www.example.org"))))
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
