//! `labelwall eks-token`: the native EKS token. Cross-checked byte for byte against botocore's
//! presigner (what `aws eks get-token` runs), then run as a real process against a fake
//! IMDSv2 server on loopback (instance-role credentials, region), with environment
//! credentials, and failing with clear messages. Nothing here reaches AWS.

mod imds_server;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imds_server::FakeImds;
use labelwall::eks::{self, Credentials, sigv4};

const BOTOCORE_VERSION: &str = "1.35.99";

/// The Python with botocore that tests/run.sh installs (LABELWALL_BOTOCORE_PYTHON, else its
/// default place). Missing is a failure, not a skip: the cross-check is the proof.
fn botocore_python() -> String {
    let python = std::env::var("LABELWALL_BOTOCORE_PYTHON").ok().unwrap_or_else(|| {
        let cache = std::env::var("LABELWALL_CI_CACHE").ok().unwrap_or_else(|| {
            let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| {
                format!("{}/.cache", std::env::var("HOME").unwrap_or_default())
            });
            format!("{base}/labelwall-ci")
        });
        format!("{cache}/botocore-{BOTOCORE_VERSION}/bin/python")
    });
    let works = Command::new(&python)
        .args(["-c", "import botocore"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "botocore is not installed at {python}: run tests/run.sh (it installs botocore \
         {BOTOCORE_VERSION} from PyPI into a virtualenv) or set LABELWALL_BOTOCORE_PYTHON"
    );
    python
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn botocore_makes_the_same_tokens_as_labelwall() {
    let python = botocore_python();
    let with_token = Credentials {
        access_key_id: "ASIAEXAMPLEEXAMPLE01".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: Some("IQoJb3JpZ2luX2VjEB4a/Cl+us=east+1//session=token".into()),
    };
    let without_token = Credentials { session_token: None, ..with_token.clone() };
    let cases = [
        ("prod", "eu-west-1", &with_token, 1_795_789_230_u64),
        ("my-cluster.example", "us-east-1", &without_token, 1_440_938_160),
        ("Cluster_Name-9", "ap-southeast-2", &with_token, 1_767_225_599),
        ("prod", "cn-north-1", &with_token, 1_800_000_000),
        ("prod", "us-gov-west-1", &without_token, 1_709_164_800),
    ];
    let input: Vec<serde_json::Value> = cases
        .iter()
        .map(|(cluster, region, credentials, time)| {
            serde_json::json!({
                "access_key_id": credentials.access_key_id,
                "secret_access_key": credentials.secret_access_key,
                "session_token": credentials.session_token,
                "region": region, "cluster": cluster,
                "time": sigv4::amz_dates(*time).1,
            })
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/eks/botocore_presign.py");
    let mut child = Command::new(&python)
        .arg(script)
        // No profile, no credentials file, no IMDS: botocore signs with what it is given.
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answers: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answers.len(), cases.len());
    for ((cluster, region, credentials, time), answer) in cases.iter().zip(&answers) {
        let ours = eks::presigned_url(cluster, region, credentials, *time);
        assert_eq!(ours, answer["url"].as_str().unwrap(), "{cluster} in {region}");
        assert_eq!(
            eks::token(cluster, region, credentials, *time),
            answer["token"].as_str().unwrap()
        );
    }
}

/// Runs `labelwall eks-token ARGS` with only `env` in its environment.
fn eks_token(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labelwall"))
        .arg("eks-token")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The ExecCredential printed, its token's URL and that URL's query.
fn parse_credential(output: &Output) -> (serde_json::Value, String, HashMap<String, String>) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let credential: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = credential["status"]["token"].as_str().unwrap();
    let encoded = token.strip_prefix("k8s-aws-v1.").expect(token);
    let url = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap();
    let query = url.split_once('?').unwrap().1;
    let query = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_string(), percent_decode(v))
        })
        .collect();
    (credential, url, query)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The signing time of a URL: the second within the last minute whose X-Amz-Date it has.
fn signing_time(query: &HashMap<String, String>, before: u64, after: u64) -> u64 {
    (before..=after)
        .find(|t| sigv4::amz_dates(*t).1 == query["X-Amz-Date"])
        .unwrap_or_else(|| panic!("X-Amz-Date {} is not now", query["X-Amz-Date"]))
}

