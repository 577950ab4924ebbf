//! A fake Kubernetes API server for the tests: HTTP/1.1 on 127.0.0.1, plain or over TLS with
//! a certificate authority of its own (made with the `openssl` command), written against
//! the wire protocol rather than any Kubernetes library, so that the real kube client (and
//! kubectl) talk to it as to an API server.
//!
//! It serves `/api/v1/{pods,namespaces,nodes}`: lists with `metadata.resourceVersion`, paged
//! by `limit`/`continue` from a snapshot taken at the first page (as etcd does); watches from
//! a resource version as chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//! "object": ...}`, replayed from a history of changes, with bookmarks; 410 Gone for a watch
//! (an ERROR event carrying a Status with code 410) or a list at a resource version older
//! than the compacted history. The test can slow lists down, drop every watch connection in
//! the middle of a chunk, expire the history (open watches get a 410), stop the server (every
//! connection closed, the port refused) and start it again on the same port with its state,
//! and require a bearer token. Discovery (`/api`, `/apis`, `/api/v1`, `/version`) is enough
//! for kubectl. Objects are kept as serialized JSON, so 100k pods cost the test process tens
//! of MB, not more.
//!
//! The server runs on a tokio runtime of its own thread; every method is called from the
//! test's (synchronous or asynchronous) code.
#![allow(dead_code)] // each test uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A client connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Connection = BufReader<Box<dyn Io>>;

/// The server's TLS: its acceptor and the certificate authority clients must trust.
pub struct Tls {
    acceptor: TlsAcceptor,
    pub ca_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("ca_path", &self.ca_path).finish_non_exhaustive()
    }
}

impl Tls {
    /// A fresh CA and a server certificate it signed for the address 127.0.0.1.
    fn generate() -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("the openssl command (tests/run.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=fake-kubernetes-ca",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(dir.path().join("server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.path().join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_path: dir.path().join("ca.crt"),
            _dir: dir,
        }
    }
}

/// The resources served, by URL segment.
pub const KINDS: [&str; 3] = ["pods", "namespaces", "nodes"];

fn kind_name(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "namespaces" => "Namespace",
        _ => "Node",
    }
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: &'static str,
    kind: &'static str,
    object: Arc<str>,
}

/// A list as of one resource version, served page by page.
type ListSnapshot = (u64, Arc<Vec<Arc<str>>>);

#[derive(Debug, Default)]
struct State {
    /// The last resource version handed out.
    rv: u64,
    /// Watches and lists from a resource version older than this get 410 Gone.
    compacted: u64,
    objects: HashMap<&'static str, BTreeMap<String, Arc<str>>>,
    history: Vec<Change>,
    /// Paged lists in progress: token -> (resource version, snapshot).
    pages: HashMap<u64, ListSnapshot>,
    next_page_token: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change (and on expiry), wakes the watches.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to drop every open watch in the middle of a chunk.
    drop_watches: tokio::sync::watch::Sender<u64>,
    list_delay: Mutex<Duration>,
    bookmark_interval: Mutex<Duration>,
    token: Mutex<Option<TokenCheck>>,
    /// `GET path?query` of every request, in order.
    requests: Mutex<Vec<String>>,
    connections: Mutex<Vec<AbortHandle>>,
    uid_counter: AtomicU64,
    /// Watches currently streaming.
    open_watches: AtomicU64,
    /// While true, requests are read and not answered, and open watches send nothing (a
    /// blackholed API server: connections open, no bytes).
    frozen: tokio::sync::watch::Sender<bool>,
    /// Watch requests are answered with this status until the instant (a control-plane
    /// rollout: 429, 503).
    failing_watches: Mutex<Option<(u16, std::time::Instant)>>,
    /// `/version` answers 503 (one part of the API server failing while watches stream).
    version_fails: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Returns once the server is not frozen.
    async fn thawed(&self) {
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|frozen| !frozen).await;
    }
}

/// Decides whether a bearer token is accepted.
#[derive(Clone)]
struct TokenCheck(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck")
    }
}

/// The running (or stopped) fake API server.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop_runtime: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    accept: Mutex<Option<AbortHandle>>,
    pub addr: SocketAddr,
    /// Set when the server speaks TLS.
    pub tls: Option<Tls>,
}

impl FakeApiServer {
    /// Starts an empty server on a free port of 127.0.0.1, plain HTTP.
    pub fn start() -> FakeApiServer {
        FakeApiServer::start_with(None)
    }

