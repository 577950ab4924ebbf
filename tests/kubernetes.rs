//! The Kubernetes label source against a fake API server that speaks the real list/watch
//! protocol (tests/kube_server): first the source alone (what it reports for paging, slow
//! lists, dropped watches, 410 Gone, a lost and restarted server, exec credentials), then end
//! to end through the real `labelwall` binary and data plane with real GENEVE on loopback
//! (pods appearing, relabelled, deleted and their IPs reused; namespace and node groups; a
//! killed API server; two clusters). The `#[ignore]`d tests at the end measure sync time,
//! memory and event-to-verdict latency at 10k and 100k pods.

mod common;
mod imds_server;
mod kube_server;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use common::*;
use etherparse::{SlicedPacket, TransportSlice};
use kube_server::terminating;
use kube_server::{FakeApiServer, namespace, node, pod, pod_created};
use labelwall::config::KubernetesSource;
use labelwall::labels::{EndpointKind, SourceRecords};
use labelwall::sources::SourceEvent;
use serde_json::json;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// The source alone.

fn source(cluster: &str, kubeconfig: &std::path::Path) -> KubernetesSource {
    KubernetesSource {
        cluster: cluster.into(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        in_cluster: false,
        max_stale_text: None,
        // Short, so that a silent or killed API server is noticed within the tests' waits.
        timeout_text: Some("3s".into()),
    }
}

/// A server with the bookinfo namespace, one node and `pods`.
fn server_with(pods: &[serde_json::Value]) -> FakeApiServer {
    populated(FakeApiServer::start(), pods)
}

/// The same over HTTPS, with a certificate authority of its own.
fn tls_server_with(pods: &[serde_json::Value]) -> FakeApiServer {
    populated(FakeApiServer::start_tls(), pods)
}

fn populated(server: FakeApiServer, pods: &[serde_json::Value]) -> FakeApiServer {
    server.apply("namespaces", namespace("bookinfo", json!({"team": "books"})));
    server.apply("nodes", node("node-1", "10.0.0.10", json!({"role": "worker"})));
    for p in pods {
        server.apply("pods", p.clone());
    }
    server
}

struct Watched {
    events: mpsc::Receiver<SourceEvent>,
    task: tokio::task::JoinHandle<()>,
    /// Every `Changes` so far, folded into a view.
    view: SourceRecords,
    _dir: tempfile::TempDir,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn watch(server: &FakeApiServer, cluster: &str) -> Watched {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), cluster, None);
    watch_with(source(cluster, &kubeconfig), dir)
}

fn watch_with(source: KubernetesSource, dir: tempfile::TempDir) -> Watched {
    let source_name = labelwall::sources::kubernetes_source_name(&source.cluster);
    let (tx, events) = mpsc::channel(64);
    let task = labelwall::sources::kubernetes::spawn(source, tx);
    let view = SourceRecords { source: source_name, ..SourceRecords::default() };
    Watched { events, task, view, _dir: dir }
}

/// The next event within `limit`.
async fn next_event(watched: &mut Watched, limit: Duration) -> Option<SourceEvent> {
    tokio::time::timeout(limit, watched.events.recv()).await.ok().flatten()
}

/// Folds `Changes` into the watched view until it satisfies `ok`; panics with the view after
/// 10 s.
async fn records_where(
    watched: &mut Watched,
    what: &str,
    ok: impl Fn(&SourceRecords) -> bool,
) -> SourceRecords {
    records_within(watched, what, Duration::from_secs(10), ok).await
}

/// As [`records_where`], waiting at most `limit`.
async fn records_within(
    watched: &mut Watched,
    what: &str,
    limit: Duration,
    ok: impl Fn(&SourceRecords) -> bool,
) -> SourceRecords {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(SourceEvent::Changes { changes, .. }) =
            next_event(watched, deadline - Instant::now()).await
        {
            watched.view.apply(&changes);
            if ok(&watched.view) {
                return watched.view.clone();
            }
        }
    }
    panic!("no records where {what} within {limit:?}; last: {:#?}", watched.view)
}

fn pod_names(records: &SourceRecords) -> Vec<String> {
    let mut names: Vec<String> = records
        .endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Pod)
        .map(|e| format!("{} {}", e.name, e.net))
        .collect();
    names.sort();
    names
}

fn labels_of(records: &SourceRecords, name: &str) -> String {
    let record = records.endpoints.iter().find(|e| &*e.name == name).expect("the endpoint");
    record.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[tokio::test]
async fn first_records_are_a_full_paged_list_of_pods_namespaces_and_nodes() {
    let server = server_with(&[]);
    let pods: Vec<_> = (0..1234)
        .map(|i| {
            let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
            pod("bookinfo", &format!("p{i}"), &[&ip], json!({"app": "web"}))
        })
        .collect();
    server.preload("pods", pods);
    let mut watched = watch(&server, "c1");
    let records = records_where(&mut watched, "every pod", |r| r.endpoints.len() == 1235).await;
    assert_eq!(records.source, "kubernetes:c1");
    assert!(records.endpoints.iter().all(|e| &*e.cluster == "c1"));
    let node = records.endpoints.iter().find(|e| e.kind == EndpointKind::Node).unwrap();
    assert_eq!((&*node.name, node.net.to_string().as_str()), ("node-1", "10.0.0.10/32"));
    assert_eq!(records.namespaces.len(), 1);
    assert_eq!(records.namespaces[0].labels.get("team").map(String::as_str), Some("books"));
    // Pages of 500 with continue tokens: 3 requests for the pods.
    assert_eq!(
        server.count_requests(&["/api/v1/pods?", "limit=500"]),
        3,
        "{:?}",
        server.requests()
    );
    assert_eq!(server.count_requests(&["/api/v1/pods?", "continue="]), 2);
}

#[tokio::test]
async fn pod_changes_arrive_as_changes_and_the_newest_pod_owns_a_reused_ip() {
    let old = pod_created(
        "bookinfo",
        "ratings-old",
        "10.0.1.15",
        json!({"app": "ratings"}),
        "2024-05-01T12:00:00Z",
        "uid-old",
    );
    let server = server_with(&[old]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "ratings-old", |r| pod_names(r) == ["ratings-old 10.0.1.15/32"])
        .await;
    server.set_labels("pods", "bookinfo", "ratings-old", json!({"app": "other"}));
    records_where(&mut watched, "relabelled", |r| labels_of(r, "ratings-old") == "app=other").await;
    // A new pod takes the address before the old pod's delete is seen.
    let new = pod_created(
        "bookinfo",
        "ratings-new",
        "10.0.1.15",
        json!({"app": "ratings", "v": "2"}),
        "2024-05-01T12:05:00Z",
        "uid-new",
    );
    server.apply("pods", new);
    records_where(&mut watched, "the new owner", |r| pod_names(r) == ["ratings-new 10.0.1.15/32"])
        .await;
    server.delete("pods", "bookinfo", "ratings-old");
    server.apply("pods", pod("bookinfo", "marker", &["10.0.9.9"], json!({})));
    let records = records_where(&mut watched, "the marker", |r| pod_names(r).len() == 2).await;
    assert_eq!(pod_names(&records), ["marker 10.0.9.9/32", "ratings-new 10.0.1.15/32"]);
    assert_eq!(labels_of(&records, "ratings-new"), "app=ratings,v=2");
}

#[tokio::test]
async fn a_slow_list_delays_the_first_records_without_losing_the_source() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({}))]);
    server.set_list_delay(Duration::from_millis(1500));
    let started = Instant::now();
    let mut watched = watch(&server, "c1");
    let first = next_event(&mut watched, Duration::from_secs(10)).await;
    assert!(matches!(first, Some(SourceEvent::Changes { .. })), "{first:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_dropped_watch_is_resumed_from_its_resource_version_and_misses_nothing() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"}))]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
    server.wait_for_watches(3);
    let lists = server.count_requests(&["/api/v1/pods?", "limit="]);
    let watches = server.count_requests(&["/api/v1/pods?", "watch=true"]);
    let rv = server.resource_version();
    server.drop_watches();
    // Changes while the watch is down come from the history when it resumes.
    server.apply("pods", pod("bookinfo", "b", &["10.0.1.2"], json!({"app": "b"})));
    server.delete("pods", "bookinfo", "a");
    let records =
        records_where(&mut watched, "b without a", |r| pod_names(r) == ["b 10.0.1.2/32"]).await;
    assert_eq!(records.endpoints.len(), 2, "pod b and the node");
    assert_eq!(server.count_requests(&["/api/v1/pods?", "limit="]), lists, "no relist");
    let requests = server.requests();
    let pod_watches: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && r.contains("watch=true"))
        .collect();
    assert_eq!(pod_watches.len(), watches + 1, "one new watch: {requests:?}");
    let resumed_at = pod_watches
        .last()
        .and_then(|r| r.split("resourceVersion=").nth(1))
        .and_then(|v| v.split('&').next())
        .and_then(|v| v.parse::<u64>().ok());
    // From the last version it saw: `rv`, or a change it got before the drop took effect.
    let latest = server.resource_version();
    assert!(
        resumed_at.is_some_and(|at| (rv..=latest).contains(&at)),
        "resumed from the last version seen: {requests:?}"
    );
    assert!(watched.events.try_recv().is_err(), "one dropped connection is not a lost source");
}

