"""Tests of appliance/bin/labelwall-rollout against fakes, run by .ci/deploy-checks.sh.

Nothing leaves the machine: the AWS CLI is a fake keeping SSM parameters (with history) and S3
objects in a temporary directory; the canaries and the fleet are small HTTP servers on
127.0.0.1 serving /metrics and /readyz like labelwall, which "load" a bundle the way
labelwall-config-sync does (when their pointer names a new ID, their successful reloads go up
and their deny share becomes the one the test gave that bundle). Every rollout runs with a
soak of about a second; the whole file takes a few seconds.

The appliance side, appliance/bin/labelwall-config-sync, is run against the same fake AWS: it
installs a verified bundle and refuses a tampered one or a pointer that is not an ID.

Run: python3 .ci/test_rollout.py  (from the repository root)
"""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "appliance", "bin", "labelwall-rollout")
OLD = "a" * 64
NEW = "b" * 64

FAKE_AWS = r'''#!/usr/bin/env python3
import json, os, shutil, sys
state = os.environ["FAKE_AWS_STATE"]
args = list(sys.argv[1:])
text = False
if "--output" in args:
    text = args[args.index("--output") + 1] == "text"
    del args[args.index("--output"):args.index("--output") + 2]
query = None
if "--query" in args:
    query = args[args.index("--query") + 1]
    del args[args.index("--query"):args.index("--query") + 2]
def opt(name):
    return args[args.index(name) + 1]
params_file = os.path.join(state, "params.json")
def load():
    with open(params_file) as f:
        return json.load(f)
params = load() if os.path.exists(params_file) else {}
with open(os.path.join(state, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\n")
if args[:2] == ["ssm", "get-parameter"]:
    name = opt("--name")
    if name not in params:
        sys.stderr.write("ParameterNotFound\n"); sys.exit(254)
    if text and query == "Parameter.Value":
        print(params[name][-1])
    else:
        print(json.dumps({"Parameter": {"Name": name, "Value": params[name][-1]}}))
elif args[:2] == ["ssm", "put-parameter"]:
    params.setdefault(opt("--name"), []).append(opt("--value"))
    # Atomically: the fake appliances read this file concurrently.
    with open(params_file + ".new", "w") as f:
        json.dump(params, f)
    os.replace(params_file + ".new", params_file)
    print(json.dumps({"Version": len(params[opt("--name")])}))
elif args[:2] == ["ssm", "get-parameter-history"]:
    print(json.dumps({"Parameters": [{"Version": i + 1, "Value": v} for i, v in enumerate(params[opt("--name")])]}))
elif args[:2] == ["s3", "cp"] and args[-1].startswith("s3://"):
    src, dst = [a for a in args[2:] if not a.startswith("--")]
    path = os.path.join(state, "s3", dst[len("s3://"):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(src, path)
elif args[:2] == ["s3", "cp"]:
    src, dst = [a for a in args[2:] if not a.startswith("--")]
    path = os.path.join(state, "s3", src[len("s3://"):])
    if not os.path.exists(path):
        sys.stderr.write("fatal error: An error occurred (404) when calling the HeadObject operation\n"); sys.exit(1)
    shutil.copyfile(path, dst)
else:
    sys.stderr.write("fake aws: unexpected call %r\n" % args); sys.exit(2)
'''

FAKE_LABELWALL = r'''#!/bin/sh
# fake `labelwall check -c FILE`: rejects a policy containing INVALID.
policy="$(sed -n 's/^policy: //p' "$3")"
if grep -q INVALID "$policy"; then echo "$policy: line 1: rule broken: INVALID" >&2; exit 1; fi
exit 0
'''


def read(path):
    with open(path) as f:
        return f.read()