    /// Starts an empty server speaking HTTPS with a certificate authority of its own.
    pub fn start_tls() -> FakeApiServer {
        FakeApiServer::start_with(Some(Tls::generate()))
    }

    fn start_with(tls: Option<Tls>) -> FakeApiServer {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-api-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake API server");
                handle_tx.send(runtime.handle().clone()).unwrap();
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .unwrap();
        let runtime = handle_rx.recv().unwrap();
        let mut objects = HashMap::new();
        for resource in KINDS {
            objects.insert(resource, BTreeMap::new());
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State { rv: 1, compacted: 1, objects, ..State::default() }),
            changed: tokio::sync::watch::Sender::new(0),
            drop_watches: tokio::sync::watch::Sender::new(0),
            list_delay: Mutex::new(Duration::ZERO),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            token: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
            uid_counter: AtomicU64::new(0),
            open_watches: AtomicU64::new(0),
            frozen: tokio::sync::watch::Sender::new(false),
            failing_watches: Mutex::new(None),
            version_fails: std::sync::atomic::AtomicBool::new(false),
        });
        let listener = {
            let _context = runtime.enter();
            bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a port for the fake API server")
        };
        let addr = listener.local_addr().unwrap();
        let server = FakeApiServer {
            shared,
            runtime,
            stop_runtime: Some(stop_tx),
            thread: Some(thread),
            accept: Mutex::new(None),
            addr,
            tls,
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let runtime = self.runtime.clone();
        let acceptor = self.tls.as_ref().map(|tls| tls.acceptor.clone());
        let task = self.runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let shared_for_connection = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                let connection = runtime.spawn(async move {
                    let stream: Box<dyn Io> = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return, // a client that does not trust us
                        },
                        None => Box::new(stream),
                    };
                    serve_connection(shared_for_connection, stream).await
                });
                shared.connections.lock().unwrap().push(connection.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task.abort_handle());
    }

    /// Kills the server: the port is closed and every open connection dropped. The objects
    /// and their history stay, as in etcd.
    pub fn stop(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
        // Let the server's thread run the aborts before the caller goes on.
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Starts serving again on the same port.
    pub fn restart(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            let bound = {
                let _context = self.runtime.enter();
                bind(self.addr)
            };
            match bound {
                Ok(listener) => break listener,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot bind {} again: {e}", self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path. `exec` adds an
    /// exec credential plugin (the command and its arguments) to the user.
    pub fn kubeconfig(&self, dir: &Path, name: &str, exec: Option<(&str, &[&str])>) -> PathBuf {
        self.kubeconfig_with_env(dir, name, exec, &[])
    }

    /// `kubeconfig`, with `env` set for the exec plugin (the kubeconfig's `exec.env`).
    pub fn kubeconfig_with_env(
        &self,
        dir: &Path,
        name: &str,
        exec: Option<(&str, &[&str])>,
        env: &[(&str, &str)],
    ) -> PathBuf {
        let mut user = String::from("    user: {}\n");
        if let Some((command, args)) = exec {
            user = format!(
                "    user:\n      exec:\n        apiVersion: client.authentication.k8s.io/v1beta1\n\
                 \x20       command: {command}\n        args: {args:?}\n        interactiveMode: Never\n"
            );
            if !env.is_empty() {
                user.push_str("        env:\n");
                for (name, value) in env {
                    user.push_str(&format!("          - {{name: {name:?}, value: {value:?}}}\n"));
                }
            }
        }
        let (scheme, authority) = match &self.tls {
            Some(tls) => {
                ("https", format!("\n      certificate-authority: {}", tls.ca_path.display()))
            }
            None => ("http", String::new()),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n  - name: {name}\n    cluster:\n\
             \x20     server: {scheme}://{addr}{authority}\ncontexts:\n  - name: {name}\n    context:\n\
             \x20     cluster: {name}\n      user: {name}\ncurrent-context: {name}\n\
             users:\n  - name: {name}\n{user}",
            addr = self.addr
        );
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Delays every list response (each page) by `delay`.
    pub fn set_list_delay(&self, delay: Duration) {
        *self.shared.list_delay.lock().unwrap() = delay;
    }

    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self.shared.bookmark_interval.lock().unwrap() = interval;
    }

    /// Requires `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        let token = token.to_string();
        self.require_bearer(move |t| t == token);
    }

    /// Requires `Authorization: Bearer <token>` with a token `accept` says yes to.
    pub fn require_bearer(&self, accept: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.shared.token.lock().unwrap() = Some(TokenCheck(Arc::new(accept)));
    }

    /// `GET path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose path and query contain every one of `parts`.
    pub fn count_requests(&self, parts: &[&str]) -> usize {
        self.requests().iter().filter(|r| parts.iter().all(|p| r.contains(p))).count()
    }

    /// Waits until `count` watches are streaming (so that what follows reaches them).
    pub fn wait_for_watches(&self, count: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.shared.open_watches.load(Ordering::SeqCst) < count {
            assert!(std::time::Instant::now() < deadline, "{count} watches never opened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().unwrap().rv
    }

    /// Creates or replaces an object (`pods`, `namespaces` or `nodes`); fills in uid,
    /// creationTimestamp (when absent) and resourceVersion, and records the change.
    pub fn apply(&self, resource: &'static str, mut object: Value) {
        let mut state = self.shared.state.lock().unwrap();
        let key = object_key(&object);
        let meta = &mut object["metadata"];
        if meta.get("uid").is_none() {
            let n = self.shared.uid_counter.fetch_add(1, Ordering::Relaxed);
            meta["uid"] = format!("00000000-0000-4000-8000-{n:012}").into();
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = "2024-05-01T12:00:00Z".into();
        }
        let (rv, text) = state.stamp(resource, &mut object);
        let objects = state.objects.get_mut(resource).unwrap();
        let kind =
            if objects.insert(key, Arc::clone(&text)).is_some() { "MODIFIED" } else { "ADDED" };
        state.history.push(Change { rv, resource, kind, object: text });
        drop(state);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Many objects at once without history (the state before any watch starts: a server
    /// that has been up for a while). Open watches are not told.
    pub fn preload(&self, resource: &'static str, objects: impl IntoIterator<Item = Value>) {
        let mut state = self.shared.state.lock().unwrap();
        for mut object in objects {
            let key = object_key(&object);
            let (_, text) = state.stamp(resource, &mut object);
            state.objects.get_mut(resource).unwrap().insert(key, text);
        }
        state.compacted = state.rv;
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &'static str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.shared.state.lock().unwrap();
        let text = state.objects[resource].get(&key_of(namespace, name))?.clone();
        serde_json::from_str(&text).ok()
    }

    /// Changes an object's labels (a MODIFIED event).
    pub fn set_labels(&self, resource: &'static str, namespace: &str, name: &str, labels: Value) {
        let mut object = self.get(resource, namespace, name).expect("the object exists");
        object["metadata"]["labels"] = labels;
        self.apply(resource, object);
    }

    /// Deletes an object (a DELETED event carrying its last state).
    pub fn delete(&self, resource: &'static str, namespace: &str, name: &str) {
        let mut state = self.shared.state.lock().unwrap();
        let Some(text) = state.objects.get_mut(resource).unwrap().remove(&key_of(namespace, name))
        else {
            return;
        };
        let mut object: Value = serde_json::from_str(&text).unwrap();
        let (rv, text) = state.stamp(resource, &mut object);
        state.history.push(Change { rv, resource, kind: "DELETED", object: text });
        drop(state);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Sends a DELETED event for an object without removing what is stored under its name
    /// (the late delete of an old pod whose name a new pod has taken).
    pub fn send_delete_event(&self, resource: &'static str, object: &Value) {
        let mut state = self.shared.state.lock().unwrap();
        let (rv, text) = state.stamp(resource, &mut object.clone());
        state.history.push(Change { rv, resource, kind: "DELETED", object: text });
        drop(state);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Replaces an object without any event (a change whose event was compacted away).
    pub fn replace_silently(&self, resource: &'static str, mut object: Value) {
        let mut state = self.shared.state.lock().unwrap();
        let key = object_key(&object);
        let (_, text) = state.stamp(resource, &mut object);
        state.objects.get_mut(resource).unwrap().insert(key, text);
    }

    /// Removes an object without any event (as if its delete was compacted away).
    pub fn remove_silently(&self, resource: &'static str, namespace: &str, name: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.objects.get_mut(resource).unwrap().remove(&key_of(namespace, name));
        state.rv += 1;
    }

    /// Compacts the history: every watch and list from an older resource version gets 410
    /// Gone, and open watches get an ERROR event with code 410.
    pub fn expire_history(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.rv += 1;
        state.compacted = state.rv;
        state.history.clear();
        drop(state);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Drops every open watch connection in the middle of a chunk.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|v| *v += 1);
    }

    /// Blackholes the server: connections are accepted and requests read, but nothing is
    /// answered and open watches fall silent (no events, no bookmarks) until [`Self::thaw`].
    pub fn freeze(&self) {
        self.shared.frozen.send_replace(true);
    }

    /// Answers again: what was asked meanwhile is answered now.
    pub fn thaw(&self) {
        self.shared.frozen.send_replace(false);
    }

    /// Answers `/version` with 503 while `fails`; lists and watches still work.
    pub fn fail_version(&self, fails: bool) {
        self.shared.version_fails.store(fails, Ordering::SeqCst);
    }

    /// Answers every watch request with `status` (429, 503) for `duration`; lists still work.
    pub fn fail_watches_for(&self, status: u16, duration: Duration) {
        *self.shared.failing_watches.lock().unwrap() =
            Some((status, std::time::Instant::now() + duration));
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(stop) = self.stop_runtime.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl State {
    /// Gives `object` the next resource version, its kind and API version; returns the version
    /// and the object as stored and streamed.
    fn stamp(&mut self, resource: &'static str, object: &mut Value) -> (u64, Arc<str>) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = self.rv.to_string().into();
        object["kind"] = kind_name(resource).into();
        object["apiVersion"] = "v1".into();
        (self.rv, serde_json::to_string(object).unwrap().into())
    }
}

fn key_of(namespace: &str, name: &str) -> String {
    if namespace.is_empty() { name.to_string() } else { format!("{namespace}/{name}") }
}

fn object_key(object: &Value) -> String {
    let meta = &object["metadata"];
    key_of(meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""))
}

// ---------------------------------------------------------------------------------------------
// Pods, namespaces and nodes as the API server would store them (with the noise real
// objects carry, so that the client has something to skip).

/// A running pod with the given addresses (IPv4 and/or IPv6) and labels.
pub fn pod(namespace: &str, name: &str, ips: &[&str], labels: Value) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T11:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                 "uid": "11111111-2222-3333-4444-555555555555", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]
        },
        "spec": {
            "nodeName": "node-1", "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "ports": [{"containerPort": 9080, "protocol": "TCP"}]}]
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.0.10",
            "podIP": ips.first().copied().unwrap_or(""),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": "True"}],
            "startTime": "2024-05-01T12:00:01Z"
        }
    })
}

/// The same pod with a creation time and UID of its own.
pub fn pod_created(
    namespace: &str,
    name: &str,
    ip: &str,
    labels: Value,
    created: &str,
    uid: &str,
) -> Value {
    let mut pod = pod(namespace, name, &[ip], labels);
    pod["metadata"]["creationTimestamp"] = created.into();
    pod["metadata"]["uid"] = uid.into();
    pod
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

pub fn node(name: &str, internal_ip: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": "aws:///eu-west-1a/i-0123456789abcdef0"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": format!("{name}.ec2.internal")}
            ],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP.

struct Request {
    path: String,
    query: HashMap<String, String>,
    authorization: Option<String>,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_request(reader: &mut Connection) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
    let query = query_text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request { path: path.to_string(), query, authorization })
}

async fn respond(stream: &mut Connection, status: u16, body: &str) -> bool {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await.is_ok()
        && stream.write_all(body.as_bytes()).await.is_ok()
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

async fn serve_connection(shared: Arc<Shared>, stream: Box<dyn Io>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        let mut logged = request.path.clone();
        let mut query: Vec<_> = request.query.iter().collect();
        query.sort();
        for (i, (k, v)) in query.iter().enumerate() {
            logged.push(if i == 0 { '?' } else { '&' });
            logged.push_str(&format!("{k}={v}"));
        }
        shared.requests.lock().unwrap().push(logged);
        shared.thawed().await;
        let check = shared.token.lock().unwrap().clone();
        if let Some(TokenCheck(accept)) = check
            && !request
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| accept(t))
        {
            let body = status_json(401, "Unauthorized", "Unauthorized");
            if !respond(&mut stream, 401, &body).await {
                return;
            }
            continue;
        }
        let ok = match request.path.as_str() {
            "/version" if shared.version_fails.load(Ordering::SeqCst) => {
                let body = status_json(503, "ServiceUnavailable", "version unavailable");
                respond(&mut stream, 503, &body).await
            }
            "/version" => {
                let body = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                                  "platform": "linux/amd64"});
                respond(&mut stream, 200, &body.to_string()).await
            }
            "/api" => {
                let body = json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": "127.0.0.1"}]});
                respond(&mut stream, 200, &body.to_string()).await
            }
            "/apis" => {
                let body = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []});
                respond(&mut stream, 200, &body.to_string()).await
            }
            "/api/v1" => respond(&mut stream, 200, &discovery().to_string()).await,
            path => {
                match path.strip_prefix("/api/v1/").and_then(|r| KINDS.iter().find(|k| **k == r)) {
                    Some(resource) => {
                        let watch = matches!(
                            request.query.get("watch").map(String::as_str),
                            Some("true" | "1")
                        );
                        if watch {
                            serve_watch(&shared, &mut stream, resource, &request).await
                        } else {
                            serve_list(&shared, &mut stream, resource, &request).await
                        }
                    }
                    None => {
                        let body = status_json(404, "NotFound", "the server could not find it");
                        respond(&mut stream, 404, &body).await
                    }
                }
            }
        };
        if !ok {
            return;
        }
    }
}

