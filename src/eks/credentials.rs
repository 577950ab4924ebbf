//! Where the signing credentials come from: the environment, else the EC2 instance role
//! through IMDSv2. IMDS is plain HTTP to a link-local address, a handful of small responses:
//! each request is one hyper HTTP/1.1 client connection (`hyper::client::conn::http1`) over a
//! tokio `TcpStream`, closed after the answer.
//! Must not depend on: kube, the rest of labelwall (`labelwall eks-token` runs as a kubeconfig
//! exec plugin, on its own).

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::sigv4::Credentials;

/// The SDK's variable for the IMDS endpoint (`http://host[:port]`); tests point it at a fake.
pub const IMDS_ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The SDK's switch for IMDS.
const IMDS_DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
/// Each IMDS request: connect and answer within this (the SDK's default is 1 s).
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
const IMDS_ATTEMPTS: u32 = 3;
/// IMDSv2 session token lifetime asked for; the command is short-lived.
const IMDS_TOKEN_TTL: &str = "60";
/// The PUT that asks for a session token carries its lifetime in this header.
const TOKEN_TTL_HEADER: HeaderName =
    HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
/// Every GET carries the session token in this header.
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");
/// The most of a response body read.
const MAX_RESPONSE: usize = 64 * 1024;

/// Credentials and where they came from (`environment` or `instance role NAME`).
#[derive(Debug, Clone)]
pub struct Found {
    pub credentials: Credentials,
    pub source: String,
    /// When temporary credentials stop working (UNIX seconds), if known: the role's
    /// `Expiration` from IMDS, or `AWS_CREDENTIAL_EXPIRATION`.
    pub expires: Option<u64>,
}

/// The environment's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
/// `AWS_SESSION_TOKEN`), else the instance role's from IMDSv2.
pub async fn resolve(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Found> {
    if let Some(credentials) = from_env(env)? {
        let expires =
            env("AWS_CREDENTIAL_EXPIRATION").and_then(|e| super::sigv4::parse_rfc3339(&e));
        return Ok(Found { credentials, source: "environment".into(), expires });
    }
    let context = "cannot get AWS credentials (no AWS_ACCESS_KEY_ID in the environment, so from the instance role)";
    let imds = Imds::from_env(env).context(context)?;
    let (role, credentials, expires) = imds.role_credentials().await.context(context)?;
    Ok(Found { credentials, source: format!("instance role {role}"), expires })
}

/// The process environment, empty values treated as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn from_env(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<Credentials>> {
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
            session_token: env("AWS_SESSION_TOKEN"),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use the instance role"
        ),
        (None, Some(_)) => anyhow::bail!(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both, or neither to use the instance role"
        ),
    }
}

/// The instance metadata service, IMDSv2 only (a session token for every use).
#[derive(Debug, Clone)]
pub struct Imds {
    /// `host:port` to connect to.
    authority: String,
    /// For messages: the endpoint as configured.
    endpoint: String,
}