#[tokio::test]
async fn gone_during_a_watch_relists_no_sooner_than_30s_after_the_last_list_and_forgets_what_was_deleted_meanwhile()
 {
    let server = server_with(&[
        pod("bookinfo", "keep", &["10.0.1.1"], json!({"app": "keep"})),
        pod("bookinfo", "vanish", &["10.0.1.2"], json!({"app": "vanish"})),
    ]);
    let started = Instant::now();
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "both pods", |r| pod_names(r).len() == 2).await;
    server.wait_for_watches(3);
    let lists = server.count_requests(&["/api/v1/pods?", "limit="]);
    // Changes whose events are compacted away, then 410 Gone on the open watches.
    server.remove_silently("pods", "bookinfo", "vanish");
    let mut keep = server.get("pods", "bookinfo", "keep").unwrap();
    keep["metadata"]["labels"] = json!({"app": "kept"});
    server.replace_silently("pods", keep);
    server.expire_history();
    // Expired again and again: still one relist, 30 s after the first list began (a fleet
    // that keeps getting 410 does not list in a loop).
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        server.expire_history();
    }
    let relisted = |r: &SourceRecords| pod_names(r) == ["keep 10.0.1.1/32"];
    let records =
        records_within(&mut watched, "the relisted view", Duration::from_secs(45), relisted).await;
    assert!(started.elapsed() >= Duration::from_secs(30), "relisted after {:?}", started.elapsed());
    assert_eq!(labels_of(&records, "keep"), "app=kept");
    assert_eq!(server.count_requests(&["/api/v1/pods?", "limit="]), lists + 1, "one relist");
    // It goes on watching after the relist.
    server.apply("pods", pod("bookinfo", "later", &["10.0.1.3"], json!({})));
    records_where(&mut watched, "later", |r| pod_names(r).len() == 2).await;
}

#[tokio::test]
async fn the_fake_server_answers_a_list_at_a_compacted_version_with_410_gone() {
    let server = server_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = server.kubeconfig(dir.path(), "c1", None);
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let rv = server.resource_version();
    server.expire_history();
    let params = kube::api::ListParams::default()
        .at(&rv.to_string())
        .matching(kube::api::VersionMatch::Exact);
    let error = api.list(&params).await.unwrap_err();
    assert!(matches!(&error, kube::Error::Api(s) if s.code == 410), "{error:?}");
    let fresh = api.list(&kube::api::ListParams::default()).await.unwrap();
    assert_eq!(fresh.items.len(), 1);
}

#[tokio::test]
async fn a_killed_api_server_is_reported_lost_and_a_restarted_one_resyncs_everything() {
    let server = server_with(&[
        pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"})),
        pod("bookinfo", "b", &["10.0.1.2"], json!({"app": "b"})),
    ]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "both pods", |r| pod_names(r).len() == 2).await;
    server.wait_for_watches(3);
    server.stop();
    let lost = next_event(&mut watched, Duration::from_secs(10)).await;
    let Some(SourceEvent::Lost { source, error }) = lost else { panic!("{lost:?}") };
    assert_eq!(source, "kubernetes:c1");
    assert!(!error.is_empty());
    // While it is down: b goes, c comes, a is relabelled.
    server.delete("pods", "bookinfo", "b");
    server.apply("pods", pod("bookinfo", "c", &["10.0.1.3"], json!({"app": "c"})));
    server.set_labels("pods", "bookinfo", "a", json!({"app": "a2"}));
    server.restart();
    let records = records_where(&mut watched, "the state after the restart", |r| {
        pod_names(r) == ["a 10.0.1.1/32", "c 10.0.1.3/32"] && labels_of(r, "a") == "app=a2"
    })
    .await;
    assert_eq!(records.namespaces.len(), 1);
    assert_eq!(records.endpoints.iter().filter(|e| e.kind == EndpointKind::Node).count(), 1);
}

#[tokio::test]
async fn an_exec_credential_plugin_supplies_the_bearer_token() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({}))]);
    server.require_token("s3cr3t-token");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("get-token.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
         \"kind\":\"ExecCredential\",\"status\":{\"token\":\"s3cr3t-token\"}}'\n",
    )
    .unwrap();
    let script = script.display().to_string();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", Some(("/bin/sh", &[script.as_str()])));
    let mut watched = watch_with(source("c1", &kubeconfig), dir);
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
}

/// The cluster's side of an EKS token, as EKS checks it (without calling STS): the prefix, a
/// presigned GetCallerIdentity for `cluster` in `region` signed within the last two minutes
/// with `credentials` (the signature recomputed, so the cluster name is signed too).
fn eks_token_is_valid(
    token: &str,
    cluster: &str,
    region: &str,
    credentials: &labelwall::eks::Credentials,
) -> bool {
    use base64::Engine;
    let Some(encoded) = token.strip_prefix("k8s-aws-v1.") else { return false };
    let Ok(url) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    let url = String::from_utf8_lossy(&url);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let Some(date) = url.split('&').find_map(|p| p.strip_prefix("X-Amz-Date=")) else {
        return false;
    };
    (now - 120..=now + 1)
        .filter(|t| labelwall::eks::sigv4::amz_dates(*t).1 == date)
        .any(|t| url == labelwall::eks::presigned_url(cluster, region, credentials, t))
}

/// A watch of cluster `c1` (EKS name `eks-prod`) whose kubeconfig execs `labelwall eks-token`
/// against `imds`; the API server accepts only valid tokens and counts them.
fn watch_with_eks_token(
    server: &FakeApiServer,
    imds: &imds_server::FakeImds,
) -> (Watched, std::sync::Arc<AtomicU16>) {
    let role = labelwall::eks::Credentials {
        access_key_id: imds_server::ACCESS_KEY_ID.into(),
        secret_access_key: imds_server::SECRET_ACCESS_KEY.into(),
        session_token: Some(imds_server::SESSION_TOKEN.into()),
    };
    let accepted = std::sync::Arc::new(AtomicU16::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    server.require_bearer(move |token| {
        let valid = eks_token_is_valid(token, "eks-prod", "eu-west-1", &role);
        counter.fetch_add(u16::from(valid), Ordering::Relaxed);
        valid
    });
    let dir = tempfile::tempdir().unwrap();
    let endpoint = imds.endpoint();
    let env = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
        // Empty counts as unset: the instance role, whatever this machine's environment has.
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_EC2_METADATA_DISABLED", ""),
    ];
    let args = ["eks-token", "--cluster-name", "eks-prod", "--region", "eu-west-1"];
    let exec = Some((env!("CARGO_BIN_EXE_labelwall"), &args[..]));
    let kubeconfig = server.kubeconfig_with_env(dir.path(), "c1", exec, &env);
    (watch_with(source("c1", &kubeconfig), dir), accepted)
}

fn imds_token_requests(imds: &imds_server::FakeImds) -> usize {
    imds.requests().iter().filter(|r| *r == "PUT /latest/api/token").count()
}