class FakeAppliance:
    """An appliance's admin endpoint on loopback. Each /metrics answer adds 1,000 packets, of
    which deny_share[bundle] are denied for the bundle it runs."""

    def __init__(self, state_dir, pointer, loaded, deny_share, loads=True):
        self.state_dir, self.pointer, self.loaded = state_dir, pointer, loaded
        self.deny_share, self.loads = deny_share, loads
        self.ready, self.reload_ok, self.reload_error = True, 0, 0
        self.packets = self.denied = 0.0
        self.lock = threading.Lock()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                code, body = app.answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def sync(self):
        """What labelwall-config-sync does on its timer: load the bundle the pointer names."""
        params_file = os.path.join(self.state_dir, "params.json")
        with open(params_file) as f:
            want = json.load(f)[self.pointer][-1]
        if want != self.loaded and self.loads:
            self.loaded = want
            self.reload_ok += 1

    def answer(self, path):
        with self.lock:
            self.sync()
            if path == "/readyz":
                return (200 if self.ready else 503), "ready\n" if self.ready else "not ready\n"
            self.packets += 1000
            self.denied += 1000 * self.deny_share.get(self.loaded, 0.0)
            allowed = self.packets - self.denied
            return 200, (
                "# TYPE labelwall_packets_total counter\n"
                f'labelwall_packets_total{{verdict="allow"}} {allowed}\n'
                f'labelwall_packets_total{{verdict="deny"}} {self.denied * 0.75}\n'
                f'labelwall_packets_total{{verdict="reject"}} {self.denied * 0.25}\n'
                'labelwall_packets_total{verdict="audit"} 0\n'
                "# TYPE labelwall_policy_reloads_total counter\n"
                f'labelwall_policy_reloads_total{{result="ok"}} {self.reload_ok}\n'
                f'labelwall_policy_reloads_total{{result="error"}} {self.reload_error}\n'
            )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Fakes(unittest.TestCase):
    """A fake AWS CLI and a fake `labelwall check` on PATH, both pointers at OLD."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.state = os.path.join(self.tmp.name, "aws")
        os.makedirs(self.state)
        bindir = os.path.join(self.tmp.name, "bin")
        os.makedirs(bindir)
        for name, text in (("aws", FAKE_AWS), ("labelwall", FAKE_LABELWALL)):
            path = os.path.join(bindir, name)
            with open(path, "w") as f:
                f.write(text.replace("/usr/bin/env python3", sys.executable, 1) if name == "aws" else text)
            os.chmod(path, 0o755)
        self.env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], FAKE_AWS_STATE=self.state)
        self.bindir = bindir
        self.params({"/labelwall/lw/bundle/canary": [OLD], "/labelwall/lw/bundle/fleet": [OLD]})
        self.appliances = []

    def tearDown(self):
        for a in self.appliances:
            a.close()
        self.tmp.cleanup()

    def params(self, value=None):
        path = os.path.join(self.state, "params.json")
        if value is not None:
            with open(path, "w") as f:
                json.dump(value, f)
        with open(path) as f:
            return json.load(f)

    def appliance(self, pointer, deny_share, loads=True):
        a = FakeAppliance(self.state, f"/labelwall/lw/bundle/{pointer}", OLD, deny_share, loads)
        self.appliances.append(a)
        return a

    def run_rollout(self, *args, timeout=30):
        return subprocess.run([sys.executable, SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def rollout(self, canaries, fleet=(), extra=()):
        args = ["rollout", "--name", "lw", "--bundle", NEW, "--soak", "1", "--interval", "0.05",
                "--apply-timeout", "2", "--min-packets", "1000", *extra]
        for c in canaries:
            args += ["--metrics-url", c.url]
        for f in fleet:
            args += ["--fleet-metrics-url", f.url]
        return self.run_rollout(*args)

    def write(self, name, text):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class RolloutTest(Fakes):
    # --- publish -------------------------------------------------------------------------------

    def test_publish_uploads_a_content_addressed_bundle_after_checking_it(self):
        policy = self.write("policy.yaml", "default_action: deny\nrules: []\n")
        inventory = self.write("inventory.yaml", "endpoints: []\n")
        done = self.run_rollout("publish", "--config-s3-uri", "s3://cfg/labelwall/", "--policy", policy,
                                "--inventory", inventory)
        self.assertEqual(done.returncode, 0, done.stderr)
        bundle = done.stdout.strip().splitlines()[-1]
        root = os.path.join(self.state, "s3", "cfg", "labelwall", "bundles", bundle)
        manifest = read(os.path.join(root, "SHA256SUMS"))
        self.assertEqual(hashlib.sha256(manifest.encode()).hexdigest(), bundle)
        for name, path in (("inventory.yaml", inventory), ("policy.yaml", policy)):
            digest = hashlib.sha256(read(path).encode()).hexdigest()
            self.assertIn(f"{digest}  {name}\n", manifest)
            self.assertEqual(read(os.path.join(root, name)), read(path))
        # The manifest goes up last: a bundle whose manifest exists is whole.
        uploads = [line for line in read(os.path.join(self.state, "calls.log")).splitlines() if line.startswith("s3 cp")]
        self.assertTrue(uploads[-1].endswith("/SHA256SUMS"), uploads)

    def test_publish_refuses_a_bundle_that_labelwall_check_rejects(self):
        policy = self.write("policy.yaml", "INVALID\n")
        inventory = self.write("inventory.yaml", "endpoints: []\n")
        done = self.run_rollout("publish", "--config-s3-uri", "s3://cfg/labelwall", "--policy", policy,
                                "--inventory", inventory)
        self.assertEqual(done.returncode, 1)
        self.assertIn("labelwall check rejected the bundle; nothing was published", done.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.state, "s3")))

    def test_publish_refuses_without_a_labelwall_binary(self):
        policy = self.write("policy.yaml", "default_action: deny\n")
        inventory = self.write("inventory.yaml", "endpoints: []\n")
        done = self.run_rollout("publish", "--config-s3-uri", "s3://cfg/labelwall", "--policy", policy,
                                "--inventory", inventory, "--labelwall", os.path.join(self.bindir, "missing"))
        self.assertEqual(done.returncode, 1)
        self.assertIn("never published unchecked", done.stderr)

    # --- rollout -------------------------------------------------------------------------------

    def test_a_healthy_canary_is_promoted_to_the_fleet_after_the_soak(self):
        canaries = [self.appliance("canary", {OLD: 0.01, NEW: 0.01}) for _ in range(2)]
        fleet = [self.appliance("fleet", {OLD: 0.01, NEW: 0.01})]
        done = self.rollout(canaries, fleet)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        p = self.params()
        self.assertEqual(p["/labelwall/lw/bundle/canary"], [OLD, NEW])
        self.assertEqual(p["/labelwall/lw/bundle/fleet"], [OLD, NEW])
        self.assertIn("promoted", done.stdout)

    def test_a_canary_denying_more_than_the_fleet_is_rolled_back_and_the_fleet_never_sees_it(self):
        canaries = [self.appliance("canary", {OLD: 0.01, NEW: 0.30})]
        fleet = [self.appliance("fleet", {OLD: 0.01})]
        done = self.rollout(canaries, fleet)
        self.assertEqual(done.returncode, 1)
        self.assertIn("more than --max-deny-increase", done.stdout + done.stderr)
        p = self.params()
        self.assertEqual(p["/labelwall/lw/bundle/canary"], [OLD, NEW, OLD])
        self.assertEqual(p["/labelwall/lw/bundle/fleet"], [OLD])

    def test_without_a_fleet_the_absolute_deny_limit_applies(self):
        canaries = [self.appliance("canary", {NEW: 0.10})]
        done = self.rollout(canaries)
        self.assertEqual(done.returncode, 1)
        self.assertIn("above --max-deny-ratio", done.stdout + done.stderr)
        self.assertEqual(self.params()["/labelwall/lw/bundle/fleet"], [OLD])

    def test_a_canary_that_never_loads_the_bundle_is_rolled_back(self):
        canaries = [self.appliance("canary", {}), self.appliance("canary", {}, loads=False)]
        done = self.rollout(canaries)
        self.assertEqual(done.returncode, 1)
        self.assertIn("1 canaries did not load the bundle within 2 s", done.stdout + done.stderr)
        self.assertEqual(self.params()["/labelwall/lw/bundle/canary"], [OLD, NEW, OLD])
        self.assertEqual(self.params()["/labelwall/lw/bundle/fleet"], [OLD])

    def test_a_canary_that_turns_unready_during_the_soak_is_rolled_back(self):
        canary = self.appliance("canary", {})
        timer = threading.Timer(0.5, lambda: setattr(canary, "ready", False))
        timer.start()
        try:
            done = self.rollout([canary])
        finally:
            timer.cancel()
        self.assertEqual(done.returncode, 1)
        self.assertIn("is not ready", done.stdout + done.stderr)
        self.assertEqual(self.params()["/labelwall/lw/bundle/fleet"], [OLD])

    def test_a_failed_reload_during_the_soak_is_rolled_back(self):
        canary = self.appliance("canary", {})
        timer = threading.Timer(0.5, lambda: setattr(canary, "reload_error", 1))
        timer.start()
        try:
            done = self.rollout([canary])
        finally:
            timer.cancel()
        self.assertEqual(done.returncode, 1)
        self.assertIn("failed a policy reload", done.stdout + done.stderr)

    def test_too_little_traffic_is_not_a_healthy_canary(self):
        canaries = [self.appliance("canary", {})]
        done = self.rollout(canaries, extra=["--min-packets", "1e9"])
        self.assertEqual(done.returncode, 1)
        self.assertIn("too little traffic to judge", done.stdout + done.stderr)
        self.assertEqual(self.params()["/labelwall/lw/bundle/fleet"], [OLD])

    def test_an_unreachable_canary_is_refused_before_any_pointer_moves(self):
        done = self.run_rollout("rollout", "--name", "lw", "--bundle", NEW, "--metrics-url",
                                "http://127.0.0.1:9/metrics", "--http-timeout", "1")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(self.params()["/labelwall/lw/bundle/canary"], [OLD])

    # --- rollback, promote, status -------------------------------------------------------------

    def test_rollback_moves_each_pointer_to_its_previous_bundle(self):
        self.params({"/labelwall/lw/bundle/canary": [OLD, NEW], "/labelwall/lw/bundle/fleet": [OLD, NEW]})
        done = self.run_rollout("rollback", "--name", "lw")
        self.assertEqual(done.returncode, 0, done.stderr)
        p = self.params()
        self.assertEqual(p["/labelwall/lw/bundle/canary"][-1], OLD)
        self.assertEqual(p["/labelwall/lw/bundle/fleet"][-1], OLD)

    def test_rollback_to_an_id_and_promote(self):
        done = self.run_rollout("rollback", "--name", "lw", "--channel", "canary", "--to", NEW)
        self.assertEqual(done.returncode, 0, done.stderr)
        done = self.run_rollout("promote", "--name", "lw")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.params()["/labelwall/lw/bundle/fleet"][-1], NEW)
        done = self.run_rollout("status", "--name", "lw")
        self.assertEqual(done.stdout, f"canary\t{NEW}\nfleet\t{NEW}\n")

    def test_rollback_without_history_asks_for_an_id(self):
        done = self.run_rollout("rollback", "--name", "lw", "--channel", "fleet")
        self.assertEqual(done.returncode, 1)
        self.assertIn("give --to ID", done.stderr)


class ConfigSyncTest(Fakes):
    """appliance/bin/labelwall-config-sync --initial against the fake AWS."""

    SYNC = os.path.join(REPO, "appliance", "bin", "labelwall-config-sync")

    def publish(self, policy="default_action: deny\nrules: []\n"):
        done = self.run_rollout("publish", "--config-s3-uri", "s3://cfg/labelwall",
                                "--policy", self.write("policy.yaml", policy),
                                "--inventory", self.write("inventory.yaml", "endpoints: []\n"))
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.strip().splitlines()[-1]

    def sync(self, bundle):
        self.params({"/labelwall/lw/bundle/fleet": [bundle]})
        etc = os.path.join(self.tmp.name, "etc")
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "labelwall.yaml"), "w") as f:
            f.write(f"policy: {etc}/policy.yaml\nlabels:\n  inventory: [{etc}/inventory.yaml]\n")
        env = dict(self.env, LABELWALL_CONFIG_S3_URI="s3://cfg/labelwall", LABELWALL_BUNDLE_PARAMETER="/labelwall/lw/bundle/fleet",
                   LABELWALL_CONFIG_DIR=etc, LABELWALL_BIN=os.path.join(self.bindir, "labelwall"), TMPDIR=self.tmp.name)
        done = subprocess.run(["bash", self.SYNC, "--initial"], env=env, capture_output=True, text=True, timeout=30)
        return done, etc

    def test_config_sync_installs_the_bundle_the_pointer_names(self):
        bundle = self.publish()
        done, etc = self.sync(bundle)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(read(os.path.join(etc, "bundle-id")).strip(), bundle)
        self.assertEqual(read(os.path.join(etc, "policy.yaml")), "default_action: deny\nrules: []\n")
        self.assertIn(f"installed bundle {bundle}", done.stdout)

    def test_config_sync_refuses_a_bundle_changed_after_publication(self):
        bundle = self.publish()
        with open(os.path.join(self.state, "s3", "cfg", "labelwall", "bundles", bundle, "inventory.yaml"), "a") as f:
            f.write("# changed\n")
        done, etc = self.sync(bundle)
        self.assertEqual(done.returncode, 1)
        self.assertIn("a file does not match SHA256SUMS", done.stderr)
        self.assertFalse(os.path.exists(os.path.join(etc, "policy.yaml")))

    def test_config_sync_refuses_a_pointer_that_is_not_an_id(self):
        done, _ = self.sync("latest")
        self.assertEqual(done.returncode, 1)
        self.assertIn("not a bundle ID", done.stderr)

    def test_config_sync_refuses_a_bundle_labelwall_check_rejects(self):
        bundle = self.publish()
        path = os.path.join(self.state, "s3", "cfg", "labelwall", "bundles", bundle)
        # Re-sign a broken policy consistently: only labelwall check can catch it.
        with open(os.path.join(path, "policy.yaml"), "w") as f:
            f.write("INVALID\n")
        manifest = "".join(f"{hashlib.sha256(read(os.path.join(path, n)).encode()).hexdigest()}  {n}\n" for n in ("inventory.yaml", "policy.yaml"))
        forged = hashlib.sha256(manifest.encode()).hexdigest()
        os.rename(path, os.path.join(os.path.dirname(path), forged))
        with open(os.path.join(os.path.dirname(path), forged, "SHA256SUMS"), "w") as f:
            f.write(manifest)
        done, etc = self.sync(forged)
        self.assertEqual(done.returncode, 1)
        self.assertIn("labelwall check rejected bundle", done.stderr)
        self.assertFalse(os.path.exists(os.path.join(etc, "bundle-id")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
