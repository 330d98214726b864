#!/usr/bin/env bash
# Runs the README's two commands, `make demo` then `make test`, in a fresh Debian 12 (bookworm)
# root made with debootstrap, from a copy of this checkout: proof that a new machine needs
# nothing but what the README names. CI runs it (.ci/run); run it by hand the same way:
#
#   sudo bash scripts/fresh-root.sh                # demo, then test
#   sudo bash scripts/fresh-root.sh -- make demo   # any command, in a fresh root
#
# What comes from outside, and nothing else:
#   - the Rust toolchain: ~/.rustup and ~/.cargo/bin, mounted read-only;
#   - this machine's package settings, copied as they are: apt's sources, keys and apt.conf.d,
#     /etc/pip.conf (and the /opt/wheels it may name), the PIP_* and CA-bundle environment
#     variables, the CA certificates under
#     /usr/local/share/ca-certificates, ~/.cargo/config.toml if there is one, DNS and hosts;
#   - the crates download cache ($CARGO_HOME/registry), shared read-write to save downloads
#     (sources only: every build starts from an empty target/, Garage's too);
#   - kubectl, from this machine image (the Google Cloud SDK package): Debian 12 has no kubectl
#     whose built-in kustomize can build deploy/ (its kubernetes-client is 1.20), and no registry
#     this machine reaches has one. It is mounted read-only at /usr/local/bin/kubectl.
# The root itself has only what `debootstrap --variant=minbase` installs, plus ca-certificates
# and build-essential (gcc and make: what a Rust toolchain needs to link, and what runs the two
# commands). Everything else is installed inside it by the two commands themselves.
#
# Environment: FRESH_ROOT_DIR (default /var/tmp/etcdsafe-fresh-root; emptied first),
# FRESH_ROOT_MIRROR (default: the first bookworm URI of this machine's apt sources).
# Everything runs in its own mount and PID namespaces: when the command ends, every process it
# started is gone and every mount is undone, whatever happened.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${FRESH_ROOT_DIR:-/var/tmp/etcdsafe-fresh-root}
fail() { echo "fresh-root: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot and mounts): run it with sudo"

# Each command's time is printed: the README and the closing notes quote them.
command=(bash -ec 't=$(date +%s); make demo; echo "fresh-root: make demo took $(($(date +%s) - t)) s";
  t=$(date +%s); make test; echo "fresh-root: make test took $(($(date +%s) - t)) s"')
if [ "$#" -gt 0 ]; then
  [ "$1" = "--" ] || fail "usage: fresh-root.sh [-- COMMAND...]"
  shift
  command=("$@")
fi

if ! command -v debootstrap >/dev/null; then
  echo "fresh-root: apt-get install debootstrap (on this machine, to build the root)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -d "$rustup_home/toolchains" ] && [ -x "$cargo_home/bin/cargo" ] \
  || fail "no Rust toolchain in $rustup_home and $cargo_home/bin: install one with rustup first"

mirror=${FRESH_ROOT_MIRROR:-}
if [ -z "$mirror" ]; then
  # The first URI of a deb822 stanza or one-line entry for bookworm, without printing it.
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^URIs:/ { uri = $2 } /^Suites:/ && / bookworm( |$)/ && uri != "" { print uri; exit }')
  [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi

# Empty the directory of a previous run. Nothing can still be mounted in it (the namespace took
# its mounts along), and --one-file-system would refuse to cross into one that is.
if [ -e "$dir" ]; then
  rm -rf --one-file-system "$dir"
fi
mkdir -p "$dir"
started=$(date +%s)
echo "fresh-root: debootstrap bookworm (minbase, ca-certificates, build-essential) into $dir"
debootstrap --variant=minbase --include=ca-certificates,build-essential bookworm "$dir" "$mirror" \
  >"$dir.debootstrap.log" 2>&1 || { tail -20 "$dir.debootstrap.log" >&2; fail "debootstrap failed (log: $dir.debootstrap.log)"; }
echo "fresh-root: root ready in $(($(date +%s) - started)) s"

# This machine's package settings, as they are (never printed). They replace the sources.list
# debootstrap wrote, so apt sees each source once.
rm -f "$dir/etc/apt/sources.list"
copy_if() { [ -e "$1" ] && { mkdir -p "$dir$(dirname "$1")"; cp -a "$1" "$dir$1"; }; return 0; }
for path in /etc/apt/sources.list /etc/apt/sources.list.d /etc/apt/apt.conf.d /etc/apt/auth.conf.d \
  /etc/apt/preferences.d /etc/apt/keyrings /etc/apt/trusted.gpg /etc/apt/trusted.gpg.d \
  /etc/pip.conf /etc/resolv.conf /etc/hosts /opt/wheels; do
  if [ -d "$path" ]; then mkdir -p "$dir$path"; cp -a "$path/." "$dir$path/"; else copy_if "$path"; fi
done
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  mkdir -p "$dir/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$dir/usr/local/share/ca-certificates/"
  chroot "$dir" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates failed in the root"
fi
# No service starts inside the root (Debian's etcd-server would start a system etcd).
printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
chmod 0755 "$dir/usr/sbin/policy-rc.d"

# The Rust toolchain (read-only), a writable CARGO_HOME of the root's own, the shared download
# cache, and the copy of the checkout.
mkdir -p "$dir/root/.rustup" "$dir/root/.cargo/bin" "$dir/root/.cargo/registry" "$cargo_home/registry" \
  "$dir/root/etcdsafe" "$dir/usr/local/bin"
[ -f "$cargo_home/config.toml" ] && cp -a "$cargo_home/config.toml" "$dir/root/.cargo/config.toml"
kubectl=$(readlink -f "$(command -v kubectl 2>/dev/null || echo /nonexistent)")
[ -x "$kubectl" ] && touch "$dir/usr/local/bin/kubectl"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
  | (cd "$repo" && tar --null --no-recursion -T - -cf - 2>/dev/null) | tar -xf - -C "$dir/root/etcdsafe"

# The environment inside: a clean one, plus the package settings' variables and CI's.
env_vars=(HOME=/root PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  LANG=C.UTF-8 TERM="${TERM:-dumb}" CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup)
while IFS= read -r name; do
  env_vars+=("$name=${!name}")
done < <(compgen -e | grep -E '^(PIP_[A-Z_]+|SSL_CERT_FILE|SSL_CERT_DIR|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|NODE_EXTRA_CA_CERTS|CI|CARGO_TERM_COLOR|RUSTUP_TOOLCHAIN|ETCDSAFE_[A-Z0-9_]+)$' || true)

echo "fresh-root: running in the root: ${command[*]}"
export FRESH_DIR=$dir RUSTUP_SRC=$rustup_home CARGO_BIN_SRC=$cargo_home/bin REGISTRY_SRC=$cargo_home/registry \
  KUBECTL_SRC=$kubectl
status=0
unshare --mount --pid --fork --propagation private -- bash -euo pipefail -c '
  d=$FRESH_DIR
  mount -t proc proc "$d/proc"
  mount --rbind /sys "$d/sys"
  mount --rbind /dev "$d/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$d/tmp"
  mount -t tmpfs -o mode=0755 tmpfs "$d/run"
  mount --bind -o ro "$RUSTUP_SRC" "$d/root/.rustup"
  mount -o remount,bind,ro "$d/root/.rustup"
  mount --bind "$CARGO_BIN_SRC" "$d/root/.cargo/bin"
  mount -o remount,bind,ro "$d/root/.cargo/bin"
  mount --bind "$REGISTRY_SRC" "$d/root/.cargo/registry"
  if [ -x "$KUBECTL_SRC" ]; then
    mount --bind "$KUBECTL_SRC" "$d/usr/local/bin/kubectl"
    mount -o remount,bind,ro "$d/usr/local/bin/kubectl"
  fi
  exec chroot "$d" /usr/bin/env -i "$@"
' fresh-root "${env_vars[@]}" bash -c 'cd /root/etcdsafe && echo "fresh-root: inside Debian $(cat /etc/debian_version), $(rustc --version)" && exec "$@"' \
  fresh-root "${command[@]}" || status=$?
echo "fresh-root: done in $(($(date +%s) - started)) s (exit $status)"
exit "$status"
