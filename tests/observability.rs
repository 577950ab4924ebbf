//! What operators watch labelwall with, against the real binary: the live `/metrics` passes
//! `promtool check metrics`; the shipped alerting rules (appliance/prometheus) pass `promtool
//! check rules` and their unit tests; every metric the rules and the Grafana dashboard
//! (appliance/grafana) query is one the appliance exports, so a renamed or missing metric
//! fails here instead of on an operator's blank panel or silent alert.
//! Needs `promtool` (Debian package `prometheus`; tests/run.sh installs it).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const RATINGS: [u8; 4] = [10, 0, 1, 15];
const OTHER: [u8; 4] = [10, 0, 1, 20];
const DB: [u8; 4] = [10, 20, 0, 5];
const INTERNET: [u8; 4] = [203, 0, 113, 10];

/// Metrics the rules and the dashboard may use that Prometheus makes, not the appliance.
const FROM_PROMETHEUS: &[&str] = &["up"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn rules_path() -> PathBuf {
    repo_file("appliance/prometheus/labelwall-alerts.yaml")
}

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool not found: install Debian's `prometheus` package (tests/run.sh does)"
    );
    Command::new("promtool")
}

/// Runs promtool with `args` (and `stdin`); panics with its output unless it succeeds and,
/// with `quiet`, says nothing at all.
fn run_promtool(args: &[&str], stdin: Option<&str>, quiet: bool) -> String {
    let mut child = promtool()
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed ({}):\n{said}", out.status);
    assert!(!quiet || said.trim().is_empty(), "promtool {args:?} complains:\n{said}");
    said
}

