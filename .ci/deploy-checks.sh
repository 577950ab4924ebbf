#!/usr/bin/env bash
# Offline checks of labelwall's deployment assets (terraform/, appliance/, docs/deploy.md).
#
# Run from the repository root:  bash .ci/deploy-checks.sh
#
# What it checks, without credentials or network (besides installing its own tools from
# PyPI/Debian the first time):
#   - terraform fmt -check -recursive terraform/
#   - for each module and example: init from the local provider mirror, validate, and
#     terraform test (mocked AWS provider; asserts GENEVE/6081, /readyz on the admin port,
#     equal failover settings, one subnet per endpoint, routes through the endpoints, ...)
#   - checkov over terraform/ (pinned version, in its own virtualenv), and that every inline
#     skip carries a justification
#   - systemd-analyze verify of the units (installs Debian's systemd package if needed)
#   - the cloud-init template renders to valid YAML whose labelwall.yaml uses only the keys of
#     SPEC.md and whose bootstrap script parses; shell scripts parse (and pass shellcheck when
#     it is installed); the example configs parse
#   - `labelwall check` of the example configs, when a built binary exists (never builds one)
#   - .ci/test_rollout.py: labelwall-rollout and labelwall-config-sync against a fake AWS CLI
#     and fake appliances on 127.0.0.1 (publish, canary, soak, promotion, rollback)
#
# Fails loudly (exit 1) when terraform or the provider mirror is missing. Writes nothing into
# the repository: everything Terraform or checkov writes goes to a temporary directory.
#
# Environment:
#   TERRAFORM                 terraform binary (default: terraform on PATH)
#   LABELWALL_TF_PLUGIN_DIR   provider mirror for `init -plugin-dir` (default: /opt/tf-plugins)
#   LABELWALL_CI_CACHE        where the checkov virtualenv lives (default: ~/.cache/labelwall-ci)
#
# Last line: "deploy-checks: N passed, M failed" (", K skipped" appended when K > 0).
set -uo pipefail

CHECKOV_VERSION="3.3.30"
TF_ROOTS=(terraform/modules/inspection-vpc terraform/modules/gwlb-endpoints terraform/examples/eks-egress terraform/examples/east-west)

passed=0
failed=0
skipped=0
failures=()

say() { printf '%s\n' "$*"; }
pass() { passed=$((passed + 1)); say "PASS  $*"; }
skip() { skipped=$((skipped + 1)); say "SKIP  $*"; }
fail() {
  failed=$((failed + 1))
  failures+=("$1")
  say "FAIL  $1"
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    sed 's/^/      | /' "$2" | tail -n 60
  fi
}
summary() {
  if [ "$failed" -gt 0 ]; then
    say ""
    say "Failed checks:"
    for f in "${failures[@]}"; do say "  - $f"; done
  fi
  if [ "$skipped" -gt 0 ]; then
    say "deploy-checks: $passed passed, $failed failed, $skipped skipped"
  else
    say "deploy-checks: $passed passed, $failed failed"
  fi
}
fatal() {
  say ""
  say "deploy-checks: FATAL: $*"
  failed=$((failed + 1))
  failures+=("$*")
  summary
  exit 1
}

# Run "$@" with output to a log; pass/fail under the name $1.
check() {
  local name="$1"
  shift
  local log
  log="$(mktemp "$tmp/log.XXXXXX")"
  if "$@" >"$log" 2>&1; then
    pass "$name"
  else
    fail "$name" "$log"
  fi
}

[ -f .ci/deploy-checks.sh ] && [ -d terraform ] && [ -d appliance ] \
  || { echo "deploy-checks: run me from the repository root (bash .ci/deploy-checks.sh)" >&2; exit 2; }
repo="$(pwd)"

started=$(date +%s)
tmp="$(mktemp -d "${TMPDIR:-/tmp}/labelwall-deploy-checks.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------------------------------------
# Tools: terraform and the provider mirror are preconditions, never silently skipped.
# ---------------------------------------------------------------------------------------------

