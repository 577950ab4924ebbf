//! The connection to one cluster's API server: the client that the watchers and the probe
//! share, what answered and when, and fresh credentials without a restart. Must not depend on
//! the store, the claims or the watch loop: they ask here whether the API server answers.
//!
//! The client the watchers hold is a thin one whose every request goes to the *current* inner
//! client, built from the kubeconfig (exec plugins included) or the in-cluster service
//! account with the source's `timeout` as read timeout. When the API server refuses the
//! credentials (401, 403) or stops answering, [`Connection::renew`] reads the configuration
//! again and swaps the inner client: a rewritten token, a client certificate from an exec
//! plugin, a rotated authority take effect at once, and the watchers keep their resource
//! versions (no relist). Every answer is recorded in [`Evidence`]: 2xx answers per kind (a
//! list page, a watch start) and to the probe are what tells a live API server from a silent
//! one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::{Request, Response, StatusCode};
use kube::client::Body;
use tokio::time::Instant;

use super::objects::Kind;
use crate::config::KubernetesSource;

/// What a request asked: a kind's list or watch, or the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    Kind(Kind),
    Probe,
}

impl Asked {
    const COUNT: usize = Kind::ALL.len() + 1;

    fn index(self) -> usize {
        match self {
            Asked::Kind(kind) => kind as usize,
            Asked::Probe => Kind::ALL.len(),
        }
    }

    /// What a request for `path` asks (the watchers ask for every namespace at once).
    fn of_path(path: &str) -> Option<Asked> {
        match path {
            "/api/v1/pods" => Some(Asked::Kind(Kind::Pods)),
            "/api/v1/namespaces" => Some(Asked::Kind(Kind::Namespaces)),
            "/api/v1/nodes" => Some(Asked::Kind(Kind::Nodes)),
            "/version" => Some(Asked::Probe),
            _ => None,
        }
    }
}

/// When the API server last answered each question, and whether it refused the credentials.
/// Written by the requests, read by the watch loop and the prober.
#[derive(Debug)]
pub(super) struct Evidence {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last good answer (0: none yet, counted from `epoch`).
    answered: [AtomicU64; Asked::COUNT],
    /// A 401 or 403 since the credentials were last renewed.
    refused: AtomicBool,
}

impl Evidence {
    fn new() -> Evidence {
        Evidence {
            epoch: Instant::now(),
            answered: Default::default(),
            refused: AtomicBool::new(false),
        }
    }

