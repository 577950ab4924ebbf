//! `labelwall eks-token`: an EKS bearer token made natively, as `aws eks get-token` makes it,
//! for a kubeconfig's exec credential plugin on appliances without the AWS CLI.
//! Must not depend on: kube, the rest of labelwall (`labelwall eks-token` runs as a kubeconfig
//! exec plugin, on its own).
//!
//! The token is `k8s-aws-v1.` + base64url (no padding) of a SigV4-presigned
//! `GET https://sts.REGION.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15` with the
//! signed header `x-k8s-aws-id: CLUSTER`, valid 60 s for signing and accepted by EKS for
//! 15 minutes. EKS calls STS with the URL and maps the caller's IAM role (access entry).

pub mod credentials;
pub mod sigv4;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use credentials::Found;
pub use sigv4::Credentials;

/// What every EKS token starts with.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The signed header that binds a token to one cluster.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// `X-Amz-Expires` of the presigned URL, as the AWS CLI and aws-iam-authenticator use.
const PRESIGN_EXPIRES: u64 = 60;
/// EKS accepts a token for 15 minutes; like the AWS CLI, report expiry one minute earlier.
pub const TOKEN_LIFETIME_SECS: u64 = 14 * 60;
const DEFAULT_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";

/// The STS host of a region (`amazonaws.com.cn` in the China partition).
pub fn sts_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("sts.{region}.amazonaws.com.cn")
    } else {
        format!("sts.{region}.amazonaws.com")
    }
}

/// The presigned STS GetCallerIdentity URL for `cluster`, signed at `time` (UNIX seconds).
pub fn presigned_url(cluster: &str, region: &str, credentials: &Credentials, time: u64) -> String {
    let host = sts_host(region);
    let request = sigv4::Presign {
        host: &host,
        path: "/",
        query: &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
        headers: &[(CLUSTER_ID_HEADER, cluster)],
        region,
        service: "sts",
        time,
        expires: PRESIGN_EXPIRES,
    };
    let signed = sigv4::presign(&request, credentials);
    format!("https://{host}/?{}", signed.query)
}

/// The bearer token for `cluster`.
pub fn token(cluster: &str, region: &str, credentials: &Credentials, time: u64) -> String {
    let url = presigned_url(cluster, region, credentials, time);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(url))
}

/// The ExecCredential a kubeconfig's exec plugin prints. `exec_info` is the
/// `KUBERNETES_EXEC_INFO` the client passed, whose `apiVersion` is answered in kind.
pub fn exec_credential(token: &str, expires: u64, exec_info: Option<&str>) -> serde_json::Value {
    let api_version = exec_info
        .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
        .and_then(|info| info["apiVersion"].as_str().map(str::to_string))
        .filter(|v| v.starts_with("client.authentication.k8s.io/"))
        .unwrap_or_else(|| DEFAULT_API_VERSION.to_string());
    serde_json::json!({
        "kind": "ExecCredential",
        "apiVersion": api_version,
        "spec": {},
        "status": {
            "expirationTimestamp": sigv4::rfc3339(expires),
            "token": token,
        }
    })
}

/// `labelwall eks-token`: resolves the region and credentials, prints the ExecCredential.
pub fn run(cluster: &str, region: Option<&str>) -> anyhow::Result<()> {
    let env = credentials::process_env;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start a runtime: {e}"))?;
    let (region, found) = runtime.block_on(async {
        let region = match region
            .map(str::to_string)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
        {
            Some(region) => region,
            None => {
                let imds = credentials::Imds::from_env(&env);
                let region = async { imds?.region().await };
                region.await.context("no --region, AWS_REGION or AWS_DEFAULT_REGION, and no region from the instance")?
            }
        };
        if !valid_region(&region) {
            anyhow::bail!("the region {region:?} is not an AWS region name (e.g. eu-west-1)");
        }
        let found = credentials::resolve(&env).await?;
        anyhow::Ok((region, found))
    })?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let token = token(cluster, &region, &found.credentials, now);
    let exec_info = env("KUBERNETES_EXEC_INFO");
    let expires = token_expiry(now, found.expires);
    let credential = exec_credential(&token, expires, exec_info.as_deref());
    println!("{credential}");
    Ok(())
}

/// When the client should ask again: 14 minutes from now, or a minute before the signing
/// credentials expire if that is sooner (a presigned URL dies with its temporary
/// credentials; IMDS hands out new ones at least 5 minutes before the old ones expire).
pub fn token_expiry(now: u64, credentials_expire: Option<u64>) -> u64 {
    let lifetime = now + TOKEN_LIFETIME_SECS;
    match credentials_expire {
        Some(expires) => lifetime.min(expires.saturating_sub(60)).max(now),
        None => lifetime,
    }
}

fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("SESSION/TOKEN+=".into()),
        }
    }

    #[test]
    fn the_token_is_the_base64url_of_a_presigned_get_caller_identity() {
        let time = 1_764_256_830; // 2025-11-27T15:20:30Z
        let token = token("prod", "eu-west-1", &credentials(), time);
        let encoded = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert!(!encoded.contains(['=', '+', '/']), "base64url without padding: {encoded}");
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap();
        let expected_start = "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20251127%2Feu-west-1%2Fsts%2Faws4_request\
             &X-Amz-Date=20251127T152030Z&X-Amz-Expires=60\
             &X-Amz-SignedHeaders=host%3Bx-k8s-aws-id\
             &X-Amz-Security-Token=SESSION%2FTOKEN%2B%3D&X-Amz-Signature=";
        assert!(url.starts_with(expected_start), "{url}");
        let signature = &url[expected_start.len()..];
        assert_eq!(signature.len(), 64);
        assert!(signature.bytes().all(|b| b.is_ascii_hexdigit()));
        // The cluster name is signed: another cluster, another signature.
        assert_ne!(token, super::token("staging", "eu-west-1", &credentials(), time));
    }

    #[test]
    fn china_regions_use_their_partitions_sts() {
        assert_eq!(sts_host("cn-north-1"), "sts.cn-north-1.amazonaws.com.cn");
        assert_eq!(sts_host("us-gov-west-1"), "sts.us-gov-west-1.amazonaws.com");
    }

    #[test]
    fn the_exec_credential_answers_in_the_clients_api_version() {
        let credential = exec_credential("k8s-aws-v1.abc", 0, None);
        assert_eq!(
            credential,
            serde_json::json!({"kind": "ExecCredential",
                "apiVersion": "client.authentication.k8s.io/v1beta1", "spec": {},
                "status": {"expirationTimestamp": "1970-01-01T00:00:00Z", "token": "k8s-aws-v1.abc"}})
        );
        let info = r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#;
        let credential = exec_credential("t", 0, Some(info));
        assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1");
    }

    #[test]
    fn the_token_expires_before_its_credentials() {
        assert_eq!(token_expiry(1000, None), 1000 + 840);
        assert_eq!(token_expiry(1000, Some(100_000)), 1000 + 840);
        assert_eq!(token_expiry(1000, Some(1300)), 1240);
        assert_eq!(token_expiry(1000, Some(500)), 1000);
    }

    #[test]
    fn region_names_are_checked() {
        assert!(valid_region("eu-west-1") && valid_region("us-gov-west-1"));
        assert!(!valid_region("") && !valid_region("eu west") && !valid_region("x/../y"));
    }
}