/// Syncs, then drops every watch and adds a pod: the watchers make new requests, each
/// authorized. Returns how many times the plugin ran before and after the drop.
async fn plugin_runs_across_a_reconnect(
    server: &FakeApiServer,
    imds: &imds_server::FakeImds,
    watched: &mut Watched,
    accepted: &AtomicU16,
) -> (usize, usize) {
    records_where(watched, "pod a", |r| pod_names(r).len() == 1).await;
    // The three watches started (not `wait_for_watches`, which would block this runtime
    // while the plugin runs for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.count_requests(&["watch=true"]) < 3 {
        assert!(Instant::now() < deadline, "the watches never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(accepted.load(Ordering::Relaxed) >= 6, "lists and watches of three kinds");
    let before = imds_token_requests(imds);
    let accepted_before = accepted.load(Ordering::Relaxed);
    server.drop_watches();
    server.apply("pods", pod("bookinfo", "b", &["10.0.1.2"], json!({})));
    records_where(watched, "pods a and b", |r| pod_names(r).len() == 2).await;
    assert!(accepted.load(Ordering::Relaxed) > accepted_before, "new requests were authorized");
    (before, imds_token_requests(imds))
}

#[tokio::test]
async fn labelwall_eks_token_as_exec_plugin_authenticates_with_the_instance_role() {
    let imds = imds_server::FakeImds::start();
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({}))]);
    let (mut watched, accepted) = watch_with_eks_token(&server, &imds);
    let (before, after) =
        plugin_runs_across_a_reconnect(&server, &imds, &mut watched, &accepted).await;
    assert!(before >= 1, "the plugin ran");
    // The token is valid 14 minutes: the resumed watches use it without running the plugin.
    assert_eq!(after, before, "{:?}", imds.requests());
}

#[tokio::test]
async fn the_kube_client_runs_labelwall_eks_token_again_when_its_token_expires() {
    // Role credentials that expire in 90 s: tokens say they expire in 30 s, which the kube
    // client treats as expiring (less than 60 s left), so it runs the plugin again.
    let imds = imds_server::FakeImds::start();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    imds.set_expiration(&labelwall::eks::sigv4::rfc3339(now.as_secs() + 90));
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({}))]);
    let (mut watched, accepted) = watch_with_eks_token(&server, &imds);
    let (before, after) =
        plugin_runs_across_a_reconnect(&server, &imds, &mut watched, &accepted).await;
    assert!(after > before, "fresh tokens for the resumed watches: {:?}", imds.requests());
}

#[tokio::test]
async fn over_tls_the_api_servers_certificate_is_checked_against_the_kubeconfigs_authority() {
    let server = tls_server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({}))]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "pod a over TLS", |r| pod_names(r) == ["a 10.0.1.1/32"]).await;
    drop(watched);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests = server.requests().len();
    // The same server without its authority in the kubeconfig: the handshake fails, so the
    // source is lost and no request gets through.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), "c2", None);
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let untrusting: String = text
        .lines()
        .filter(|l| !l.contains("certificate-authority"))
        .map(|l| l.to_owned() + "\n")
        .collect();
    assert_ne!(text, untrusting);
    std::fs::write(&kubeconfig, untrusting).unwrap();
    let mut refused = watch_with(source("c2", &kubeconfig), dir);
    let event = next_event(&mut refused, Duration::from_secs(10)).await;
    assert!(matches!(event, Some(SourceEvent::Lost { .. })), "{event:?}");
    assert_eq!(server.requests().len(), requests, "no request without a trusted certificate");
}

#[tokio::test]
async fn a_refused_token_is_a_lost_source_not_a_crash() {
    let server = server_with(&[]);
    server.require_token("expected");
    let mut watched = watch(&server, "c1");
    let event = next_event(&mut watched, Duration::from_secs(10)).await;
    let Some(SourceEvent::Lost { error, .. }) = event else { panic!("{event:?}") };
    assert!(error.contains("401") || error.contains("Unauthorized"), "{error}");
    assert!(!watched.task.is_finished(), "the watcher keeps trying");
}

#[tokio::test]
async fn a_one_shot_list_returns_the_clusters_records_or_says_why_not() {
    let server = server_with(&[pod("bookinfo", "a", &["fd00::a"], json!({"app": "a"}))]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", None);
    let records =
        labelwall::sources::kubernetes::list_once(&source("c1", &kubeconfig)).await.unwrap();
    assert_eq!(pod_names(&records), ["a fd00::a/128"]);
    assert_eq!(server.count_requests(&["watch=true"]), 0, "lists only");
    server.stop();
    let error =
        labelwall::sources::kubernetes::list_once(&source("c1", &kubeconfig)).await.unwrap_err();
    assert!(error.contains("list"), "{error}");
    let missing = dir.path().join("missing.kubeconfig");
    let error =
        labelwall::sources::kubernetes::list_once(&source("c1", &missing)).await.unwrap_err();
    assert!(error.contains("missing.kubeconfig"), "{error}");
}

#[test]
fn the_shipped_cluster_role_reads_pods_namespaces_and_nodes_and_nothing_else() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance/kubernetes");
    let text = std::fs::read_to_string(dir.join("rbac.yaml")).unwrap();
    let documents: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let role = documents.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods", "namespaces", "nodes"],
                "verbs": ["get", "list", "watch"]}])
    );
    let binding = documents.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().unwrap();
    assert!(subjects.iter().any(|s| s["kind"] == "Group" && s["name"] == "labelwall-readers"));
    let sa = std::fs::read_to_string(dir.join("serviceaccount.yaml")).unwrap();
    assert!(sa.contains("kind: ServiceAccount") && sa.contains("name: labelwall"));
    let access_entry = std::fs::read_to_string(dir.join("eks-access-entry.tf")).unwrap();
    assert!(access_entry.contains(r#"kubernetes_groups = ["labelwall-readers"]"#));
    // The example kubeconfig is one the kube client reads, with `aws eks get-token` as exec.
    let example = kube::config::Kubeconfig::read_from(dir.join("kubeconfig.example.yaml")).unwrap();
    let exec = example.auth_infos[0].auth_info.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(exec.command.as_deref(), Some("aws"));
    assert!(exec.args.as_ref().unwrap().windows(2).any(|w| w == ["eks", "get-token"]));
    // The native one execs `labelwall eks-token` with arguments the command accepts.
    let native =
        kube::config::Kubeconfig::read_from(dir.join("kubeconfig.native.example.yaml")).unwrap();
    let exec = native.auth_infos[0].auth_info.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(exec.command.as_deref(), Some("/usr/local/bin/labelwall"));
    let args = exec.args.clone().unwrap();
    assert_eq!(args[0], "eks-token");
    let help = Command::new(env!("CARGO_BIN_EXE_labelwall")).args(&args).arg("--help").output();
    assert!(help.unwrap().status.success(), "labelwall {args:?} parses");
}

#[test]
fn kubectl_reads_the_same_kubeconfig_and_lists_the_fake_servers_pods() {
    let server = server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({}))]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", None);
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pods", "--all-namespaces", "-o", "name"])
        .env("HOME", dir.path())
        .output()
        .expect("kubectl is installed (tests/run.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), "pod/ratings-1");
}

#[test]
fn explain_lists_each_cluster_once_and_names_the_pod_behind_an_address() {
    let labels = json!({"app": "ratings"});
    let server = server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], labels)]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", None);
    std::fs::write(
        dir.path().join("policy.yaml"),
        "default_action: deny\ngroups:\n  ratings: {pods: {selector: app=ratings}}\n  \
         db: {cidrs: [10.20.0.0/24]}\nrules:\n  - {name: ratings-to-db, from: [ratings], \
         to: [db], ports: [tcp/3306], action: allow}\n",
    )
    .unwrap();
    let config = dir.path().join("labelwall.yaml");
    let text = format!(
        "policy: policy.yaml\nlabels:\n  kubernetes:\n    - cluster: c1\n      kubeconfig: {}\n",
        kubeconfig.display()
    );
    std::fs::write(&config, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_labelwall"))
        .args(["explain", "-c"])
        .arg(&config)
        .args(["--src", "10.0.1.15", "--dst", "10.20.0.5", "--dport", "3306", "--json"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["verdict"], "allow", "{answer}");
    assert_eq!(answer["rule"], "ratings-to-db");
    let identity = &answer["src"]["identity"];
    assert_eq!(identity["cluster"], "c1");
    assert_eq!(identity["namespace"], "bookinfo");
    assert_eq!(identity["name"], "ratings-1");
    assert_eq!(identity["source"], "kubernetes:c1");
    assert_eq!(answer["src"]["groups"], json!(["any", "ratings"]));
}

// ---------------------------------------------------------------------------------------------
// End to end: the real binary, its data plane and real GENEVE on loopback.

const DB: [u8; 4] = [10, 20, 0, 5];

const POLICY: &str = r#"default_action: deny
groups:
  ratings:
    pods: {namespace: bookinfo, selector: "app=ratings"}
  others:
    pods: {selector: "app=other"}
  trusted:
    pods: {namespace_selector: "trust=high"}
  untrusted:
    pods: {namespace_selector: "trust!=high"}
  workers:
    nodes: {selector: "role=worker"}
  c2-ratings:
    pods: {cluster: c2, selector: "app=ratings"}
  c1-ratings:
    pods: {cluster: c1, selector: "app=ratings"}
  database:
    cidrs: [10.20.0.0/24]
rules:
  - {name: ratings-to-db, from: [ratings], to: [database], ports: [tcp/3306], action: allow}
  - {name: trusted-to-db, from: [trusted], to: [database], ports: [tcp/8080], action: allow}
  - {name: workers-to-db, from: [workers], to: [database], ports: [tcp/5432], action: allow}
  - {name: c1-ratings-to-db, from: [c1-ratings], to: [database], ports: [tcp/3307], action: allow}
  - {name: c2-ratings-to-db, from: [c2-ratings], to: [database], ports: [tcp/3307], action: reject}
  - {name: others-to-db, from: [others], to: [database], action: reject}
  - {name: known-to-db, from: [workers, trusted], to: [database], action: reject}
  - {name: untrusted-to-db, from: [untrusted], to: [database], ports: [tcp/9000], action: allow}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The packet came back as it was sent.
    Allowed,
    /// A TCP RST came back.
    Rejected,
    /// Nothing came back.
    Dropped,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);