impl Imds {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Imds> {
        if env(IMDS_DISABLED_VAR).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            anyhow::bail!(
                "no AWS credentials: AWS_ACCESS_KEY_ID is not set and {IMDS_DISABLED_VAR}=true turns off the instance role"
            );
        }
        let endpoint = env(IMDS_ENDPOINT_VAR).unwrap_or_else(|| IMDS_DEFAULT_ENDPOINT.into());
        let Some(rest) = endpoint.strip_prefix("http://") else {
            anyhow::bail!("{IMDS_ENDPOINT_VAR}={endpoint}: only http://HOST[:PORT] is supported");
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            anyhow::bail!("{IMDS_ENDPOINT_VAR}={endpoint}: expected http://HOST[:PORT]");
        }
        let has_port = match host.rfind(']') {
            Some(bracket) => host[bracket..].contains(':'),
            None => host.contains(':'),
        };
        let authority = if has_port { host.to_string() } else { format!("{host}:80") };
        Ok(Imds { authority, endpoint })
    }

    /// The attached role's name, its temporary credentials and when they expire.
    pub async fn role_credentials(&self) -> anyhow::Result<(String, Credentials, Option<u64>)> {
        let token = self.session_token().await?;
        const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
        let roles = match self.get(ROLES, &token).await? {
            (200, body) => body,
            (404, _) => anyhow::bail!(
                "no IAM role is attached to this instance (IMDS {} has no {ROLES}): attach an instance profile whose role has an EKS access entry",
                self.endpoint
            ),
            (status, body) => anyhow::bail!(
                "IMDS {} answered {status} to {ROLES}: {}",
                self.endpoint,
                excerpt(&body)
            ),
        };
        let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
            anyhow::bail!(
                "no IAM role is attached to this instance (IMDS {} lists none): attach an instance profile",
                self.endpoint
            );
        };
        let path = format!("{ROLES}{role}");
        let body = match self.get(&path, &token).await? {
            (200, body) => body,
            (status, body) => anyhow::bail!(
                "IMDS {} answered {status} for the credentials of role {role}: {}",
                self.endpoint,
                excerpt(&body)
            ),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct RoleCredentials {
            code: Option<String>,
            message: Option<String>,
            access_key_id: Option<String>,
            secret_access_key: Option<String>,
            token: Option<String>,
            expiration: Option<String>,
        }
        let parsed: RoleCredentials = serde_json::from_str(&body).map_err(|e| {
            anyhow::anyhow!("IMDS returned unreadable credentials for role {role}: {e}")
        })?;
        if let Some(code) = parsed.code.as_deref().filter(|c| *c != "Success") {
            anyhow::bail!(
                "IMDS has no usable credentials for role {role}: {code}: {}",
                parsed.message.unwrap_or_default()
            );
        }
        match (parsed.access_key_id, parsed.secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Ok((
                role.to_string(),
                Credentials { access_key_id, secret_access_key, session_token: parsed.token },
                parsed.expiration.as_deref().and_then(super::sigv4::parse_rfc3339),
            )),
            _ => anyhow::bail!(
                "IMDS credentials for role {role} lack AccessKeyId or SecretAccessKey"
            ),
        }
    }

    /// The instance's region (`/latest/meta-data/placement/region`).
    pub async fn region(&self) -> anyhow::Result<String> {
        let token = self.session_token().await?;
        match self.get("/latest/meta-data/placement/region", &token).await? {
            (200, body) if !body.trim().is_empty() => Ok(body.trim().to_string()),
            (status, body) => anyhow::bail!(
                "IMDS {} did not give the region ({status} {}): pass --region",
                self.endpoint,
                excerpt(&body)
            ),
        }
    }

    async fn session_token(&self) -> anyhow::Result<String> {
        match self
            .request(Method::PUT, "/latest/api/token", TOKEN_TTL_HEADER, IMDS_TOKEN_TTL)
            .await?
        {
            (200, token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
            (403, _) => anyhow::bail!(
                "IMDS {} refused a session token (403): the instance metadata service is turned off for this instance (http-endpoint disabled)",
                self.endpoint
            ),
            (status, body) => anyhow::bail!(
                "IMDS {} answered {status} to the IMDSv2 token request: {}",
                self.endpoint,
                excerpt(&body)
            ),
        }
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
        self.request(Method::GET, path, TOKEN_HEADER, token).await
    }

    /// One request, retried on timeouts and connection errors and 5xx.
    async fn request(
        &self,
        method: Method,
        path: &str,
        name: HeaderName,
        value: &str,
    ) -> anyhow::Result<(u16, String)> {
        let Ok(uri) = path.parse::<Uri>() else {
            anyhow::bail!("IMDS {}: {path:?} is not a request path", self.endpoint);
        };
        let Ok(value) = HeaderValue::from_str(value) else {
            anyhow::bail!("IMDS {}: a value unfit for the {name} header", self.endpoint);
        };
        let mut last = String::new();
        for _ in 0..IMDS_ATTEMPTS {
            let request = self.http_request(&method, &uri, &name, &value);
            match tokio::time::timeout(IMDS_TIMEOUT, self.exchange(request)).await {
                Ok(Ok((status, body))) if status < 500 => return Ok((status, body)),
                Ok(Ok((status, body))) => last = format!("{status} {}", excerpt(&body)),
                Ok(Err(error)) => last = format!("{error:#}"),
                Err(_) => last = format!("no answer within {IMDS_TIMEOUT:?}"),
            }
        }
        anyhow::bail!(
            "the instance metadata service {} did not answer {method} {path} ({last}; {IMDS_ATTEMPTS} attempts): \
             not on EC2, IMDS turned off, or (in a container) the instance's metadata hop limit is 1: \
             raise it with `aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2`",
            self.endpoint
        )
    }

    /// The request: no body, `Host`, the IMDS header, and `Connection: close` (one request
    /// per connection).
    fn http_request(
        &self,
        method: &Method,
        uri: &Uri,
        name: &HeaderName,
        value: &HeaderValue,
    ) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        // `authority` is the endpoint's `HOST:PORT`: were it unfit for a header, there would
        // be nothing to connect to either.
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, host);
        }
        headers.insert(name.clone(), value.clone());
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        request
    }

    /// Connects, sends `request` and reads the whole answer: status and body (at most 64 KiB,
    /// as text).
    async fn exchange(&self, request: Request<Empty<Bytes>>) -> anyhow::Result<(u16, String)> {
        let stream = TcpStream::connect(&self.authority).await?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let answer = async move {
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE).collect().await.map_err(
                |error| {
                    if error.is::<LengthLimitError>() {
                        anyhow::anyhow!("response larger than 64 KiB")
                    } else {
                        anyhow::Error::from_boxed(error)
                    }
                },
            )?;
            anyhow::Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
        };
        // The connection does the reading and writing, and ends after the answer (or on an
        // error, which it hands to `answer`); dropping both closes the socket.
        tokio::pin!(answer);
        tokio::select! {
            biased;
            answer = &mut answer => answer,
            _ = connection => answer.await,
        }
    }
}