# No user CLI config (credentials helpers, network mirrors), no telemetry, no prompts.
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
unset TF_DATA_DIR TF_PLUGIN_CACHE_DIR

TERRAFORM="${TERRAFORM:-terraform}"
if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
  fatal "terraform is not installed (looked for '$TERRAFORM' on PATH). Install Terraform >= 1.9 or set TERRAFORM=/path/to/terraform; the deployment checks cannot run without it."
fi
PLUGIN_DIR="${LABELWALL_TF_PLUGIN_DIR:-/opt/tf-plugins}"
if ! compgen -G "$PLUGIN_DIR/registry.terraform.io/hashicorp/aws/5.*/*/terraform-provider-aws_*" >/dev/null; then
  fatal "no hashicorp/aws 5.x provider in the local mirror $PLUGIN_DIR (expected $PLUGIN_DIR/registry.terraform.io/hashicorp/aws/5.x.y/OS_ARCH/terraform-provider-aws_*). Set LABELWALL_TF_PLUGIN_DIR to the mirror; the checks run offline and will not download providers."
fi
say "deploy-checks: $("$TERRAFORM" version | head -n 1), provider mirror $PLUGIN_DIR"


# Work on a copy: init writes .terraform/ and .terraform.lock.hcl next to the configuration.
mkdir -p "$tmp/repo"
cp -R terraform appliance "$tmp/repo/"

# ---------------------------------------------------------------------------------------------
# Terraform
# ---------------------------------------------------------------------------------------------

check "terraform fmt -check -recursive terraform/" "$TERRAFORM" fmt -check -recursive -diff terraform

for root in "${TF_ROOTS[@]}"; do
  dir="$tmp/repo/$root"
  log="$tmp/init-$(basename "$root").log"
  if (cd "$dir" && "$TERRAFORM" init -backend=false -input=false -no-color -plugin-dir="$PLUGIN_DIR") >"$log" 2>&1; then
    pass "terraform init (offline mirror): $root"
  else
    fail "terraform init (offline mirror): $root" "$log"
    continue
  fi
  check "terraform validate: $root" bash -c "cd '$dir' && '$TERRAFORM' validate -no-color"
  if compgen -G "$dir/tests/*.tftest.hcl" >/dev/null; then
    log="$tmp/test-$(basename "$root").log"
    if (cd "$dir" && "$TERRAFORM" test -no-color) >"$log" 2>&1; then
      pass "terraform test: $root ($(grep -Eo '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1))"
    else
      # Mocked applies leave "resources in state" notices; keep only what explains a failure.
      grep -Ev '^\s+- (aws_|module\.)|cleaned up manually|left the following resources' "$log" >"$log.short"
      fail "terraform test: $root" "$log.short"
    fi
  else
    fail "terraform test: $root has no tests/*.tftest.hcl"
  fi
done

check "applies reset neither the fleet's size nor the bundle pointers (lifecycle ignore_changes)" \
  python3 .ci/check_lifecycle.py

# ---------------------------------------------------------------------------------------------
# checkov (PyPI), in its own virtualenv so it cannot disturb the machine's Python packages.
# ---------------------------------------------------------------------------------------------

cache="${LABELWALL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labelwall-ci}"
venv="$cache/checkov-$CHECKOV_VERSION"
if [ ! -x "$venv/bin/checkov" ]; then
  say "deploy-checks: installing checkov $CHECKOV_VERSION into $venv (first run only)"
  log="$tmp/checkov-install.log"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"; } >"$log" 2>&1; then
    rm -rf "$venv"
    fail "install checkov $CHECKOV_VERSION from PyPI" "$log"
  fi
fi
if [ -x "$venv/bin/checkov" ]; then
  # --skip-download and BC_SKIP_MAPPING: no calls to any platform; run on the copy so that
  # nothing checkov caches lands in the repository.
  check "checkov (terraform framework) over terraform/" env BC_SKIP_MAPPING=TRUE CKV_NO_VERSION_CHECK=1 \
    "$venv/bin/checkov" --directory "$tmp/repo/terraform" --framework terraform --skip-download \
    --compact --quiet --output cli
