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