const USER_AGENT: &str = concat!("labelwall/", env!("CARGO_PKG_VERSION"));

/// At most 200 characters of a body, on one line.
fn excerpt(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn environment_credentials_come_first_and_must_be_complete() {
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "SECRET")]);
        let found = from_env(&env).unwrap().unwrap();
        assert_eq!(found.access_key_id, "AKID");
        assert_eq!(found.session_token, None);
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "AKID")]);
        assert!(from_env(&env).unwrap_err().to_string().contains("AWS_SECRET_ACCESS_KEY is not"));
        assert!(from_env(&env_of(&[])).unwrap().is_none());
    }

    #[test]
    fn the_imds_endpoint_is_overridable() {
        let imds = Imds::from_env(&env_of(&[])).unwrap();
        assert_eq!(imds.authority, "169.254.169.254:80");
        let env = env_of(&[(IMDS_ENDPOINT_VAR, "http://127.0.0.1:8123/")]);
        assert_eq!(Imds::from_env(&env).unwrap().authority, "127.0.0.1:8123");
        let env = env_of(&[(IMDS_ENDPOINT_VAR, "http://[fd00:ec2::254]")]);
        assert_eq!(Imds::from_env(&env).unwrap().authority, "[fd00:ec2::254]:80");
        let env = env_of(&[(IMDS_ENDPOINT_VAR, "https://x")]);
        assert!(Imds::from_env(&env).is_err());
        let env = env_of(&[(IMDS_DISABLED_VAR, "true")]);
        assert!(
            Imds::from_env(&env).unwrap_err().to_string().contains("AWS_EC2_METADATA_DISABLED")
        );
    }

    /// A loopback IMDS that answers the connections it gets, in order, with `answers` (each
    /// written whole, then the connection closed) and hands back each request as received.
    async fn serve(answers: &[&[u8]]) -> (Imds, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let imds = Imds::from_env(&env_of(&[(IMDS_ENDPOINT_VAR, &endpoint)])).unwrap();
        let answers: Vec<Vec<u8>> = answers.iter().map(|a| a.to_vec()).collect();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buffer).await.unwrap() {
                        0 => break,
                        n => request.extend_from_slice(&buffer[..n]),
                    }
                }
                requests.push(String::from_utf8(request).unwrap());
                // The client may hang up first (an answer too long).
                let _ = stream.write_all(&answer).await;
            }
            requests
        });
        (imds, server)
    }

    const UA: &str = concat!("user-agent: labelwall/", env!("CARGO_PKG_VERSION"), "\r\n");

    #[tokio::test]
    async fn the_token_request_is_a_bodiless_put_with_the_ttl() {
        let (imds, server) =
            serve(&[b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nimds-token-1\nXX"]).await;
        assert_eq!(imds.session_token().await.unwrap(), "imds-token-1");
        let requests = server.await.unwrap();
        assert_eq!(
            requests,
            [format!(
                "PUT /latest/api/token HTTP/1.1\r\nhost: {}\r\n\
                 x-aws-ec2-metadata-token-ttl-seconds: 60\r\n{UA}accept: */*\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n",
                imds.authority
            )]
        );
    }

    #[tokio::test]
    async fn gets_carry_the_session_token_and_read_chunked_bodies() {
        let (imds, server) = serve(&[
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ntoken-1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\neu-we\r\n5;x=y\r\nst-1\n\r\n0\r\n\r\n",
        ])
        .await;
        assert_eq!(imds.region().await.unwrap(), "eu-west-1");
        let requests = server.await.unwrap();
        assert_eq!(
            requests[1],
            format!(
                "GET /latest/meta-data/placement/region HTTP/1.1\r\nhost: {}\r\n\
                 x-aws-ec2-metadata-token: token-1\r\n{UA}accept: */*\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n",
                imds.authority
            )
        );
    }

    #[tokio::test]
    async fn responses_are_read_with_length_or_chunks_or_to_the_end() {
        let (imds, server) = serve(&[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nup to the end",
            b"HTTP/1.0 403 Forbidden\r\n\r\n\xffno",
        ])
        .await;
        let get = |path| imds.get(path, "t");
        assert_eq!(get("/a").await.unwrap(), (200, "hello".into()));
        assert_eq!(get("/b").await.unwrap(), (404, "abcde".into()));
        assert_eq!(get("/c").await.unwrap(), (200, "up to the end".into()));
        assert_eq!(get("/d").await.unwrap(), (403, "\u{fffd}no".into()));
        assert_eq!(server.await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let (imds, server) = serve(&[
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nbusy",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        assert_eq!(imds.get("/x", "t").await.unwrap(), (200, "ok".into()));
        assert_eq!(server.await.unwrap().len(), 3);

        let busy: &[u8] =
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 10\r\n\r\nbusy\n busy";
        let (imds, server) = serve(&[busy, busy, busy]).await;
        let error = imds.get("/x", "t").await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "the instance metadata service {} did not answer GET /x (500 busy busy; 3 attempts): not on EC2",
                imds.endpoint
            )),
            "{error}"
        );
        assert!(error.ends_with("--http-put-response-hop-limit 2`"), "{error}");
        assert_eq!(server.await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn what_is_not_http_or_too_long_fails() {
        let (imds, server) = serve(&[b"garbage", b"garbage", b"garbage"]).await;
        let error = imds.get("/x", "t").await.unwrap_err().to_string();
        assert!(
            error.contains("did not answer GET /x (invalid HTTP version parsed; 3 attempts)"),
            "{error}"
        );
        server.await.unwrap();

        // hyper's error and its cause, as `{:#}` writes the chain.
        let short: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        let (imds, server) = serve(&[short, short, short]).await;
        let error = imds.get("/x", "t").await.unwrap_err().to_string();
        assert!(
            error.contains(
                "(error reading a body from connection: end of file before message length reached; 3 attempts)"
            ),
            "{error}"
        );
        server.await.unwrap();

        let most =
            [b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".as_slice(), &[b'a'; 65_536]]
                .concat();
        let (imds, server) = serve(&[&most]).await;
        let (status, body) = imds.get("/x", "t").await.unwrap();
        assert_eq!((status, body.len()), (200, 65_536));
        server.await.unwrap();

        let over = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'a'; 65_537]].concat();
        let (imds, server) = serve(&[&over, &over, &over]).await;
        let error = imds.get("/x", "t").await.unwrap_err().to_string();
        assert!(error.contains("(response larger than 64 KiB; 3 attempts)"), "{error}");
        server.await.unwrap();

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let endpoint = format!("http://{closed}");
        let imds = Imds::from_env(&env_of(&[(IMDS_ENDPOINT_VAR, &endpoint)])).unwrap();
        let error = imds.get("/x", "t").await.unwrap_err().to_string();
        assert!(error.contains("(Connection refused (os error 111); 3 attempts)"), "{error}");
    }

    #[tokio::test]
    async fn role_names_go_into_the_path_as_they_are() {
        // IAM role names are letters, digits and `+=,.@_-`.
        let (imds, server) = serve(&[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let path = "/latest/meta-data/iam/security-credentials/Role+a=b,c.d@e_f-9";
        assert_eq!(imds.get(path, "t").await.unwrap(), (200, String::new()));
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{requests:?}");
    }

    #[tokio::test]
    async fn values_unfit_for_http_are_refused_before_connecting() {
        let (imds, server) = serve(&[]).await;
        let error = imds.get("/x", "bad\r\ntoken").await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "IMDS {}: a value unfit for the x-aws-ec2-metadata-token header",
                imds.endpoint
            )
        );
        let error = imds.get("/a role", "t").await.unwrap_err().to_string();
        assert_eq!(error, format!("IMDS {}: \"/a role\" is not a request path", imds.endpoint));
        assert!(server.await.unwrap().is_empty());
    }
}