    /// `asked` got a good answer now (a 2xx, or an event of the kind's watch).
    pub(super) fn answered(&self, asked: Asked) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.answered[asked.index()].fetch_max(ms, Ordering::Relaxed);
    }

    /// When `asked` last got a good answer (the start, before any).
    pub(super) fn last_answer(&self, asked: Asked) -> Instant {
        self.epoch + Duration::from_millis(self.answered[asked.index()].load(Ordering::Relaxed))
    }

    /// The question that has gone unanswered longest, and since when.
    pub(super) fn oldest(&self) -> (Asked, Instant) {
        Kind::ALL
            .map(Asked::Kind)
            .into_iter()
            .chain([Asked::Probe])
            .map(|asked| (asked, self.last_answer(asked)))
            .min_by_key(|(_, at)| *at)
            .expect("there are questions")
    }

    fn on_status(&self, asked: Option<Asked>, status: StatusCode) {
        if status.is_success() {
            if let Some(asked) = asked {
                self.answered(asked);
            }
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            self.refused.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the credentials were refused since the last renewal.
    pub(super) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The API connection of one cluster.
pub(super) struct Connection {
    source: KubernetesSource,
    current: Arc<ArcSwap<kube::Client>>,
    client: kube::Client,
    evidence: Arc<Evidence>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("cluster", &self.source.cluster).finish_non_exhaustive()
    }
}

impl Connection {
    /// Reads the configuration and builds the client; the error says what is wrong with it.
    pub(super) async fn open(source: &KubernetesSource) -> Result<Connection, String> {
        let inner = inner_client(source).await?;
        let namespace = inner.default_namespace().to_string();
        let current = Arc::new(ArcSwap::from_pointee(inner));
        let evidence = Arc::new(Evidence::new());
        let service = Swapping { current: current.clone(), evidence: evidence.clone() };
        Ok(Connection {
            source: source.clone(),
            current,
            client: kube::Client::new(service, namespace),
            evidence,
        })
    }

    /// The client to use: its requests always go out with the latest credentials.
    pub(super) fn client(&self) -> &kube::Client {
        &self.client
    }

    pub(super) fn evidence(&self) -> &Arc<Evidence> {
        &self.evidence
    }

    /// The source's `timeout`.
    pub(super) fn timeout(&self) -> Duration {
        self.source.timeout()
    }

    /// Reads the configuration again (kubeconfig, service account token and authority; exec
    /// plugins run again on the next request) and sends every later request with it. On an
    /// error the current client stays.
    pub(super) async fn renew(&self) -> Result<(), String> {
        let inner = inner_client(&self.source).await?;
        self.current.store(Arc::new(inner));
        self.evidence.refused.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the API server its version, waiting at most `wait`: whether it answered.
    pub(super) async fn probe(&self, wait: Duration) -> bool {
        matches!(tokio::time::timeout(wait, self.client.apiserver_version()).await, Ok(Ok(_)))
    }
}

/// A client from the kubeconfig file (exec credential plugins included) or the in-cluster
/// service account, whose reads wait at most the source's `timeout`.
async fn inner_client(source: &KubernetesSource) -> Result<kube::Client, String> {
    let mut config = match &source.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("the kubeconfig {} is not usable: {e}", path.display()))?
        }
        None => {
            kube::Config::incluster().map_err(|e| format!("no in-cluster service account: {e}"))?
        }
    };
    // A silent API server must not hold a list or a watch longer than this (the watches end
    // before it on their own: see `watch::stream`).
    let timeout = source.timeout();
    config.read_timeout = Some(timeout);
    config.connect_timeout = Some(config.connect_timeout.map_or(timeout, |t| t.min(timeout)));
    // kube's own retry of 429/503/504 (up to 15 tries, waits growing to minutes) would hide a
    // control-plane rollout from the watch loop; `retry` paces the watchers instead, and the
    // error is seen and counted.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| format!("cannot build an API client: {e}"))
}

/// The service under the watchers' client: each request goes to the current inner client, and
/// its answer is recorded.
#[derive(Clone)]
struct Swapping {
    current: Arc<ArcSwap<kube::Client>>,
    evidence: Arc<Evidence>,
}

impl tower_service::Service<Request<Body>> for Swapping {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let client = self.current.load_full();
        let evidence = self.evidence.clone();
        let asked = Asked::of_path(request.uri().path());
        Box::pin(async move {
            let response = client.send(request).await?;
            evidence.on_status(asked, response.status());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_apart_by_path() {
        assert_eq!(Asked::of_path("/api/v1/pods"), Some(Asked::Kind(Kind::Pods)));
        assert_eq!(Asked::of_path("/api/v1/namespaces"), Some(Asked::Kind(Kind::Namespaces)));
        assert_eq!(Asked::of_path("/api/v1/nodes"), Some(Asked::Kind(Kind::Nodes)));
        assert_eq!(Asked::of_path("/version"), Some(Asked::Probe));
        assert_eq!(Asked::of_path("/api/v1/namespaces/a/pods"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_answer_is_the_question_silent_longest() {
        let evidence = Evidence::new();
        let start = evidence.epoch;
        tokio::time::advance(Duration::from_secs(2)).await;
        for asked in [Asked::Kind(Kind::Pods), Asked::Kind(Kind::Nodes), Asked::Probe] {
            evidence.on_status(Some(asked), StatusCode::OK);
        }
        // Namespaces never answered: silent since the start.
        assert_eq!(evidence.oldest(), (Asked::Kind(Kind::Namespaces), start));
        evidence.on_status(Some(Asked::Kind(Kind::Namespaces)), StatusCode::OK);
        let (_, at) = evidence.oldest();
        assert_eq!(at, start + Duration::from_secs(2));
        // An error is no answer; a refusal is remembered until renewed.
        tokio::time::advance(Duration::from_secs(1)).await;
        evidence.on_status(Some(Asked::Probe), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(evidence.last_answer(Asked::Probe), start + Duration::from_secs(2));
        assert!(!evidence.refused());
        evidence.on_status(Some(Asked::Kind(Kind::Pods)), StatusCode::UNAUTHORIZED);
        assert!(evidence.refused());
    }
}
