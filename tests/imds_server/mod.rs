//! A fake EC2 instance metadata service (IMDSv2 only) on loopback, for `labelwall eks-token`:
//! PUT /latest/api/token (requires the TTL header) hands out a session token; every GET
//! needs it (401 otherwise), as the real service does with IMDSv2 required. Serves the role
//! list, the role's credentials and the region; records every request.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub const ACCESS_KEY_ID: &str = "ASIAFAKEINSTANCEROLE";
pub const SECRET_ACCESS_KEY: &str = "fake/instance+role/secret";
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEFAKE/session+token==";
pub const REGION: &str = "eu-west-1";

#[derive(Debug)]
struct State {
    /// The attached role, or none (404 on the role list).
    role: Option<String>,
    /// `METHOD path` of every request, with ` (no token)` when a GET lacked a valid one.
    requests: Vec<String>,
    issued: Vec<String>,
    /// The credentials' `Expiration`.
    expiration: String,
}

#[derive(Debug)]
pub struct FakeImds {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeImds {
    /// A server whose instance has the role `labelwall-appliance`.
    pub fn start() -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            role: Some("labelwall-appliance".into()),
            requests: Vec::new(),
            issued: Vec::new(),
            expiration: "2099-01-01T00:00:00Z".into(),
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(&shared, stream));
            }
        });
        FakeImds { addr, state }
    }

    /// `http://127.0.0.1:PORT`, for AWS_EC2_METADATA_SERVICE_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn detach_role(&self) {
        self.state.lock().unwrap().role = None;
    }

    /// The `Expiration` of the role's credentials (RFC 3339).
    pub fn set_expiration(&self, expiration: &str) {
        self.state.lock().unwrap().expiration = expiration.to_string();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(state: &Mutex<State>, stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut state = state.lock().unwrap();
    let (status, body) = if method == "PUT" && path == "/latest/api/token" {
        state.requests.push(format!("{method} {path}"));
        match header("x-aws-ec2-metadata-token-ttl-seconds") {
            Some(ttl) if ttl.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) => {
                let token = format!("imds-session-{}", state.issued.len() + 1);
                state.issued.push(token.clone());
                (200, token)
            }
            _ => (400, String::new()),
        }
    } else if method != "GET" {
        state.requests.push(format!("{method} {path}"));
        (405, String::new())
    } else if !header("x-aws-ec2-metadata-token").is_some_and(|t| state.issued.contains(&t)) {
        state.requests.push(format!("{method} {path} (no token)"));
        (401, String::new())
    } else {
        state.requests.push(format!("{method} {path}"));
        const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
        match (path, &state.role) {
            ("/latest/meta-data/placement/region", _) => (200, REGION.to_string()),
            (ROLES, Some(role)) => (200, role.clone()),
            (path, Some(role)) if path.strip_prefix(ROLES) == Some(role.as_str()) => {
                let body = serde_json::json!({
                    "Code": "Success", "LastUpdated": "2026-11-27T15:00:00Z", "Type": "AWS-HMAC",
                    "AccessKeyId": ACCESS_KEY_ID, "SecretAccessKey": SECRET_ACCESS_KEY,
                    "Token": SESSION_TOKEN, "Expiration": state.expiration});
                (200, body.to_string())
            }
            _ => (404, "<?xml version=\"1.0\"?><title>404 - Not Found</title>".to_string()),
        }
    };
    drop(state);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}