#[test]
fn eks_token_prints_an_exec_credential_signed_with_the_instance_role() {
    let imds = FakeImds::start();
    let endpoint = imds.endpoint();
    let before = now();
    let output = eks_token(
        &["--cluster-name", "prod", "--region", "eu-west-1"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)],
    );
    let after = now();
    let (credential, url, query) = parse_credential(&output);
    assert_eq!(credential["kind"], "ExecCredential");
    assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1beta1");
    // Valid 15 minutes at EKS; reported as expiring 14 minutes from now.
    let expiry = credential["status"]["expirationTimestamp"].as_str().unwrap();
    assert!(
        (before + 840..=after + 840).any(|t| sigv4::rfc3339(t) == expiry),
        "{expiry} is not 14 minutes from now"
    );
    assert!(url.starts_with(
        "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
    ));
    let time = signing_time(&query, before, after);
    let date = &sigv4::amz_dates(time).0;
    assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(
        query["X-Amz-Credential"],
        format!("{}/{date}/eu-west-1/sts/aws4_request", imds_server::ACCESS_KEY_ID)
    );
    assert_eq!(query["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
    assert_eq!(query["X-Amz-Expires"], "60");
    assert_eq!(query["X-Amz-Security-Token"], imds_server::SESSION_TOKEN);
    // The signature is the instance role's (the library is proven against botocore above).
    let role = Credentials {
        access_key_id: imds_server::ACCESS_KEY_ID.into(),
        secret_access_key: imds_server::SECRET_ACCESS_KEY.into(),
        session_token: Some(imds_server::SESSION_TOKEN.into()),
    };
    assert_eq!(url, eks::presigned_url("prod", "eu-west-1", &role, time));
    // IMDSv2: a session token first, then the role list and the role, each with the token.
    assert_eq!(
        imds.requests(),
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/labelwall-appliance",
        ]
    );

    // Without --region (and no AWS_REGION): the instance's region, from IMDS; the client's
    // apiVersion from KUBERNETES_EXEC_INFO is answered in kind.
    let info = r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#;
    let output = eks_token(
        &["--cluster-name", "prod"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint), ("KUBERNETES_EXEC_INFO", info)],
    );
    let (credential, url, _) = parse_credential(&output);
    assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1");
    assert!(url.starts_with(&format!("https://sts.{}.amazonaws.com/", imds_server::REGION)));
    assert!(imds.requests().contains(&"GET /latest/meta-data/placement/region".to_string()));
    assert!(!imds.requests().iter().any(|r| r.contains("no token")), "{:?}", imds.requests());

    // Role credentials expiring in 5 minutes: the token is reported expiring a minute before
    // them, so the client asks again in time.
    let expires = now() + 300;
    imds.set_expiration(&sigv4::rfc3339(expires));
    let output = eks_token(
        &["--cluster-name", "prod", "--region", "eu-west-1"],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)],
    );
    let (credential, _, _) = parse_credential(&output);
    assert_eq!(credential["status"]["expirationTimestamp"], sigv4::rfc3339(expires - 60));
}

#[test]
fn environment_credentials_come_before_the_instance_role() {
    let imds = FakeImds::start();
    let before = now();
    let output = eks_token(
        &["--cluster-name", "staging"],
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint()),
            ("AWS_REGION", "us-west-2"),
            ("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENTKEY01"),
            ("AWS_SECRET_ACCESS_KEY", "environment/secret"),
        ],
    );
    let after = now();
    let (_, url, query) = parse_credential(&output);
    assert!(query["X-Amz-Credential"].starts_with("AKIAENVIRONMENTKEY01/"));
    assert!(!query.contains_key("X-Amz-Security-Token"), "no session token: none in the URL");
    let time = signing_time(&query, before, after);
    let env = Credentials {
        access_key_id: "AKIAENVIRONMENTKEY01".into(),
        secret_access_key: "environment/secret".into(),
        session_token: None,
    };
    assert_eq!(url, eks::presigned_url("staging", "us-west-2", &env, time));
    assert_eq!(imds.requests(), Vec::<String>::new(), "IMDS is not asked");
}

/// Fails with exit 1 and one `error: ...` line containing every one of `parts`.
fn assert_fails(output: &Output, parts: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{stderr}");
    for part in parts {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }
}

#[test]
fn eks_token_says_what_is_missing() {
    let imds = FakeImds::start();
    imds.detach_role();
    let endpoint = imds.endpoint();
    let args = ["--cluster-name", "prod", "--region", "eu-west-1"];
    let output = eks_token(&args, &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]);
    assert_fails(&output, &["no IAM role is attached", "instance profile"]);

    // Nothing listening (not on EC2, or the hop limit drops IMDS's answers in a container).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}");
    let output = eks_token(&args, &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]);
    assert_fails(&output, &["no AWS_ACCESS_KEY_ID", &endpoint, "did not answer", "hop limit"]);

    // Environment credentials but no region anywhere, off EC2.
    let output = eks_token(
        &["--cluster-name", "prod"],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ],
    );
    assert_fails(&output, &["no --region, AWS_REGION or AWS_DEFAULT_REGION", "did not answer"]);

    let output = eks_token(&args, &[("AWS_ACCESS_KEY_ID", "AKIA")]);
    assert_fails(&output, &["AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"]);

    let output = eks_token(&["--cluster-name", "prod", "--region", "EU West"], &[]);
    assert_fails(&output, &["\"EU West\" is not an AWS region name"]);

    let output = eks_token(&["--region", "eu-west-1"], &[]);
    assert_eq!(output.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--cluster-name"));
}
