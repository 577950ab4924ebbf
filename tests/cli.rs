//! The command line as an operator meets it: exit codes and error messages.

use std::process::Command;

fn labelwall(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_labelwall")).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(dir.path().join("policy.yaml"), "default_action: deny\n").unwrap();
    std::fs::write(
        &path,
        "policy: policy.yaml\ndataplane:\n  listen: 0.0.0.0:6081\nadmin:\n  listen: 127.0.0.1:8080\n",
    )
    .unwrap();
    let (code, stdout, _) = labelwall(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn check_names_file_line_and_key_of_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(&path, "policy: p.yaml\ndataplane:\n  listen: 0.0.0.0:0\n  reply_port: 0\n")
        .unwrap();
    let (code, _, stderr) = labelwall(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let file = path.display().to_string();
    assert!(stderr.contains(&format!("{file}:3: dataplane.listen:")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:4: dataplane.reply_port:")), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn check_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(&path, "policy: p.yaml\nadmin:\n  listen: 127.0.0.1:8080\nadmn: {}\n").unwrap();
    let (code, _, stderr) = labelwall(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown field `admn`"), "{stderr}");
    assert!(stderr.contains(":4:"), "line of the unknown key: {stderr}");
}

#[test]
fn missing_config_is_one_clear_sentence() {
    let (code, _, stderr) = labelwall(&["check", "-c", "/nonexistent/labelwall.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/labelwall.yaml: cannot read the file"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_code_two() {
    assert_eq!(labelwall(&["frobnicate"]).0, 2);
    assert_eq!(labelwall(&["run"]).0, 2, "run without -c");
}

#[test]
fn run_refuses_a_port_in_use_with_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(dir.path().join("policy.yaml"), "default_action: allow\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "policy: policy.yaml\ndataplane:\n  listen: {}\nadmin:\n  listen: 127.0.0.1:0\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (code, _, stderr) = labelwall(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot bind UDP"), "{stderr}");
}

#[test]
fn run_refuses_an_open_file_limit_below_what_the_data_plane_may_need() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(dir.path().join("policy.yaml"), "default_action: allow\n").unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &path,
        format!(
            "policy: policy.yaml\ndataplane:\n  listen: 127.0.0.1:{port}\n  workers: 2\n  \
             send_sockets: 256\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    )
    .unwrap();
    // A hard limit of 300 open files: 2 workers with 256 send sockets each may need more.
    let output = Command::new("bash")
        .args(["-c", "ulimit -n 300 && exec \"$0\" run -c \"$1\""])
        .arg(env!("CARGO_BIN_EXE_labelwall"))
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dataplane.send_sockets (256)") && stderr.contains("the limit is 300"),
        "{stderr}"
    );
}

/// A config with `names` limits and a policy with `domains` groups, in a fresh directory.
fn named_egress(names: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(
        dir.path().join("policy.yaml"),
        "default_action: deny
groups:
  payments: {cidrs: [10.0.1.10/32]}
  nodes: {cidrs: [10.0.0.0/24]}
  stripe: {domains: [api.stripe.com]}
  aws: {domains: [\"*.amazonaws.com\"]}
  blocked: {cidrs: [198.51.100.0/24]}
rules:
  - {name: deny-blocked, from: [any], to: [blocked], action: deny}
  - {name: payments-to-stripe, from: [payments], to: [stripe], ports: [tcp/443], action: allow}
  - {name: nodes-to-aws, from: [nodes], to: [aws], ports: [tcp/443], action: allow}
",
    )
    .unwrap();
    std::fs::write(&path, format!("policy: policy.yaml\n{names}")).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

#[test]
fn check_reports_domains_groups_and_the_names_limits() {
    let (_dir, path) = named_egress("names:\n  timeout: 750ms\n");
    let (code, stdout, stderr) = labelwall(&["check", "-c", &path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "server names: 2 domains groups, 2 patterns; names.max_bytes 16384, \
             names.timeout 750ms, names.max_pending 16384 per worker"
        ),
        "{stdout}"
    );
}

#[test]
fn check_names_the_group_pattern_and_line_of_a_bad_domain_and_of_a_bad_names_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelwall.yaml");
    std::fs::write(
        dir.path().join("policy.yaml"),
        "default_action: deny\ngroups:\n  stripe:\n    domains:\n      - api.stripe.com\n      - \
         \"*.*.stripe.com\"\nrules: []\n",
    )
    .unwrap();
    std::fs::write(&path, "policy: policy.yaml\nnames:\n  max_pending: 0\n").unwrap();
    let (code, _, stderr) = labelwall(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{}:3: names.max_pending: 0 is outside 1 to 1048576 flows per worker",
            path.display()
        )),
        "{stderr}"
    );
    // The config is checked first; with it fixed, the policy's error.
    std::fs::write(&path, "policy: policy.yaml\n").unwrap();
    let (code, _, stderr) = labelwall(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let policy = dir.path().join("policy.yaml");
    assert!(
        stderr.contains(&format!(
            "{}:6: group `stripe`: domains[1]: `*.*.stripe.com`: `*` is allowed only as the \
             whole first label (`*.example.com`)",
            policy.display()
        )),
        "{stderr}"
    );
}

fn explain(path: &str, dst: &str, src: &str, extra: &[&str]) -> String {
    let mut args = vec!["explain", "-c", path, "--src", src, "--dst", dst, "--dport", "443"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = labelwall(&args);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

#[test]
fn explain_with_a_server_name_gives_the_verdict_for_that_name() {
    let (_dir, path) = named_egress("");
    let policy = std::path::Path::new(&path).with_file_name("policy.yaml");
    let text = explain(&path, "192.0.2.10", "10.0.1.10", &["--server-name", "API.Stripe.com."]);
    assert!(text.starts_with("verdict: allow\n"), "{text}");
    assert!(
        text.contains(&format!("rule:    payments-to-stripe ({}:10)", policy.display())),
        "{text}"
    );
    assert!(text.contains("name:    api.stripe.com (domains groups: stripe)\n"), "{text}");
    assert!(!text.contains("waits:"), "{text}");
    let text = explain(&path, "192.0.2.10", "10.0.1.10", &["--server-name", "evil.example"]);
    assert!(text.starts_with("verdict: deny\nrule:    default"), "{text}");
    assert!(text.contains("name:    evil.example (no domains group)\n"), "{text}");
    // An address rule before the names rules decides whatever the name.
    let text = explain(&path, "198.51.100.7", "10.0.1.10", &["--server-name", "api.stripe.com"]);
    assert!(text.starts_with("verdict: deny\nrule:    deny-blocked"), "{text}");

    let json = explain(
        &path,
        "192.0.2.10",
        "10.0.0.7",
        &["--server-name", "ec2.eu-west-1.amazonaws.com", "--json"],
    );
    let answer: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(answer["verdict"], "allow", "{json}");
    assert_eq!(answer["rule"], "nodes-to-aws", "{json}");
    assert_eq!(answer["rule_line"], 11, "{json}");
    assert_eq!(answer["server_name"]["name"], "ec2.eu-west-1.amazonaws.com", "{json}");
    assert_eq!(answer["server_name"]["groups"], serde_json::json!(["aws"]), "{json}");
    assert!(answer["waits_for_name"].is_null(), "{json}");
}

#[test]
fn explain_without_a_server_name_says_which_rule_waits_for_it_and_what_no_name_gets() {
    let (_dir, path) = named_egress("");
    let policy = std::path::Path::new(&path).with_file_name("policy.yaml");
    let text = explain(&path, "192.0.2.10", "10.0.1.10", &[]);
    assert!(
        text.starts_with("verdict: deny (if the flow shows no server name)\nrule:    default"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "waits:   for the server name: rule payments-to-stripe ({}:10) decides by it",
            policy.display()
        )),
        "{text}"
    );
    let json = explain(&path, "192.0.2.10", "10.0.1.10", &["--json"]);
    let answer: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(answer["verdict"], "deny", "{json}");
    assert_eq!(answer["rule"], "default", "{json}");
    assert_eq!(answer["waits_for_name"]["rule"], "payments-to-stripe", "{json}");
    assert_eq!(answer["waits_for_name"]["rule_line"], 10, "{json}");
    assert!(answer["server_name"].is_null(), "{json}");
    // Decided by address before any names rule, or by a port no names rule lists: no wait.
    for (dst, dport) in [("198.51.100.7", "443"), ("192.0.2.10", "80")] {
        let args = ["explain", "-c", &path, "--src", "10.0.1.10", "--dst", dst, "--dport", dport];
        let (code, text, _) = labelwall(&args);
        assert_eq!(code, 0);
        assert!(!text.contains("waits:") && !text.contains("no server name"), "{text}");
    }
}

/// `labelwall demo` as the README's first command runs it: every flow as expected, the named
/// egress judged by the ClientHello's server name.
fn assert_demo_passed(code: i32, stdout: &str, stderr: &str) {
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("flows got the expected verdict"), "{stdout}");
    let row = |flow: &str| {
        stdout.lines().find(|line| line.starts_with(flow)).unwrap_or_else(|| panic!("{stdout}"))
    };
    let allowed = row("productpage -> api.stripe.com tcp/443");
    assert!(allowed.contains("allow") && allowed.contains("productpage-to-payments"), "{allowed}");
    assert!(allowed.ends_with(" 4/4  ok"), "the ClientHello came back: {allowed}");
    let refused = row("productpage -> www.example.com");
    assert!(refused.contains("reject") && refused.contains("productpage-other-egress"));
    assert!(refused.ends_with(" 3/4 +2 rst  ok"), "a RST each way: {refused}");
    assert!(stdout.contains("labelwall_server_names_total{result=\"found\"} 3"), "{stdout}");
}

#[test]
fn demo_judges_every_flow_as_expected() {
    let (code, stdout, stderr) = labelwall(&["demo"]);
    assert_demo_passed(code, &stdout, &stderr);
    assert!(!stdout.contains("namespace of its own"), "root has CAP_NET_RAW: {stdout}");
}

#[test]
fn demo_runs_for_a_user_without_cap_net_raw_in_namespaces_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    // A copy the unprivileged user can execute (the build directory may not be open to it).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("labelwall");
    std::fs::copy(env!("CARGO_BIN_EXE_labelwall"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&binary)
        .arg("demo")
        .current_dir(dir.path())
        .env("TMPDIR", "/tmp")
        .output()
        .expect("setpriv (util-linux; tests/run.sh installs it)");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_demo_passed(output.status.code().unwrap_or(-1), &stdout, &stderr);
    assert!(stdout.contains("namespace of its own"), "{stdout}");
}