fn discovery() -> Value {
    let resource = |name: &str, kind: &str, namespaced: bool, short: &[&str]| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
               "kind": kind, "verbs": ["get", "list", "watch"], "shortNames": short})
    };
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        resource("pods", "Pod", true, &["po"]),
        resource("namespaces", "Namespace", false, &["ns"]),
        resource("nodes", "Node", false, &["no"]),
    ]})
}

async fn serve_list(
    shared: &Shared,
    stream: &mut Connection,
    resource: &'static str,
    request: &Request,
) -> bool {
    let delay = *shared.list_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = list_response(&mut shared.state.lock().unwrap(), resource, request);
    respond(stream, status, &body).await
}

/// A list page: the status and body.
fn list_response(state: &mut State, resource: &'static str, request: &Request) -> (u16, String) {
    let limit = request.query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let asked_rv = request.query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok());
    if let Some(asked) = asked_rv.filter(|rv| *rv != 0)
        && asked < state.compacted
    {
        let message = format!("too old resource version: {asked} ({})", state.compacted);
        return (410, status_json(410, "Expired", &message));
    }
    let continued = request.query.get("continue").filter(|c| !c.is_empty());
    let (id, rv, items, offset) = match continued {
        Some(token) => {
            let (id, offset) = token.split_once('-').unwrap_or(("", ""));
            let id = id.parse::<u64>().unwrap_or(u64::MAX);
            let Some((rv, items)) = state.pages.get(&id).cloned() else {
                return (410, status_json(410, "Expired", "the continue token has expired"));
            };
            (Some(id), rv, items, offset.parse::<usize>().unwrap_or(0))
        }
        None => {
            let items: Vec<Arc<str>> = state.objects[resource].values().cloned().collect();
            (None, state.rv, Arc::new(items), 0)
        }
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        let id = id.unwrap_or_else(|| {
            state.next_page_token += 1;
            state.pages.insert(state.next_page_token, (rv, Arc::clone(&items)));
            state.next_page_token
        });
        metadata["continue"] = format!("{id}-{end}").into();
        metadata["remainingItemCount"] = (items.len() - end).into();
    }
    let mut body = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"v1\",\"metadata\":{metadata},\"items\":[",
        kind_name(resource)
    );
    for (i, item) in items[offset.min(end)..end].iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("]}");
    (200, body)
}

