//! Resident memory of the label table at 100k endpoints, measured in a fresh process so the
//! allocator has nothing to reuse: `cargo bench --bench memory`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use labelwall::labels::{EndpointKind, EndpointRecord, LabelBuilder, Labels, SourceRecords};
use labelwall::policy::CompiledPolicy;
use labelwall::snapshot::{RuleHits, Snapshot};

mod support;
use support::resident_mib;

const ENDPOINTS: u32 = 100_000;

fn main() {
    let start = resident_mib();
    // Realistic label sets: 1,000 deployments of 100 pods; pods of one ReplicaSet share their
    // label set, as the Kubernetes source shares them (one Arc per distinct set).
    let cluster: Arc<str> = "prod".into();
    let namespaces: Vec<Arc<str>> = (0..40).map(|n| format!("team-{n}").into()).collect();
    let label_sets: Vec<Arc<Labels>> = (0..3000)
        .map(|k| {
            Arc::new(Labels::from([
                ("app".to_string(), format!("svc-{}", k % 1000)),
                ("pod-template-hash".to_string(), format!("7d9f8c{}", k % 1000)),
                ("version".to_string(), format!("v{}", k % 3)),
            ]))
        })
        .collect();
    let endpoints: Vec<EndpointRecord> = (0..ENDPOINTS)
        .map(|i| EndpointRecord {
            net: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)).into(),
            cluster: Arc::clone(&cluster),
            namespace: Arc::clone(&namespaces[(i % 40) as usize]),
            name: format!("svc-{}-7d9f8c6b5-{i:05x}", i % 1000).into(),
            kind: EndpointKind::Pod,
            terminating: false,
            created: 1_714_564_800 + i,
            labels: Arc::clone(&label_sets[(i % 3000) as usize]),
        })
        .collect();
    let source = Arc::new(SourceRecords { source: "bench".into(), endpoints, namespaces: vec![] });
    let records = resident_mib();
    let started = Instant::now();
    // What the control plane keeps: the builder (every claim, the identities) and the table.
    let mut builder = LabelBuilder::new(vec![source.source.clone()]);
    builder.replace_source(0, &source);
    let table = Arc::new(builder.publish().0);
    let build = started.elapsed();
    let with_table = resident_mib();
    let mut policy = String::from("default_action: deny\ngroups:\n");
    for k in 0..1000 {
        policy.push_str(&format!("  svc-{k}: {{pods: {{selector: \"app=svc-{k}\"}}}}\n"));
    }
    let policy = Arc::new(CompiledPolicy::parse(Path::new("p.yaml"), &policy).unwrap());
    let hits = Arc::new(RuleHits::new(1, 0));
    let started = Instant::now();
    let snapshot = Snapshot::new(1, Arc::clone(&table), policy, hits);
    let membership = started.elapsed();
    let with_snapshot = resident_mib();
    println!(
        "{ENDPOINTS} endpoints, {} identities: records {:.1} MiB, label builder + table {:.1} MiB \
         (built in {:.1} ms), group membership for 1,000 groups {:.1} MiB ({:.1} ms); \
         process RSS {:.1} MiB",
        table.identity_count(),
        records - start,
        with_table - records,
        build.as_secs_f64() * 1000.0,
        with_snapshot - with_table,
        membership.as_secs_f64() * 1000.0,
        with_snapshot,
    );
    drop((snapshot, builder));
}