/// One mid-flow TCP packet of a new flow from `src` to the database's `dport`.
fn probe(peer: &GwlbPeer, listen: SocketAddr, src: [u8; 4], dport: u16) -> Verdict {
    probe_from(peer, listen, src, NEXT_PORT.fetch_add(1, Ordering::Relaxed), dport)
}

/// One mid-flow TCP packet of the flow from `src:sport` to the database's `dport`.
fn probe_from(
    peer: &GwlbPeer,
    listen: SocketAddr,
    src: [u8; 4],
    sport: u16,
    dport: u16,
) -> Verdict {
    let mut builder =
        etherparse::PacketBuilder::ipv4(src, DB, 64).tcp(sport, dport, 101, 64_000).ack(901);
    builder = builder.psh();
    let mut inner = Vec::new();
    builder.write(&mut inner, b"query").unwrap();
    let datagram = gwlb_datagram(u32::from(sport), &inner);
    peer.send(0, listen, &datagram);
    match peer.receive() {
        None => Verdict::Dropped,
        Some((_, reply)) if reply == datagram => Verdict::Allowed,
        Some((_, reply)) => {
            let inner = SlicedPacket::from_ip(&reply[labelwall::wire::GWLB_HEADER_LEN..])
                .expect("a reply the independent parser reads");
            match &inner.transport {
                Some(TransportSlice::Tcp(t)) if t.rst() => Verdict::Rejected,
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
}

/// Probes until the verdict is `expected`; returns how long it took.
fn wait_verdict(
    peer: &GwlbPeer,
    listen: SocketAddr,
    src: [u8; 4],
    dport: u16,
    expected: Verdict,
    log: &dyn Fn() -> String,
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let verdict = probe(peer, listen, src, dport);
        if verdict == expected {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{src:?} -> db:{dport} still {verdict:?}, expected {expected:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kubernetes_yaml(clusters: &[(&str, &std::path::Path)], max_stale: Option<&str>) -> String {
    let mut yaml = String::from("labels:\n  kubernetes:\n");
    for (cluster, kubeconfig) in clusters {
        yaml.push_str(&format!(
            "    - cluster: {cluster}\n      kubeconfig: {}\n      timeout: 3s\n",
            kubeconfig.display()
        ));
        if let Some(max_stale) = max_stale {
            yaml.push_str(&format!("      max_stale: {max_stale}\n"));
        }
    }
    yaml
}

struct Scene {
    peer: GwlbPeer,
    appliance: Appliance,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn start(servers: &[(&str, &FakeApiServer)]) -> Scene {
        Scene::start_with(servers, None)
    }

    /// As [`Scene::start`], each cluster with `max_stale`.
    fn start_with(servers: &[(&str, &FakeApiServer)], max_stale: Option<&str>) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfigs: Vec<_> =
            servers.iter().map(|(c, s)| (*c, s.kubeconfig(dir.path(), c, None))).collect();
        let clusters: Vec<_> = kubeconfigs.iter().map(|(c, p)| (*c, p.as_path())).collect();
        Scene::start_with_kubeconfigs(&clusters, max_stale, dir)
    }

    /// As [`Scene::start_with`], with kubeconfigs of the test's own (in `dir`).
    fn start_with_kubeconfigs(
        clusters: &[(&str, &std::path::Path)],
        max_stale: Option<&str>,
        dir: tempfile::TempDir,
    ) -> Scene {
        let peer = GwlbPeer::new(1);
        let appliance = Appliance::start_with(
            peer.reply_port(),
            1,
            POLICY,
            None,
            &kubernetes_yaml(clusters, max_stale),
            &[],
        );
        Scene { peer, appliance, _dir: dir }
    }

    fn verdict(&self, src: [u8; 4], dport: u16) -> Verdict {
        probe(&self.peer, self.appliance.listen, src, dport)
    }

    fn wait(&self, src: [u8; 4], dport: u16, expected: Verdict) -> Duration {
        wait_verdict(&self.peer, self.appliance.listen, src, dport, expected, &|| {
            self.appliance.log()
        })
    }

    fn synced(&self, cluster: &str) -> u64 {
        let sample = format!("labelwall_label_source_synced{{source=\"kubernetes:{cluster}\"}}");
        metric(&self.appliance.metrics(), &sample)
    }

    fn wait_synced(&self, cluster: &str, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.synced(cluster) != value {
            assert!(
                Instant::now() < deadline,
                "synced of {cluster} never became {value}\n{}",
                self.appliance.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const POD_A: [u8; 4] = [10, 0, 1, 15];
const POD_B: [u8; 4] = [10, 0, 1, 20];

#[test]
fn pod_labels_decide_live_and_a_reused_ip_follows_its_newest_owner() {
    let server = server_with(&[]);
    let scene = Scene::start(&[("c1", &server)]);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Dropped, "unknown before the pod exists");
    let ratings = pod_created(
        "bookinfo",
        "ratings-v1-1",
        "10.0.1.15",
        json!({"app": "ratings"}),
        "2024-05-01T12:00:00Z",
        "uid-ratings",
    );
    server.apply("pods", ratings.clone());
    scene.wait(POD_A, 3306, Verdict::Allowed);
    server.set_labels("pods", "bookinfo", "ratings-v1-1", json!({"app": "other"}));
    scene.wait(POD_A, 3306, Verdict::Rejected);
    server.set_labels("pods", "bookinfo", "ratings-v1-1", json!({"app": "ratings"}));
    scene.wait(POD_A, 3306, Verdict::Allowed);
    // Deleted, and its IP reused by an `other` pod: the new owner decides.
    server.delete("pods", "bookinfo", "ratings-v1-1");
    server.apply(
        "pods",
        pod_created(
            "bookinfo",
            "other-1",
            "10.0.1.15",
            json!({"app": "other"}),
            "2024-05-01T12:10:00Z",
            "uid-other",
        ),
    );
    scene.wait(POD_A, 3306, Verdict::Rejected);
    // The IP goes back to a ratings pod before the other pod's delete is seen, and then a
    // late delete of the other pod arrives: the newest owner stays.
    server.apply(
        "pods",
        pod_created(
            "bookinfo",
            "ratings-v1-2",
            "10.0.1.15",
            json!({"app": "ratings"}),
            "2024-05-01T12:20:00Z",
            "uid-ratings-2",
        ),
    );
    scene.wait(POD_A, 3306, Verdict::Allowed);
    let late = server.get("pods", "bookinfo", "other-1").unwrap();
    server.delete("pods", "bookinfo", "other-1");
    server.send_delete_event("pods", &late);
    server.send_delete_event("pods", &ratings);
    // A marker change after the deletes: once it is visible, the deletes were applied.
    server.apply("pods", pod("bookinfo", "marker", &["10.0.1.20"], json!({"app": "other"})));
    scene.wait(POD_B, 3306, Verdict::Rejected);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed, "the newest owner stays");
}

/// `in_cluster: true` as in a pod: the service account's token and CA at
/// /var/run/secrets/kubernetes.io/serviceaccount (a tmpfs of a private mount namespace made by
/// `unshare`, so the host is untouched), the API server from KUBERNETES_SERVICE_HOST/PORT,
/// over TLS; the server refuses any other token.
#[test]
fn in_cluster_the_service_account_token_and_authority_reach_the_api_server_and_a_rotated_token_is_read_again()
 {
    let ratings = pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"}));
    let server = tls_server_with(&[ratings]);
    server.require_token("service-account-token");
    let account = tempfile::tempdir().unwrap();
    std::fs::write(account.path().join("token"), "service-account-token").unwrap();
    std::fs::write(account.path().join("namespace"), "labelwall").unwrap();
    std::fs::copy(&server.tls.as_ref().unwrap().ca_path, account.path().join("ca.crt")).unwrap();
    // The account directory is bound, not copied, so that the test can rotate the token as
    // the kubelet does (a new file renamed over the old).
    let mount = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
                 && mount --bind \"$0\" /run/secrets/kubernetes.io/serviceaccount && exec \"$@\"";
    let account_dir = account.path().display().to_string();
    let wrapper =
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, &account_dir];
    let port = server.addr.port().to_string();
    let env =
        [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port.as_str())];
    let peer = GwlbPeer::new(1);
    let clusters =
        "labels:\n  kubernetes:\n    - cluster: c1\n      in_cluster: true\n      timeout: 3s\n";
    let appliance = Appliance::start_wrapped(
        APPLIANCE_IP,
        peer.reply_port(),
        1,
        POLICY,
        None,
        clusters,
        &[],
        &wrapper,
        &env,
    );
    // Ready means every kind was listed, which the server only allows with the token.
    let log = || appliance.log();
    wait_verdict(&peer, appliance.listen, POD_A, 3306, Verdict::Allowed, &log);
    server.set_labels("pods", "bookinfo", "ratings-1", json!({"app": "other"}));
    wait_verdict(&peer, appliance.listen, POD_A, 3306, Verdict::Rejected, &log);
    assert!(server.count_requests(&["/api/v1/pods?", "watch=true"]) >= 1);
    // The token is rotated: the old one is refused from now on, the file is replaced.
    server.require_token("rotated-token");
    let fresh = account.path().join("token.new");
    std::fs::write(&fresh, "rotated-token").unwrap();
    std::fs::rename(&fresh, account.path().join("token")).unwrap();
    server.drop_watches();
    server.set_labels("pods", "bookinfo", "ratings-1", json!({"app": "ratings"}));
    wait_verdict(&peer, appliance.listen, POD_A, 3306, Verdict::Allowed, &log);
}

#[test]
fn namespace_labels_flip_a_namespace_selector_group_and_node_ips_match_node_groups() {
    let server = server_with(&[pod("bookinfo", "web-1", &["10.0.1.15"], json!({"app": "web"}))]);
    let scene = Scene::start(&[("c1", &server)]);
    assert_eq!(scene.verdict(POD_A, 8080), Verdict::Dropped, "bookinfo is not trusted yet");
    server.set_labels("namespaces", "", "bookinfo", json!({"team": "books", "trust": "high"}));
    scene.wait(POD_A, 8080, Verdict::Allowed);
    server.set_labels("namespaces", "", "bookinfo", json!({"team": "books"}));
    scene.wait(POD_A, 8080, Verdict::Dropped);
    // Egress SNATed to the node: the node's address is the node, with the node's labels.
    let node_ip = [10, 0, 0, 10];
    assert_eq!(scene.verdict(node_ip, 5432), Verdict::Allowed);
    assert_eq!(scene.verdict(node_ip, 3306), Verdict::Rejected, "a known node, not a pod");
    server.apply("nodes", node("node-2", "10.0.0.11", json!({"role": "batch"})));
    server.set_labels("nodes", "", "node-1", json!({"role": "batch"}));
    scene.wait(node_ip, 5432, Verdict::Dropped);
    server.set_labels("nodes", "", "node-2", json!({"role": "worker"}));
    scene.wait([10, 0, 0, 11], 5432, Verdict::Allowed);
}

#[test]
fn a_killed_api_server_keeps_the_last_table_until_it_is_back_and_resynced() {
    let server = server_with(&[
        pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"})),
        pod("bookinfo", "other-1", &["10.0.1.20"], json!({"app": "other"})),
    ]);
    let started = Instant::now();
    let scene = Scene::start(&[("c1", &server)]);
    assert_eq!(scene.synced("c1"), 1);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    server.stop();
    scene.wait_synced("c1", 0);
    // Judged by the last table meanwhile, and still ready.
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    assert_eq!(scene.verdict(POD_B, 3306), Verdict::Rejected);
    assert_eq!(http_get(scene.appliance.admin, "/readyz").map(|r| r.0), Some(200));
    let m = scene.appliance.metrics();
    assert!(
        metric(&m, r#"labelwall_label_source_errors_total{source="kubernetes:c1"}"#) >= 1,
        "{m}"
    );
    // While it is down: ratings-1 becomes other, other-1 goes away, a new ratings pod comes.
    server.set_labels("pods", "bookinfo", "ratings-1", json!({"app": "other"}));
    server.delete("pods", "bookinfo", "other-1");
    server.apply("pods", pod("bookinfo", "ratings-2", &["10.0.1.30"], json!({"app": "ratings"})));
    server.restart();
    scene.wait_synced("c1", 1);
    // The replayed events may come in more than one report (the first at once, the rest
    // gathered): each verdict is waited for.
    scene.wait(POD_A, 3306, Verdict::Rejected);
    scene.wait([10, 0, 1, 30], 3306, Verdict::Allowed);
    scene.wait(POD_B, 3306, Verdict::Dropped);
    // 410 during the watch: a relist converges to the server's state.
    server.remove_silently("pods", "bookinfo", "ratings-2");
    let mut relabelled = server.get("pods", "bookinfo", "ratings-1").unwrap();
    relabelled["metadata"]["labels"] = json!({"app": "ratings"});
    server.replace_silently("pods", relabelled);
    // (A relist comes no sooner than 30 s after the last list began.)
    std::thread::sleep(
        (started + Duration::from_secs(30)).saturating_duration_since(Instant::now()),
    );
    server.expire_history();
    scene.wait(POD_A, 3306, Verdict::Allowed);
    scene.wait([10, 0, 1, 30], 3306, Verdict::Dropped);
    scene.wait_synced("c1", 1);
}

#[test]
fn two_clusters_with_the_same_labels_are_told_apart_by_cluster() {
    let c1 =
        server_with(&[pod("bookinfo", "ratings-a", &["10.0.1.15"], json!({"app": "ratings"}))]);
    let c2 =
        server_with(&[pod("bookinfo", "ratings-b", &["10.0.1.20"], json!({"app": "ratings"}))]);
    let scene = Scene::start(&[("c1", &c1), ("c2", &c2)]);
    assert_eq!(scene.verdict(POD_A, 3307), Verdict::Allowed, "c1's ratings");
    assert_eq!(scene.verdict(POD_B, 3307), Verdict::Rejected, "c2's ratings");
    // Both are `ratings` to a selector that names no cluster.
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    assert_eq!(scene.verdict(POD_B, 3306), Verdict::Allowed);
    // Each cluster's changes reach only its own identities; each is its own source.
    c2.set_labels("pods", "bookinfo", "ratings-b", json!({"app": "other"}));
    scene.wait(POD_B, 3306, Verdict::Rejected);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    c2.stop();
    scene.wait_synced("c2", 0);
    assert_eq!(scene.synced("c1"), 1);
}

// ---------------------------------------------------------------------------------------------
// Measurements (`cargo test --release --test kubernetes -- --ignored --nocapture`).

/// The appliance binary started by hand, to read its memory and wait longer for readiness.
struct Measured {
    child: Child,
    listen: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Measured {
    fn drop(&mut self) {
        // SIGTERM first, so that a profiler wrapping the appliance writes its data whole.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) in a `/proc/.../stat` file: after the command (which may hold
/// spaces) ends with ')', utime and stime are the 12th and 13th fields, in clock ticks (100 per
/// second on Linux).
fn stat_cpu_seconds(stat: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 =
        after.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}

/// CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU seconds the fake API server's thread has used so far (it runs in the test process).
fn server_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "fake-api-server")
        })
        .map(|t| stat_cpu_seconds(&t.path().join("stat")))
        .sum()
}

fn start_measured(server: &FakeApiServer, reply_port: u16) -> (Measured, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", None);
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let listen = SocketAddr::from((APPLIANCE_IP, free_udp_port(APPLIANCE_IP)));
    let admin = SocketAddr::from((APPLIANCE_IP, free_tcp_port(APPLIANCE_IP)));
    let config = format!(
        "dataplane:\n  listen: {listen}\n  workers: 1\n  reply_port: {reply_port}\n\
         admin:\n  listen: {admin}\npolicy: policy.yaml\nlog:\n  level: \"info,labelwall::sources=debug,labelwall::control=debug\"\n{}",
        kubernetes_yaml(&[("c1", &kubeconfig)], None)
    );
    std::fs::write(dir.path().join("labelwall.yaml"), config).unwrap();
    let started = Instant::now();
    // LABELWALL_MEASURE_WRAPPER runs the appliance under a profiler ("heaptrack -o FILE",
    // "perf record -g -o FILE --"): see docs/performance.md.
    let wrapper = std::env::var("LABELWALL_MEASURE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_labelwall"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_labelwall")),
    };
    let child = command
        .args(["run", "-c"])
        .arg(dir.path().join("labelwall.yaml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("labelwall.log")).unwrap())
        .spawn()
        .unwrap();
    let measured = Measured { child, listen, dir };
    let deadline = started + Duration::from_secs(180);
    while http_get(admin, "/readyz").is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "not ready within 180 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (measured, started.elapsed())
}

/// The log without terminal colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Initial sync time and memory with `count` pods, then the time from a label change on the
/// API server to the first packet judged by the new labels, over `flips` changes.
fn measure(count: usize, flips: usize) {
    let env = |name: &str, default: usize| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (count, flips) = (env("LABELWALL_PODS", count), env("LABELWALL_FLIPS", flips));
    let server = server_with(&[]);
    let namespaces =
        (0..50).map(|i| namespace(&format!("ns-{i}"), json!({"team": format!("t{}", i % 7)})));
    server.preload("namespaces", namespaces);
    let nodes = (0..200).map(|i| {
        node(
            &format!("node-{i}"),
            &format!("10.0.{}.{}", 200 + i / 250, i % 250 + 1),
            json!({"role": "worker"}),
        )
    });
    server.preload("nodes", nodes);
    let pods = (0..count).map(|i| {
        let ip = format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256);
        let labels = json!({"app": format!("app-{}", i % 500), "pod-template-hash": format!("{:x}", i % 1000),
                            "tier": if i % 2 == 0 { "web" } else { "backend" }});
        let mut p = pod(&format!("ns-{}", i % 50), &format!("pod-{i}"), &[&ip], labels);
        p["metadata"]["uid"] = format!("00000000-0000-4000-9000-{i:012}").into();
        p
    });
    server.preload("pods", pods);
    server.apply("pods", pod("bookinfo", "flipper", &["10.0.1.15"], json!({"app": "ratings"})));
    let peer = GwlbPeer::new(1);
    let server_cpu = server_cpu_seconds();
    let (appliance, sync) = start_measured(&server, peer.reply_port());
    let pid = appliance.child.id();
    let rss = proc_status_kib(pid, "VmRSS:");
    let hwm = proc_status_kib(pid, "VmHWM:");
    println!(
        "{count} pods: ready after {:.2} s (CPU: appliance {:.2} s, fake server {:.2} s), RSS {:.1} MiB (peak {:.1} MiB)",
        sync.as_secs_f64(),
        cpu_seconds(pid),
        server_cpu_seconds() - server_cpu,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    if std::env::var_os("LABELWALL_SHOW_START").is_some() {
        let log = std::fs::read_to_string(appliance.dir.path().join("labelwall.log")).unwrap();
        for line in strip_ansi(&log).lines().filter(|l| !l.contains("watch error")).take(40) {
            println!("  {line}");
        }
    }
    let log = || format!("see {}", appliance.dir.path().display());
    wait_verdict(&peer, appliance.listen, POD_A, 3306, Verdict::Allowed, &log);
    let mut latencies = Vec::with_capacity(flips);
    let mut rss_series = Vec::new();
    for i in 0..flips {
        if i % 50 == 0 {
            rss_series.push(proc_status_kib(pid, "VmRSS:") / 1024);
        }
        let (app, expected) =
            if i % 2 == 0 { ("other", Verdict::Rejected) } else { ("ratings", Verdict::Allowed) };
        server.set_labels("pods", "bookinfo", "flipper", json!({"app": app}));
        let changed = Instant::now();
        // One established flow, probed every 0.5 ms: its next packet after the change must
        // be judged by the new labels.
        while probe_from(&peer, appliance.listen, POD_A, 40_000, 3306) != expected {
            assert!(changed.elapsed() < Duration::from_secs(10), "flip {i} never seen");
            std::thread::sleep(Duration::from_micros(500));
        }
        let latency = changed.elapsed();
        latencies.push(latency);
        // Changes apart, as single changes (a burst is gathered into one rebuild on purpose).
        std::thread::sleep(Duration::from_millis(50).max(latency * 2));
    }
    latencies.sort();
    let log = std::fs::read_to_string(appliance.dir.path().join("labelwall.log")).unwrap();
    let log = strip_ansi(&log);
    let median_of = |message: &str, field: &str| {
        let mut values: Vec<u64> = log
            .lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| {
                l.split(field).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            })
            .collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    println!(
        "{count} pods: median changes gathering {} us, median snapshot publish {} us; RSS MiB every 50 flips {rss_series:?}",
        median_of("changes gathered", "took_us="),
        median_of("snapshot published", "took_us=")
    );
    println!(
        "{count} pods: label change -> new verdict over {flips} flips: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; RSS after {:.1} MiB",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        proc_status_kib(pid, "VmRSS:") as f64 / 1024.0
    );
}

#[test]
#[ignore = "measurement: run with --release --ignored --nocapture"]
fn measure_sync_memory_and_flip_latency_at_10k_pods() {
    measure(10_000, 200);
}

#[test]
#[ignore = "measurement: run with --release --ignored --nocapture"]
fn measure_sync_memory_and_flip_latency_at_100k_pods() {
    measure(100_000, 100);
}

#[test]
fn a_cluster_lost_longer_than_max_stale_is_withdrawn_until_it_syncs_again() {
    let server =
        server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"}))]);
    let scene = Scene::start_with(&[("c1", &server)], Some("2s"));
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    let stale = || {
        metric(
            &scene.appliance.metrics(),
            r#"labelwall_label_source_stale_seconds{source="kubernetes:c1"}"#,
        )
    };
    let withdrawn = || {
        metric(
            &scene.appliance.metrics(),
            r#"labelwall_label_source_withdrawn{source="kubernetes:c1"}"#,
        )
    };
    assert_eq!((stale(), withdrawn()), (0, 0));
    server.stop();
    scene.wait_synced("c1", 0);
    // Within max_stale: the last table decides.
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    // Past it: the pod's address is unknown (no group matches it: default deny).
    let took = scene.wait(POD_A, 3306, Verdict::Dropped);
    assert!(took < Duration::from_secs(6), "withdrawn after {took:?}");
    assert_eq!(withdrawn(), 1);
    assert!(stale() >= 2, "stale seconds {}", stale());
    assert_eq!(
        http_get(scene.appliance.admin, "/readyz").map(|r| r.0),
        Some(200),
        "readiness unchanged"
    );
    // Back: the entries return whole as soon as the source syncs, with no change to report.
    server.restart();
    scene.wait_synced("c1", 1);
    scene.wait(POD_A, 3306, Verdict::Allowed);
    assert_eq!((stale(), withdrawn()), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// The control plane's real failures: a silent server, failing watch starts, rotated
// credentials. The sources here have a `timeout` of 3 s.

/// The next `Lost` within `limit`, folding the `Changes` before it into the view.
async fn lost_within(watched: &mut Watched, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while let Some(event) =
        next_event(watched, deadline.saturating_duration_since(Instant::now())).await
    {
        match event {
            SourceEvent::Lost { error, .. } => return error,
            SourceEvent::Changes { changes, .. } => watched.view.apply(&changes),
        }
    }
    panic!("not lost within {limit:?}")
}

#[tokio::test]
async fn a_silent_api_server_is_lost_after_the_timeout_and_resumed_without_a_relist() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"}))]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
    server.wait_for_watches(3);
    let lists = server.count_requests(&["limit="]);
    server.freeze();
    let frozen = Instant::now();
    let error = lost_within(&mut watched, Duration::from_secs(10)).await;
    // Lost after the 3 s timeout, not after a watch's own 290 s.
    let took = frozen.elapsed();
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(7), "{took:?}");
    assert!(error.contains("no answer from the API server"), "{error}");
    // Changed while silent; seen once it answers again, from the watches' versions.
    server.set_labels("pods", "bookinfo", "a", json!({"app": "a2"}));
    server.thaw();
    records_where(&mut watched, "the change", |r| labels_of(r, "a") == "app=a2").await;
    assert_eq!(server.count_requests(&["limit="]), lists, "no list after a stall");
}

#[tokio::test]
async fn failing_watch_starts_are_retried_from_their_version_with_backoff_and_never_relisted() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"}))]);
    let mut watched = watch(&server, "c1");
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
    server.wait_for_watches(3);
    let lists = server.count_requests(&["limit="]);
    let watches = server.count_requests(&["watch=true"]);
    // A control-plane rollout: every watch start refused for 8 s (longer than the timeout),
    // the open watches cut.
    server.fail_watches_for(503, Duration::from_secs(8));
    server.drop_watches();
    let failing = Instant::now();
    let error = lost_within(&mut watched, Duration::from_secs(10)).await;
    assert!(error.contains("ServiceUnavailable"), "{error}");
    server.set_labels("pods", "bookinfo", "a", json!({"app": "a2"}));
    records_where(&mut watched, "the change", |r| labels_of(r, "a") == "app=a2").await;
    assert!(failing.elapsed() >= Duration::from_secs(8));
    assert_eq!(server.count_requests(&["limit="]), lists, "no relist for failed watch starts");
    // Backoff, not a retry loop: 3 kinds, each with at most a try per half-second step,
    // doubling to the 3 s cap, plus the watches that end every 1.5 s once back.
    let tries = server.count_requests(&["watch=true"]) - watches;
    assert!((3..=40).contains(&tries), "{tries} watch requests");
}

/// A kubeconfig for `server` whose user has a static `token`.
fn kubeconfig_with_token(
    server: &FakeApiServer,
    dir: &std::path::Path,
    token: &str,
) -> std::path::PathBuf {
    let path = server.kubeconfig(dir, "c1", None);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("    user: {}\n", &format!("    user:\n      token: {token}\n"));
    assert!(text.contains("token:"), "{text}");
    // Written whole and renamed, as kubectl and config management do.
    let fresh = dir.join("c1.kubeconfig.new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    path
}

#[tokio::test]
async fn a_token_rewritten_in_the_kubeconfig_is_used_without_a_restart_or_a_relist() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"}))]);
    server.require_token("first");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_token(&server, dir.path(), "first");
    let mut watched = watch_with(source("c1", &kubeconfig), dir);
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
    let lists = server.count_requests(&["limit="]);
    // The token is rotated: the server takes only the new one, the file gets it a moment later.
    server.require_token("second");
    server.drop_watches();
    std::thread::sleep(Duration::from_millis(300));
    kubeconfig_with_token(&server, watched._dir.path(), "second");
    server.set_labels("pods", "bookinfo", "a", json!({"app": "a2"}));
    records_where(&mut watched, "the change", |r| labels_of(r, "a") == "app=a2").await;
    assert_eq!(server.count_requests(&["limit="]), lists, "resumed, not relisted");
}

#[tokio::test]
async fn an_exec_plugin_runs_again_when_its_token_is_refused() {
    let server = server_with(&[pod("bookinfo", "a", &["10.0.1.1"], json!({"app": "a"}))]);
    server.require_token("first");
    let dir = tempfile::tempdir().unwrap();
    // The plugin hands out whatever token the file holds (no expiry: the client would keep it
    // for ever).
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first").unwrap();
    let script = dir.path().join("get-token.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
             \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}' \"$(cat {})\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let script = script.display().to_string();
    let kubeconfig = server.kubeconfig(dir.path(), "c1", Some(("/bin/sh", &[script.as_str()])));
    let mut watched = watch_with(source("c1", &kubeconfig), dir);
    records_where(&mut watched, "pod a", |r| pod_names(r).len() == 1).await;
    std::fs::write(&token_file, "second").unwrap();
    server.require_token("second");
    server.drop_watches();
    server.set_labels("pods", "bookinfo", "a", json!({"app": "a2"}));
    records_where(&mut watched, "the change", |r| labels_of(r, "a") == "app=a2").await;
}

#[test]
fn a_blackholed_api_server_is_noticed_after_the_timeout_and_withdrawn_after_max_stale() {
    let server =
        server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"}))]);
    let scene = Scene::start_with(&[("c1", &server)], Some("2s"));
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    // Connections stay open, nothing is answered: no reset, no error for kube to see.
    server.freeze();
    let frozen = Instant::now();
    scene.wait_synced("c1", 0);
    let noticed = frozen.elapsed();
    assert!(noticed < Duration::from_secs(7), "noticed after {noticed:?} (timeout 3s)");
    // max_stale counts from there: the pod's address becomes unknown.
    scene.wait(POD_A, 3306, Verdict::Dropped);
    assert!(scene.appliance.log().contains("no answer from the API server"));
    server.thaw();
    scene.wait_synced("c1", 1);
    scene.wait(POD_A, 3306, Verdict::Allowed);
}

#[test]
fn a_token_rotated_in_the_kubeconfig_reaches_the_running_appliance() {
    let server =
        server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"}))]);
    server.require_token("first");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_token(&server, dir.path(), "first");
    let scene = Scene::start_with_kubeconfigs(&[("c1", &kubeconfig)], None, dir);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    server.require_token("second");
    server.drop_watches();
    kubeconfig_with_token(&server, scene._dir.path(), "second");
    // A change made after the rotation decides the next packet.
    server.set_labels("pods", "bookinfo", "ratings-1", json!({"app": "other"}));
    scene.wait(POD_A, 3306, Verdict::Rejected);
    // (Lost for a moment if the refusals lasted longer than the 3 s timeout: a busy machine.)
    scene.wait_synced("c1", 1);
    assert!(scene.appliance.log().contains("read the credentials again"));
}

#[test]
fn events_that_keep_coming_while_part_of_the_api_server_is_silent_do_not_stop_max_stale() {
    let server = server_with(&[
        pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"})),
        pod("bookinfo", "busy", &["10.0.1.99"], json!({"app": "busy"})),
    ]);
    let scene = Scene::start_with(&[("c1", &server)], Some("2s"));
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    // The version probe fails; watches go on delivering a change every 300 ms. Each change
    // must not count as being in sync again (it did: max_stale restarted with every event).
    server.fail_version(true);
    let started = Instant::now();
    let mut round = 0;
    while scene.verdict(POD_A, 3306) != Verdict::Dropped {
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "never withdrawn (timeout 3 s + max_stale 2 s)\n{}",
            scene.appliance.log()
        );
        round += 1;
        server.set_labels(
            "pods",
            "bookinfo",
            "busy",
            json!({"app": "busy", "round": round.to_string()}),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(scene.synced("c1"), 0);
    server.fail_version(false);
    scene.wait_synced("c1", 1);
    scene.wait(POD_A, 3306, Verdict::Allowed);
}

#[test]
fn a_control_plane_rollout_refusing_watches_costs_no_relist_and_the_next_change_still_decides() {
    let server =
        server_with(&[pod("bookinfo", "ratings-1", &["10.0.1.15"], json!({"app": "ratings"}))]);
    let scene = Scene::start(&[("c1", &server)]);
    assert_eq!(scene.verdict(POD_A, 3306), Verdict::Allowed);
    let lists = server.count_requests(&["limit="]);
    server.fail_watches_for(429, Duration::from_secs(6));
    server.drop_watches();
    std::thread::sleep(Duration::from_secs(6));
    server.set_labels("pods", "bookinfo", "ratings-1", json!({"app": "other"}));
    scene.wait(POD_A, 3306, Verdict::Rejected);
    scene.wait_synced("c1", 1);
    assert_eq!(server.count_requests(&["limit="]), lists, "watches resumed, nothing relisted");
}

// ---------------------------------------------------------------------------------------------
// Contested addresses: the owner of an address several claim.

/// A server with the bookinfo namespace and `pods`, no node (whose address two such servers
/// would both claim).
fn server_without_nodes(pods: &[serde_json::Value]) -> FakeApiServer {
    let server = FakeApiServer::start();
    server.apply("namespaces", namespace("bookinfo", json!({"team": "books"})));
    for p in pods {
        server.apply("pods", p.clone());
    }
    server
}

impl Scene {
    fn conflicts(&self, cluster: &str) -> u64 {
        let sample = format!("labelwall_label_conflicts_total{{source=\"kubernetes:{cluster}\"}}");
        metric(&self.appliance.metrics(), &sample)
    }
}

#[test]
fn two_clusters_claiming_one_pod_ip_the_newer_pod_owns_it_until_its_cluster_is_lost() {
    let ratings = json!({"app": "ratings"});
    let c1 = server_without_nodes(&[pod_created(
        "bookinfo",
        "ratings-c1",
        "10.0.1.15",
        ratings.clone(),
        "2024-05-01T12:00:00Z",
        "uid-c1",
    )]);
    let c2 = server_without_nodes(&[]);
    // c1 comes first in the configuration: c2's pod wins by being newer.
    let scene = Scene::start(&[("c1", &c1), ("c2", &c2)]);
    assert_eq!(scene.verdict(POD_A, 3307), Verdict::Allowed, "c1's ratings");
    let m = scene.appliance.metrics();
    for cluster in ["c1", "c2"] {
        let sample =
            format!("labelwall_label_conflicts_total{{source=\"kubernetes:{cluster}\"}} 0");
        assert!(m.contains(&sample), "every source registered at 0: {m}");
    }
    c2.apply(
        "pods",
        pod_created(
            "bookinfo",
            "ratings-c2",
            "10.0.1.15",
            ratings,
            "2024-05-01T12:05:00Z",
            "uid-c2",
        ),
    );
    scene.wait(POD_A, 3307, Verdict::Rejected);
    assert_eq!((scene.conflicts("c1"), scene.conflicts("c2")), (0, 1), "c2's claim joined c1's");
    let log = scene.appliance.log();
    assert!(
        log.contains("address claimed by two label sources")
            && log.contains("10.0.1.15")
            && log.contains("c2/bookinfo/ratings-c2")
            && log.contains("c1/bookinfo/ratings-c1"),
        "{log}"
    );
    // c2 lost: c1's claim takes over, though c2 keeps its last table.
    c2.stop();
    scene.wait_synced("c2", 0);
    scene.wait(POD_A, 3307, Verdict::Allowed);
    // Back: c2's newer pod again, and a relist of the same objects is no new conflict.
    c2.restart();
    scene.wait_synced("c2", 1);
    scene.wait(POD_A, 3307, Verdict::Rejected);
    assert_eq!((scene.conflicts("c1"), scene.conflicts("c2")), (0, 1));
    // c2's pod starts terminating: c1's older, live pod owns the address.
    c2.start_deleting("bookinfo", "ratings-c2");
    scene.wait(POD_A, 3307, Verdict::Allowed);
}

#[test]
fn a_pod_that_starts_terminating_hands_its_ip_to_the_live_pod_with_it() {
    let server = server_with(&[]);
    let scene = Scene::start(&[("c1", &server)]);
    server.apply(
        "pods",
        pod_created(
            "bookinfo",
            "ratings-live",
            "10.0.1.15",
            json!({"app": "ratings"}),
            "2024-05-01T12:00:00Z",
            "uid-live",
        ),
    );
    scene.wait(POD_A, 3306, Verdict::Allowed);
    // A newer pod with the same address (a pod of a node that stopped answering, whose
    // address was handed out again): the newest owns it...
    server.apply(
        "pods",
        pod_created(
            "bookinfo",
            "other-stuck",
            "10.0.1.15",
            json!({"app": "other"}),
            "2024-05-01T12:05:00Z",
            "uid-stuck",
        ),
    );
    scene.wait(POD_A, 3306, Verdict::Rejected);
    assert_eq!(scene.conflicts("c1"), 1, "pod against pod, inside the cluster");
    // ...until it is being deleted: the live pod's labels decide at once, while the
    // terminating pod stays (phase Running) for as long as its node does not answer.
    server.start_deleting("bookinfo", "other-stuck");
    scene.wait(POD_A, 3306, Verdict::Allowed);
    assert!(server.get("pods", "bookinfo", "other-stuck").is_some());
    let log = scene.appliance.log();
    assert!(log.contains("address claimed twice") && log.contains("10.0.1.15"), "{log}");
    // A terminating pod alone still owns its address.
    server.apply(
        "pods",
        terminating(
            pod_created(
                "bookinfo",
                "other-alone",
                "10.0.1.20",
                json!({"app": "other"}),
                "2024-05-01T12:05:00Z",
                "uid-alone",
            ),
            "2024-05-01T13:00:00Z",
        ),
    );
    scene.wait(POD_B, 3306, Verdict::Rejected);
}

#[test]
fn a_namespace_deleted_before_its_pod_keeps_its_labels_for_negative_selectors() {
    let server = server_with(&[
        pod("secure", "vault-1", &["10.0.1.15"], json!({"app": "vault"})),
        pod("bookinfo", "marker", &["10.0.1.20"], json!({"app": "web"})),
    ]);
    server.apply("namespaces", namespace("secure", json!({"trust": "high"})));
    let scene = Scene::start(&[("c1", &server)]);
    // Trusted: known-to-db rejects it; `trust!=high` (allowed on 9000) does not match it.
    scene.wait(POD_A, 9000, Verdict::Rejected);
    assert_eq!(scene.verdict(POD_B, 8080), Verdict::Dropped, "bookinfo is not trusted");
    // The namespace's delete comes before its pod's. A namespace change after it (the same
    // watch stream) tells when it was applied.
    server.delete("namespaces", "", "secure");
    server.set_labels("namespaces", "", "bookinfo", json!({"team": "books", "trust": "high"}));
    scene.wait(POD_B, 8080, Verdict::Allowed);
    assert_eq!(scene.verdict(POD_A, 9000), Verdict::Rejected, "still trusted, not untrusted");
    // Back with other labels while its pod is there: they apply.
    server.apply("namespaces", namespace("secure", json!({"trust": "low"})));
    scene.wait(POD_A, 9000, Verdict::Allowed);
    // Deleted again, then its pod: the address is unknown.
    server.delete("namespaces", "", "secure");
    server.delete("pods", "secure", "vault-1");
    scene.wait(POD_A, 9000, Verdict::Dropped);
}

#[test]
fn explain_names_the_claims_on_an_address_that_lose_and_why() {
    let ratings = json!({"app": "ratings"});
    // c1's pod is the newest but terminating; c2's is live; the inventory entry has no
    // creation time.
    let c1 = server_without_nodes(&[terminating(
        pod_created(
            "bookinfo",
            "ratings-c1",
            "10.0.1.15",
            ratings.clone(),
            "2024-05-01T12:10:00Z",
            "u1",
        ),
        "2024-05-01T13:00:00Z",
    )]);
    let c2 = server_without_nodes(&[pod_created(
        "bookinfo",
        "ratings-c2",
        "10.0.1.15",
        ratings,
        "2024-05-01T12:05:00Z",
        "u2",
    )]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "endpoints:\n  - {ip: 10.0.1.15, name: static, kind: external, labels: {app: db}}\n",
    )
    .unwrap();
    let kubeconfigs = [
        ("c1", c1.kubeconfig(dir.path(), "c1", None)),
        ("c2", c2.kubeconfig(dir.path(), "c2", None)),
    ];
    let clusters: Vec<_> = kubeconfigs.iter().map(|(c, p)| (*c, p.as_path())).collect();
    let config = dir.path().join("labelwall.yaml");
    let text = format!(
        "policy: policy.yaml\n{}  inventory: [inventory.yaml]\n",
        kubernetes_yaml(&clusters, None)
    );
    std::fs::write(&config, text).unwrap();
    let explain = |json: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_labelwall"));
        command.args(["explain", "-c"]).arg(&config);
        command.args(["--src", "10.0.1.15", "--dst", "10.20.0.5", "--dport", "3307"]);
        if json {
            command.arg("--json");
        }
        let output = command.env("HOME", dir.path()).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let answer: serde_json::Value = serde_json::from_str(&explain(true)).unwrap();
    assert_eq!(answer["src"]["identity"]["name"], "ratings-c2", "{answer}");
    assert_eq!(answer["rule"], "c2-ratings-to-db");
    let losing = answer["src"]["losing"].as_array().expect("losing claims");
    let summary: Vec<(String, String, String)> = losing
        .iter()
        .map(|l| {
            let source = l["source"].as_str().unwrap();
            let source = if source.starts_with("inventory:") { "inventory" } else { source };
            (source.to_string(), l["name"].to_string(), l["loss"].to_string())
        })
        .collect();
    assert_eq!(
        summary,
        [
            // Next in line: not terminating ranks before the creation time.
            ("inventory".into(), "\"static\"".into(), "\"older\"".into()),
            ("kubernetes:c1".into(), "\"ratings-c1\"".into(), "\"terminating\"".into()),
        ]
    );
    assert!(answer["dst"].get("losing").is_none(), "none for an address no one contests");
    let text = explain(false);
    assert!(
        text.contains(
            "also claimed by pod c1/bookinfo/ratings-c1 from kubernetes:c1 (loses: terminating)"
        ),
        "{text}"
    );
}
