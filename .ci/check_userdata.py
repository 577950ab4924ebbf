"""Checks the cloud-init user data rendered by .ci/deploy-checks.sh.

Usage: check_userdata.py DEFAULT.yaml TCP900.yaml BOOTSTRAP_OUT
DEFAULT.yaml is rendered with GWLB's default TCP idle timeout (350 s), TCP900.yaml with 900 s;
the bootstrap script of the first is written to BOOTSTRAP_OUT for bash -n and shellcheck.
"""
import json
import sys

import yaml

# The keys SPEC.md gives labelwall.yaml, plus flows.tcp_idle_timeout: SPEC.md says the TCP
# idle timeout is configurable and must follow GWLB's; docs/operations.md (Timeouts) names the
# key. It may appear only when the listener's timeout differs from the 350 s default.
SPEC = {"dataplane": {"listen", "workers", "reply_port", "allowed_peers", "reject_limit", "io", "busy_poll"},
        "admin": {"listen"}, "policy": None, "labels": {"inventory", "kubernetes"},
        "flow_log": {"path", "max_rate"}, "names": {"max_bytes", "timeout", "max_pending"}}


def load(path):
    doc = yaml.safe_load(open(path))
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert doc["runcmd"] == [["/usr/local/libexec/labelwall/bootstrap"]], doc["runcmd"]
    return files, yaml.safe_load(files["/etc/labelwall/labelwall.yaml"])


def spec_keys_only(cfg, extra):
    allowed = dict(SPEC, **extra)
    for key, value in cfg.items():
        assert key in allowed, f"labelwall.yaml key {key!r} is not in SPEC.md"
        if allowed[key] is not None:
            unknown = set(value) - allowed[key]
            assert not unknown, f"labelwall.yaml {key}: keys {unknown} are not in SPEC.md"


files, cfg = load(sys.argv[1])
spec_keys_only(cfg, {})
assert "flows" not in cfg, "at the default 350 s no flows key may be written"
assert cfg["admin"]["listen"] == "0.0.0.0:8080" and cfg["dataplane"]["listen"] == "0.0.0.0:6081"
assert cfg["dataplane"]["allowed_peers"] == ["10.100.0.0/24", "10.100.1.0/24"], cfg["dataplane"]
for k in cfg["labels"]["kubernetes"]:
    assert set(k) <= {"cluster", "kubeconfig", "in_cluster"}, k
env = files["/etc/labelwall/config-sync.env"]
assert "LABELWALL_BUNDLE_PARAMETER=/labelwall/prod/bundle/canary" in env and "LABELWALL_CHANNEL=canary" in env, env
agent = json.loads(files["/opt/aws/amazon-cloudwatch-agent/etc/labelwall.json"])
shipped = {(f["file_path"], f["log_group_name"]) for f in agent["logs"]["logs_collected"]["files"]["collect_list"]}
assert shipped == {("/var/log/labelwall/flows.jsonl", "/labelwall/prod/flows"),
                   ("/var/log/labelwall-journal/journal.log", "/labelwall/prod/journal"),
                   ("/var/log/cloud-init-output.log", "/labelwall/prod/journal")}, shipped
boot = files["/usr/local/libexec/labelwall/bootstrap"]
assert ("write_kubeconfig 'payments' 'payments' 'eu-west-1' '210987654321' "
        "'arn:aws:iam::210987654321:role/labelwall-describe' '' ''") in boot
assert boot.index("amazon-cloudwatch-agent-ctl") < boot.index("labelwall-config-sync --initial"), \
    "logs must ship before the first config sync can fail"
assert "systemctl enable --now labelwall-journal-export.service" in boot
open(sys.argv[3], "w").write(boot)

_, cfg900 = load(sys.argv[2])
spec_keys_only(cfg900, {"flows": {"tcp_idle_timeout"}})
assert cfg900["flows"] == {"tcp_idle_timeout": 900}, cfg900.get("flows")