fi

# Every inline skip needs a reason: '#checkov:skip=CKV_ID:why'.
unjustified="$(grep -rnE 'checkov:skip=' terraform --include='*.tf' | grep -vE 'checkov:skip=CKV2?_[A-Z0-9_]+:.{10,}' || true)"
if [ -z "$unjustified" ]; then
  pass "every checkov skip is justified ($(grep -rcE 'checkov:skip=' terraform --include='*.tf' | awk -F: '{s+=$2} END {print s+0}') skips)"
else
  printf '%s\n' "$unjustified" >"$tmp/unjustified.log"
  fail "checkov skips without a justification" "$tmp/unjustified.log"
fi

# ---------------------------------------------------------------------------------------------
# systemd units
# ---------------------------------------------------------------------------------------------

if ! command -v systemd-analyze >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "deploy-checks: installing Debian's systemd package for systemd-analyze"
  { apt-get install -y -qq --no-install-recommends systemd >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends systemd >/dev/null 2>&1; }; } || true
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs every Exec*= binary to exist. The units call /usr/local/bin/labelwall and
  # /usr/local/sbin/labelwall-config-sync, which are not installed here: verify copies whose
  # paths point at a stub in the temp dir (the units in the repo are not changed).
  units="$tmp/units"
  mkdir -p "$units"
  printf '#!/bin/sh\nexit 0\n' >"$units/stub"
  chmod +x "$units/stub"
  for u in appliance/systemd/*.service appliance/systemd/*.timer; do
    sed -e "s#/usr/local/bin/labelwall#$units/stub#g" \
        -e "s#/usr/local/sbin/labelwall-config-sync#$units/stub#g" \
        -e "s#/usr/bin/journalctl#$units/stub#g" "$u" >"$units/$(basename "$u")"
  done
  log="$tmp/systemd-verify.log"
  (cd "$units" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./*.service ./*.timer) >"$log" 2>&1
  rc=$?
  # Messages about this machine (no systemd as PID 1, missing system units) are not about ours.
  grep -vE 'Failed to (connect to|open) |/run/systemd|not running|No such file or directory.*\.(target|socket|mount)|Cannot add dependency job' "$log" \
    | grep -E 'labelwall' >"$log.ours" || true
  if [ "$rc" = 0 ] && [ ! -s "$log.ours" ]; then
    pass "systemd-analyze verify: $(cd appliance/systemd && ls -- *.service *.timer | tr '\n' ' ')"
  else
    cat "$log" >>"$log.ours"
    fail "systemd-analyze verify of appliance/systemd units" "$log.ours"
  fi
  # systemd's own exposure score (0 = locked down, 10 = unprotected) of the hardened unit.
  log="$tmp/systemd-security.log"
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    if systemd-analyze security --offline=true --threshold=25 --no-pager "$units/labelwall.service" >"$log" 2>&1; then
      pass "systemd-analyze security: labelwall.service $(grep -Eo 'exposure level for [^:]+: [0-9.]+' "$log" | awk '{print $NF}') (threshold 2.5)"
    else
      fail "systemd-analyze security: labelwall.service exposure above 2.5" "$log"
    fi
  else
    skip "systemd-analyze security: this systemd has no --offline mode"
  fi
else
  skip "systemd-analyze verify: systemd-analyze is not available and could not be installed"
  skip "systemd-analyze security: systemd-analyze is not available"
fi

# ---------------------------------------------------------------------------------------------
# cloud-init template, example configs, shell scripts
# ---------------------------------------------------------------------------------------------

py="python3"
[ -x "$venv/bin/python" ] && py="$venv/bin/python" # has PyYAML (a checkov dependency)

render="$tmp/render"
mkdir -p "$render"
# Two renders: GWLB's default TCP idle timeout (350 s, labelwall's own default: no flows key)
# and 900 s (flows.tcp_idle_timeout must follow the listener).
cat >"$render/main.tf" <<EOF
locals {
  vars = {
    release_url          = "s3://example-bucket/releases/labelwall-0.1.0-x86_64-linux.tar.gz"
    release_sha256       = "0000000000000000000000000000000000000000000000000000000000000000"
    config_s3_uri        = "s3://example-bucket/labelwall"
    bundle_parameter     = "/labelwall/prod/bundle/canary"
    channel              = "canary"
    config_sync_interval = 60
    aws_region           = "eu-west-1"
    admin_port           = 8080
    dataplane_workers    = 0
    allowed_peers        = ["10.100.0.0/24", "10.100.1.0/24"]
    tcp_idle_timeout     = 350
    flow_log_path        = "/var/log/labelwall/flows.jsonl"
    kubernetes_clusters = [
      { cluster = "eks-prod", eks_cluster_name = "prod", region = "eu-west-1", account_id = "123456789012", describe_role_arn = "", endpoint = "", certificate_authority_data = "" },
      { cluster = "payments", eks_cluster_name = "payments", region = "eu-west-1", account_id = "210987654321", describe_role_arn = "arn:aws:iam::210987654321:role/labelwall-describe", endpoint = "", certificate_authority_data = "" },
    ]
    cloudwatch_agent_config = templatefile("$repo/appliance/cloudwatch/amazon-cloudwatch-agent.json.tftpl", {
      flow_log_path     = "/var/log/labelwall/flows.jsonl"
      flow_log_group    = "/labelwall/prod/flows"
      journal_log_group = "/labelwall/prod/journal"
    })
  }
}
output "user_data" {
  value = templatefile("$repo/appliance/cloud-init/user-data.yaml.tftpl", local.vars)
}
output "user_data_900" {
  value = templatefile("$repo/appliance/cloud-init/user-data.yaml.tftpl", merge(local.vars, { tcp_idle_timeout = 900 }))
}
EOF
log="$tmp/render.log"
if (cd "$render" && "$TERRAFORM" init -input=false -no-color && "$TERRAFORM" apply -auto-approve -input=false -no-color \
  && "$TERRAFORM" output -raw user_data >"$render/user-data.yaml" && "$TERRAFORM" output -raw user_data_900 >"$render/user-data-900.yaml") >"$log" 2>&1; then
  pass "cloud-init template renders with templatefile()"
  check "cloud-init user data is YAML; labelwall.yaml has SPEC.md keys only (flows.tcp_idle_timeout only off the 350 s default); the agent ships flows and journal" \
    "$py" .ci/check_userdata.py "$render/user-data.yaml" "$render/user-data-900.yaml" "$tmp/bootstrap.sh"
else
  fail "cloud-init template renders with templatefile()" "$log"
fi

cat >"$tmp/check_examples.py" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open("appliance/examples/labelwall.yaml"))
assert set(cfg) <= {"dataplane", "admin", "policy", "labels", "flow_log"}, set(cfg)
def check_pair(d):
    pol = yaml.safe_load(open(f"{d}/policy.yaml"))
    assert pol["default_action"] in ("allow", "deny", "reject", "audit")
    groups = set(pol["groups"]) | {"any"}
    kinds = {"pods", "nodes", "external", "cidrs", "except", "domains"}
    for name, g in pol["groups"].items():
        assert set(g) <= kinds, f"{d} group {name}: {set(g) - kinds}"
    names = set()
    for r in pol["rules"]:
        assert r["name"] not in names, f"{d}: duplicate rule {r['name']}"
        names.add(r["name"])
        assert set(r) <= {"name", "from", "to", "ports", "action", "log"}, r
        assert r["action"] in ("allow", "deny", "reject", "audit"), r
        for g in r["from"] + r["to"]:
            assert g in groups, f"{d} rule {r['name']}: unknown group {g}"
    inv = yaml.safe_load(open(f"{d}/inventory.yaml"))
    for e in inv["endpoints"]:
        assert set(e) <= {"ip", "cluster", "namespace", "name", "kind", "labels"}, e
        assert e["kind"] in ("pod", "node", "external"), e
    # The scenario: ratings may reach the database.
    assert any(r["from"] == ["ratings"] and r["to"] == ["rating-database"] and r["action"] == "allow" for r in pol["rules"])
    return pol, inv

_, inv = check_pair("appliance/examples")
# The databases are where Terraform puts them (eks-egress: 10.0.200.10, east-west: 10.20.0.10).
assert any(e["ip"] == "10.0.200.10" for e in inv["endpoints"])
_, inv = check_pair("appliance/examples/east-west")
assert any(e["ip"] == "10.20.0.10" for e in inv["endpoints"])
EOF
check "example labelwall.yaml and the eks-egress and east-west policy.yaml, inventory.yaml parse and follow SPEC.md" "$py" "$tmp/check_examples.py"

scripts=(appliance/build-release.sh appliance/bin/labelwall-config-sync .ci/deploy-checks.sh)
[ -f "$tmp/bootstrap.sh" ] && scripts+=("$tmp/bootstrap.sh")
check "shell scripts parse (bash -n): ${#scripts[@]} scripts" bash -c 'for s in "$@"; do bash -n "$s" || exit 1; done' _ "${scripts[@]}"
if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq --no-install-recommends shellcheck >/dev/null 2>&1 || true
fi
if command -v shellcheck >/dev/null 2>&1; then
  check "shellcheck (warnings and errors)" shellcheck --severity=warning --shell=bash "${scripts[@]}"
else
  skip "shellcheck: not installed and not installable here"
fi
for s in appliance/build-release.sh appliance/bin/labelwall-config-sync appliance/bin/labelwall-rollout .ci/deploy-checks.sh; do
  [ -x "$s" ] || fail "$s is not executable (chmod +x)"
done

# The staged rollout: labelwall-rollout (publish, canary, soak, promote, roll back) and
# labelwall-config-sync against a fake AWS CLI and fake appliances serving /metrics and
# /readyz on 127.0.0.1; bounded to 3 minutes (it takes about 20 s).
check "labelwall-rollout and labelwall-config-sync against fake AWS and fake metrics endpoints ($(grep -c '    def test_' .ci/test_rollout.py) tests)" \
  timeout 180 python3 -W error::ResourceWarning .ci/test_rollout.py

# labelwall check of the examples, only with a binary someone already built.
bin=""
for b in target/release/labelwall target/debug/labelwall; do
  [ -x "$b" ] && bin="$b" && break
done
if [ -n "$bin" ] && "$bin" check --help 2>&1 | grep -q -- '--config'; then
  ex="$tmp/examples"
  mkdir -p "$ex"
  cp appliance/examples/policy.yaml appliance/examples/inventory.yaml "$ex/"
  # The example's kubeconfig does not exist here: check the file without the cluster source.
  sed -e "s#/etc/labelwall/#$ex/#g" -e '/^  kubernetes:/,/^[a-z]/{/^  kubernetes:/c\  kubernetes: []
/^    /d}' -e "s#/var/log/labelwall/#$ex/#g" appliance/examples/labelwall.yaml >"$ex/labelwall.yaml"
  check "labelwall check of appliance/examples ($bin)" "$bin" check -c "$ex/labelwall.yaml"
  # The east-west bundle, as labelwall-rollout publish checks a bundle: policy and inventory only.
  printf 'policy: %s\nlabels:\n  inventory: [%s]\n' "$repo/appliance/examples/east-west/policy.yaml" \
    "$repo/appliance/examples/east-west/inventory.yaml" >"$ex/east-west.yaml"
  check "labelwall check of appliance/examples/east-west ($bin)" "$bin" check -c "$ex/east-west.yaml"
else
  skip "labelwall check of appliance/examples: no built labelwall with a check command in target/ (this script never builds)"
fi

say "deploy-checks: took $(($(date +%s) - started)) s"
summary
[ "$failed" = 0 ]