/// Writes one chunk of a chunked body.
async fn write_chunk(stream: &mut Connection, data: &[u8]) -> bool {
    let mut chunk = Vec::with_capacity(data.len() + 16);
    let _ = write!(chunk, "{:x}\r\n", data.len());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    stream.get_mut().write_all(&chunk).await.is_ok()
}

fn event_line(kind: &str, object: &str) -> Vec<u8> {
    format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n").into_bytes()
}

async fn serve_watch(
    shared: &Shared,
    stream: &mut Connection,
    resource: &'static str,
    request: &Request,
) -> bool {
    /// Counts the watch as open while it lives (also when its task is aborted).
    struct Open<'a>(&'a AtomicU64);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // Subscribed before counted, so a test that saw it open reaches it.
    let failing = *shared.failing_watches.lock().unwrap();
    if let Some((status, until)) = failing.filter(|(_, until)| std::time::Instant::now() < *until) {
        let reason = if status == 429 { "TooManyRequests" } else { "ServiceUnavailable" };
        let wait = until.saturating_duration_since(std::time::Instant::now()).as_secs() + 1;
        let message = format!("the server is busy, retry in {wait}s");
        return respond(stream, status, &status_json(status, reason, &message)).await;
    }
    let changed = shared.changed.subscribe();
    let dropped = shared.drop_watches.subscribe();
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    let _open = Open(&shared.open_watches);
    stream_watch(shared, stream, resource, request, changed, dropped).await
}

