#!/usr/bin/env bash
# Build labelwall and pack the release tarball that appliance/cloud-init/user-data.yaml.tftpl
# installs on the appliances.
#
# Usage: appliance/build-release.sh [--target TRIPLE] [--out DIR]
#   --target TRIPLE  cross-compile for TRIPLE (e.g. aarch64-unknown-linux-gnu for Graviton);
#                    default: the host
#   --out DIR        where to write the tarball and its .sha256 (default: dist/)
#
# Output: DIR/labelwall-VERSION-ARCH-linux.tar.gz and DIR/labelwall-VERSION-ARCH-linux.tar.gz.sha256.
# The last line printed is the tarball's SHA-256: the release_sha256 Terraform variable.
#
# Layout inside the tarball (one top-level directory, stripped by the installer):
#   bin/labelwall                       the appliance binary (cargo build --release --locked)
#   bin/labelwall-config-sync           loads the bundle its pointer (SSM) names
#   bin/labelwall-rollout               publish, canary, promote, roll back (operator side)
#   systemd/labelwall.service, systemd/labelwall-config-sync.{service,timer},
#   systemd/labelwall-logrotate.{service,timer}  flow log size check every 5 minutes
#   systemd/labelwall-journal-export.service   journal copy for the CloudWatch agent
#   sysctl/90-labelwall.conf            socket buffer and backlog tuning
#   logrotate/labelwall                 flow log rotation
#   examples/{labelwall,policy,inventory}.yaml
#   docs/{deploy,operations}.md
#   VERSION                             version, target, git commit
#
# The archive is reproducible for a given binary: sorted names, root ownership, and mtimes set
# to SOURCE_DATE_EPOCH (default: the last commit's time).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=""
out="$root/dist"

while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a target triple}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "build-release.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

for tool in cargo tar gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-release.sh: '$tool' is required" >&2; exit 1; }
done

cd "$root"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ -n "$version" ] || { echo "build-release.sh: cannot read the version from Cargo.toml" >&2; exit 1; }

if [ -n "$target" ]; then
  cargo build --release --locked --target "$target"
  bin="$root/target/$target/release/labelwall"
  arch="${target%%-*}"
else
  cargo build --release --locked
  bin="$root/target/release/labelwall"
  arch="$(uname -m)"
fi
[ -x "$bin" ] || { echo "build-release.sh: cargo did not produce $bin" >&2; exit 1; }
if [ -z "$target" ]; then
  "$bin" --help >/dev/null || { echo "build-release.sh: $bin does not run" >&2; exit 1; }
fi

commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
name="labelwall-$version-$arch-linux"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
dir="$stage/$name"
install -d "$dir/bin" "$dir/systemd" "$dir/sysctl" "$dir/logrotate" "$dir/examples" "$dir/docs"

install -m 0755 "$bin" "$dir/bin/labelwall"
install -m 0755 appliance/bin/labelwall-config-sync "$dir/bin/labelwall-config-sync"
install -m 0755 appliance/bin/labelwall-rollout "$dir/bin/labelwall-rollout"
install -m 0644 appliance/systemd/labelwall.service appliance/systemd/labelwall-config-sync.service \
  appliance/systemd/labelwall-config-sync.timer appliance/systemd/labelwall-logrotate.service \
  appliance/systemd/labelwall-logrotate.timer appliance/systemd/labelwall-journal-export.service "$dir/systemd/"
install -m 0644 appliance/sysctl/90-labelwall.conf "$dir/sysctl/"
install -m 0644 appliance/logrotate/labelwall "$dir/logrotate/"
install -m 0644 appliance/examples/labelwall.yaml appliance/examples/policy.yaml \
  appliance/examples/inventory.yaml "$dir/examples/"
install -m 0644 docs/deploy.md docs/operations.md "$dir/docs/"
printf 'version=%s\ntarget=%s\ncommit=%s\n' "$version" "${target:-$(uname -m)-host}" "$commit" > "$dir/VERSION"

mkdir -p "$out"
tarball="$out/$name.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -C "$stage" -cf - "$name" | gzip -n -9 > "$tarball"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")

echo "build-release.sh: wrote $tarball"
cut -d' ' -f1 "$tarball.sha256"