/// Polls `/metrics` until `sample` is at least `value`.
fn wait_for_metric(appliance: &Appliance, sample: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&appliance.metrics(), sample) < value {
        assert!(Instant::now() < deadline, "{sample} never reached {value}\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/metrics` of an appliance with two workers, a label source, the flow log on, that has
/// allowed, denied, rejected and dropped a malformed datagram (started once per run).
fn live_metrics() -> &'static str {
    static LIVE: OnceLock<String> = OnceLock::new();
    LIVE.get_or_init(|| {
        let peer = GwlbPeer::new(1);
        let appliance = Appliance::start_with(
            peer.reply_port(),
            2,
            labelwall::tools::demo::POLICY,
            Some(labelwall::tools::demo::INVENTORY),
            "flow_log: {path: flows.jsonl}\n",
            &[],
        );
        let allowed = gwlb_datagram(1, &ipv4_tcp(RATINGS, DB, 40001, 3306, true, false, 0));
        assert_eq!(peer.round_trip(0, appliance.listen, &allowed), allowed);
        let rejected = gwlb_datagram(2, &ipv4_tcp(OTHER, DB, 40002, 3306, true, false, 0));
        peer.send(0, appliance.listen, &rejected);
        assert!(peer.receive().is_some(), "a reject comes back");
        let denied = gwlb_datagram(3, &ipv4_tcp(OTHER, INTERNET, 40003, 443, true, false, 0));
        peer.send(0, appliance.listen, &denied);
        let mut malformed = gwlb_datagram(4, &ipv4_tcp(OTHER, DB, 40004, 3306, true, false, 0));
        malformed[0] |= 0x40; // GENEVE version 1
        peer.send(0, appliance.listen, &malformed);
        for verdict in ["allow", "reject", "deny"] {
            wait_for_metric(
                &appliance,
                &format!("labelwall_packets_total{{verdict=\"{verdict}\"}}"),
                1,
            );
        }
        wait_for_metric(
            &appliance,
            r#"labelwall_drops_total{class="malformed_geneve",reason="geneve_version"}"#,
            1,
        );
        wait_for_metric(&appliance, r#"labelwall_flow_log_records_total{result="written"}"#, 1);
        appliance.metrics()
    })
}

/// Names of the samples in Prometheus text.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The index after the bracketed or quoted part starting at `start` (`chars[start]` is the
/// opening character); quotes inside brackets are skipped whole.
fn skip_enclosed(chars: &[char], start: usize) -> usize {
    let open = chars[start];
    let close = match open {
        '{' => '}',
        '[' => ']',
        '(' => ')',
        quote => quote,
    };
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if open == close {
            if c == '\\' && open != '`' {
                i += 2;
                continue;
            }
            if c == close {
                return i + 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_enclosed(chars, i);
            continue;
        } else if c == close {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// The metric names a PromQL expression selects (Grafana's `$variables` allowed where they
/// stand for label values and durations): every identifier that is not a function,
/// aggregation, keyword, or inside label matchers, label lists, strings or ranges.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const NOT_METRICS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    ];
    const LABEL_LIST_BEFORE: &[&str] =
        &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let expect_label_list = std::mem::take(&mut label_list_next);
        match c {
            '"' | '\'' | '`' | '{' | '[' => i = skip_enclosed(&chars, i),
            '(' if expect_label_list => i = skip_enclosed(&chars, i),
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if LABEL_LIST_BEFORE.contains(&word.as_str()) {
                    label_list_next = true;
                } else if next != Some(&'(') && !NOT_METRICS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every metric of `exprs` (pairs of where and expression) must be on the live /metrics.
fn assert_exported(what: &str, exprs: &[(String, String)]) {
    let live = sample_names(live_metrics());
    let mut unknown = Vec::new();
    for (place, expr) in exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: {place} queries no metric: {expr}");
        for name in names {
            if !live.contains(&name) && !FROM_PROMETHEUS.contains(&name.as_str()) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} use metrics the appliance does not export:\n{}\nexported: {live:?}",
        unknown.join("\n")
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |expr| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (job, instance) (rate(labelwall_worker_received_packets_total{instance=~"$instance", a="}"}[$__rate_interval])) == 0
               and on (job, instance) up{job="labelwall"} == 1"#
        ),
        ["labelwall_worker_received_packets_total", "up"]
    );
    assert_eq!(
        names("sum(rate(a_total[5m] offset 1h)) / ignoring(x) group_left b * 8 > 1e3 or vector(0)"),
        ["a_total", "b"]
    );
    assert_eq!(names(r#"absent(up{job="labelwall"})"#), ["up"]);
    assert_eq!(names("count(x == 0) without (worker)"), ["x"]);
}

#[test]
fn live_metrics_pass_promtool_check_metrics() {
    let text = live_metrics();
    for sample in [
        r#"labelwall_packets_total{verdict="allow"}"#,
        r#"labelwall_packets_total{verdict="deny"}"#,
        r#"labelwall_packets_total{verdict="reject"}"#,
        r#"labelwall_drops_total{class="malformed_geneve",reason="geneve_version"}"#,
    ] {
        assert!(metric(text, sample) > 0, "{sample} is 0:\n{text}");
    }
    run_promtool(&["check", "metrics"], Some(text), true);
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    run_promtool(&["check", "rules", rules_path().to_str().unwrap()], None, false);
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let tests = repo_file("appliance/prometheus/labelwall-alerts.test.yaml");
    let said = run_promtool(&["test", "rules", tests.to_str().unwrap()], None, false);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("a name");
            let expr = rule["expr"].as_str().expect("an expr");
            assert!(rule["for"].as_str().is_some(), "{name} has no `for`");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name} has no severity");
            for annotation in ["summary", "description"] {
                assert!(rule["annotations"][annotation].as_str().is_some(), "{name}: {annotation}");
            }
            exprs.push((name.to_string(), expr.to_string()));
        }
    }
    assert!(exprs.len() >= 10, "rules missing from {}", rules_path().display());
    assert_exported("alert rules", &exprs);
}

/// Every `expr` under `value` (panel targets, also inside rows), with the panel's title.
fn dashboard_exprs(value: &serde_json::Value, panel: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            let panel = map.get("title").and_then(|t| t.as_str()).unwrap_or(panel);
            if let Some(expr) = map.get("expr") {
                let expr = expr.as_str().expect("expr is a string");
                out.push((format!("panel {panel:?}"), expr.to_string()));
            }
            for child in map.values() {
                dashboard_exprs(child, panel, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_exprs(item, panel, out);
            }
        }
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_file("appliance/grafana/labelwall.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();

    // A Prometheus data source variable, used by every panel and target.
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no target");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {title:?}");
            assert!(target["expr"].is_string(), "panel {title:?}: a target without expr");
        }
    }
    dashboard_exprs(&dashboard["panels"], "?", &mut exprs);
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.split_once(','));
        let (selector, _) = inner.expect("label_values(METRIC, LABEL)");
        exprs.push((format!("variable {}", variable["name"]), selector.to_string()));
    }
    assert!(exprs.len() >= 20, "dashboard queries missing: {exprs:?}");
    assert_exported("dashboard queries", &exprs);

    // And each is valid PromQL once Grafana's variables are filled in: promtool checks them
    // as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
        let expr = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {expr}\n"));
    }
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, rules).unwrap();
    run_promtool(&["check", "rules", path.to_str().unwrap()], None, false);
}