async fn stream_watch(
    shared: &Shared,
    stream: &mut Connection,
    resource: &'static str,
    request: &Request,
    mut changed: tokio::sync::watch::Receiver<u64>,
    mut dropped: tokio::sync::watch::Receiver<u64>,
) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if stream.get_mut().write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let bookmarks = request.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    let interval = *shared.bookmark_interval.lock().unwrap();
    let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // Where this watch stands; "" and "0" mean "from now, with every object as ADDED".
    let asked = request.query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok());
    let mut last = match asked.filter(|rv| *rv != 0) {
        Some(rv) => rv,
        None => {
            let (rv, objects) = {
                let state = shared.state.lock().unwrap();
                (state.rv, state.objects[resource].values().cloned().collect::<Vec<_>>())
            };
            for object in objects {
                if !write_chunk(stream, &event_line("ADDED", &object)).await {
                    return false;
                }
            }
            rv
        }
    };
    let mut frozen = shared.frozen.subscribe();
    loop {
        if *frozen.borrow_and_update() {
            // Silent while frozen: the deadline passes unnoticed, as on a blackholed link.
            tokio::select! {
                _ = frozen.wait_for(|frozen| !frozen) => {}
                _ = dropped.changed() => return false,
            }
            continue;
        }
        changed.borrow_and_update();
        let (pending, now_rv, gone) = {
            let state = shared.state.lock().unwrap();
            if last < state.compacted {
                (Vec::new(), state.rv, Some(state.compacted))
            } else {
                let start = state.history.partition_point(|c| c.rv <= last);
                let pending: Vec<Change> = state.history[start..]
                    .iter()
                    .filter(|c| c.resource == resource)
                    .cloned()
                    .collect();
                (pending, state.rv, None)
            }
        };
        if let Some(compacted) = gone {
            let status = status_json(
                410,
                "Expired",
                &format!("too old resource version: {last} ({compacted})"),
            );
            let ok = write_chunk(stream, &event_line("ERROR", &status)).await;
            return ok && write_chunk(stream, b"").await;
        }
        for change in pending {
            if !write_chunk(stream, &event_line(change.kind, &change.object)).await {
                return false;
            }
            last = change.rv;
        }
        let seen = now_rv;
        tokio::select! {
            biased;
            _ = dropped.changed() => {
                // A chunk that promises more than it delivers, then the connection is gone.
                let _ = stream.get_mut().write_all(b"100\r\n{\"type\":\"MODIFIED\",\"obj").await;
                let _ = stream.get_mut().shutdown().await;
                return false;
            }
            _ = changed.changed() => {}
            _ = frozen.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return write_chunk(stream, b"").await;
            }
            _ = bookmark.tick(), if bookmarks => {
                last = last.max(seen);
                let object = json!({"kind": kind_name(resource), "apiVersion": "v1",
                                    "metadata": {"resourceVersion": last.to_string()}});
                if !write_chunk(stream, &event_line("BOOKMARK", &object.to_string())).await {
                    return false;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Contested addresses: pods being deleted.

/// `pod` being deleted: `metadata.deletionTimestamp` set (and the grace period the API server
/// writes with it), as it stays while its node does not confirm the delete.
pub fn terminating(mut pod: Value, at: &str) -> Value {
    pod["metadata"]["deletionTimestamp"] = at.into();
    pod["metadata"]["deletionGracePeriodSeconds"] = 30.into();
    pod
}

impl FakeApiServer {
    /// Starts deleting a stored pod: a MODIFIED event with its `deletionTimestamp` set, the
    /// pod kept (as for a pod on a node that stopped answering).
    pub fn start_deleting(&self, namespace: &str, name: &str) {
        let pod = self.get("pods", namespace, name).expect("the pod exists");
        self.apply("pods", terminating(pod, "2024-05-01T13:00:00Z"));
    }
}
