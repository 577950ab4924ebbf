//! Where the signing credentials come from: the environment, else the EC2 instance role
//! through IMDSv2. A minimal HTTP/1.1 client over a tokio `TcpStream` talks to IMDS (plain
//! HTTP to a link-local address, a handful of small responses).

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let header = format!("X-aws-ec2-metadata-token-ttl-seconds: {IMDS_TOKEN_TTL}");
        match self.request("PUT", "/latest/api/token", &header).await? {
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
        self.request("GET", path, &format!("X-aws-ec2-metadata-token: {token}")).await
    }

    /// One request, retried on timeouts and connection errors and 5xx.
    async fn request(
        &self,
        method: &str,
        path: &str,
        header: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut last = String::new();
        for _ in 0..IMDS_ATTEMPTS {
            match tokio::time::timeout(IMDS_TIMEOUT, self.exchange(method, path, header)).await {
                Ok(Ok((status, body))) if status < 500 => return Ok((status, body)),
                Ok(Ok((status, body))) => last = format!("{status} {}", excerpt(&body)),
                Ok(Err(error)) => last = error.to_string(),
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

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        header: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        let host = &self.authority;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\nUser-Agent: labelwall/{}\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream).take(MAX_RESPONSE as u64 + 1).read_to_end(&mut response).await?;
        if response.len() > MAX_RESPONSE {
            return Err(invalid("response larger than 64 KiB"));
        }
        parse_response(&response)
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Status and body of a whole HTTP/1.1 response read to EOF (`Content-Length`, chunked, or
/// up to the end).
fn parse_response(response: &[u8]) -> std::io::Result<(u16, String)> {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(invalid("truncated HTTP response"));
    };
    let head = std::str::from_utf8(&response[..head_end])
        .map_err(|_| invalid("HTTP head is not UTF-8"))?;
    let mut body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("not an HTTP/1.x response"))?;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value.parse().map_err(|_| invalid("bad Content-Length"))?;
            body = body.get(..length).ok_or_else(|| invalid("body shorter than Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("truncated chunk"))?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| invalid("bad chunk"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or_else(|| invalid("truncated chunk"))?);
        data = data.get(size + 2..).ok_or_else(|| invalid("truncated chunk"))?;
    }
}

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

    #[test]
    fn responses_are_parsed_with_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX";
        assert_eq!(parse_response(plain).unwrap(), (200, "hello".into()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, "abcde".into()));
        assert!(parse_response(b"garbage").is_err());
    }
}
