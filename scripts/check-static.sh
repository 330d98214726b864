#!/usr/bin/env bash
# Proves what can be proved of the container image without a Docker engine (the project's
# machines have none): the image's binary, built with the Dockerfile's own command,
#   1. builds from the Docker build context alone (Cargo.toml, Cargo.lock, src/): release,
#      crt-static, --target x86_64-unknown-linux-gnu, into target/static so the other builds'
#      artifacts are left alone;
#   2. stripped of debug info as the Dockerfile does, is static: `file` says so, `ldd` finds
#      nothing to load, and readelf finds no program interpreter and no NEEDED library;
#   3. runs in an empty root that holds only itself and the CA bundle (distroless/static adds
#      /etc/passwd, tzdata and the same bundle, nothing the binary loads): `--version` works, and
#      `snapshot status /nonexistent` fails with one `error:` line and a non-zero exit;
#   4. resolves host names in that root, from /etc/hosts and from DNS (/etc/resolv.conf and a
#      small DNS responder on 127.0.0.1:53), inside a private network namespace that has only its
#      own loopback: a statically linked glibc must not need the NSS modules it would dlopen.
# Run by tests/deploy.rs (static_binary_runs_in_an_empty_root). Needs root, or unprivileged user
# namespaces; strip, file, ldd, readelf, chroot, unshare, ip and python3 (scripts/install-deps.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=x86_64-unknown-linux-gnu
target_dir="${ETCDSAFE_STATIC_TARGET_DIR:-$root/target/static}"

fail() { echo "check-static: FAIL: $*" >&2; exit 1; }
step() { echo "check-static: $*"; }
for tool in cargo strip file ldd readelf chroot unshare ip python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed: run scripts/install-deps.sh"
done

# 1. The Dockerfile's build (tests/deploy.rs checks that the Dockerfile runs this same command),
# from a copy of exactly the Docker build context (.dockerignore admits Cargo.toml, Cargo.lock
# and src/, as tests/deploy.rs checks): nothing outside it may be needed. cp -a keeps the
# sources' times, so an unchanged tree is not rebuilt.
context="$target_dir/context"
step "building the static binary from the build context in $context"
mkdir -p "$context"
rm -rf "$context/src"
cp -a "$root/Cargo.toml" "$root/Cargo.lock" "$root/src" "$context/"
(cd "$context" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --target-dir "$target_dir")
built="$target_dir/$target/release/etcdsafe"
[ -x "$built" ] || fail "no binary at $built"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# As the Dockerfile ships it.
bin="$work/etcdsafe"
strip --strip-debug -o "$bin" "$built"

# 2. Static, three ways.
described=$(file -L "$bin")
echo "$described"
echo "$described" | grep -Eq 'statically linked|static-pie linked' || fail "file does not call it static: $described"
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_out"
echo "$ldd_out" | grep -Eq 'not a dynamic executable|statically linked' || fail "ldd lists libraries: $ldd_out"
if readelf -lW "$bin" | grep -q 'INTERP'; then fail "the binary names a program interpreter"; fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then fail "the binary needs shared libraries: $(readelf -dW "$bin" | grep NEEDED)"; fi
step "static: no interpreter, no shared library"

# 3. An empty root: the binary, the CA bundle, and the files the name-resolution step adds.
jail="$work/root"
mkdir -p "$jail/etc/ssl/certs" "$jail/tmp"
chmod 1777 "$jail/tmp"
cp "$bin" "$jail/etcdsafe"
cp /etc/ssl/certs/ca-certificates.crt "$jail/etc/ssl/certs/ca-certificates.crt"
unshare=$(command -v unshare)
chroot=$(command -v chroot)
if [ "$(id -u)" -eq 0 ]; then sandbox=("$unshare" --net); else sandbox=("$unshare" --map-root-user --net); fi
# No environment and no network but loopback (down): the binary alone in its root.
in_jail() { env -i PATH=/ "${sandbox[@]}" "$chroot" "$jail" "$@"; }

version=$(in_jail /etcdsafe --version) || fail "--version failed in the empty root"
echo "$version"
[[ "$version" == etcdsafe\ * ]] || fail "--version printed: $version"

set +e
in_jail /etcdsafe snapshot status /nonexistent >"$work/out" 2>"$work/err"
code=$?
set -e
echo "snapshot status /nonexistent: exit $code, stderr: $(cat "$work/err")"
[ "$code" -ne 0 ] || fail "snapshot status of a missing file exited 0"
[ "$(wc -l <"$work/err")" -eq 1 ] || fail "expected one line on stderr, got: $(cat "$work/err")"
grep -q '^error: .*/nonexistent' "$work/err" || fail "expected 'error: ... /nonexistent ...', got: $(cat "$work/err")"
[ ! -s "$work/out" ] || fail "unexpected stdout: $(cat "$work/out")"

# 4. Name resolution in the empty root, in a network namespace with nothing but loopback. The
# probe is `snapshot save` against a named etcd endpoint where nothing listens: once the name
# resolves the error is a refused connection. A name the DNS responder says does not exist is
# the control: its error must be something else, or the probe would prove nothing.
cat >"$jail/etc/hosts" <<'HOSTS'
127.0.0.1 localhost
127.0.0.1 etcd-from-hosts.check-static.test
HOSTS
echo "nameserver 127.0.0.1" >"$jail/etc/resolv.conf"
echo "hosts: files dns" >"$jail/etc/nsswitch.conf"
cat >"$work/dns.py" <<'PY'
# Answers A queries with 127.0.0.1 and other queries with no records, except names containing
# "nxdomain", which do not exist; exits after 60s.
import socket, struct, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
sock.settimeout(1.0)
open(sys.argv[1], "w").close()
deadline = time.time() + 60
while time.time() < deadline:
    try:
        query, peer = sock.recvfrom(512)
    except socket.timeout:
        continue
    if len(query) < 12:
        continue
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    question = query[12:end + 5]
    qtype = struct.unpack(">H", query[end + 1:end + 3])[0]
    answer = b""
    flags = 0x8180
    if b"nxdomain" in query[12:end]:
        flags = 0x8183
    elif qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    header = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0)
    sock.sendto(header + question + answer, peer)
PY
recipient="age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
names="etcd-from-hosts.check-static.test etcd-from-dns.check-static.test etcd-nxdomain.check-static.test"
for name in $names; do
  cat >"$jail/tmp/$name.yaml" <<YAML
etcd:
  endpoints: [http://$name:2379]
  dial-timeout: 2s
spool-dir: /tmp/spool
encryption:
  recipients: [$recipient]
storage:
  local: { path: /tmp/backups }
YAML
done
cat >"$work/resolve.sh" <<SH
set -u
ip link set lo up
python3 "$work/dns.py" "$work/dns-ready" &
dns=\$!
for _ in \$(seq 50); do [ -e "$work/dns-ready" ] && break; sleep 0.1; done
for name in $names; do
  env -i PATH=/ "$chroot" "$jail" /etcdsafe --config "/tmp/\$name.yaml" snapshot save >"$work/\$name.out" 2>&1
  echo "\$?" >"$work/\$name.code"
done
kill "\$dns" 2>/dev/null
wait "\$dns" 2>/dev/null
exit 0
SH
"${sandbox[@]}" bash "$work/resolve.sh"
for name in $names; do
  out=$(cat "$work/$name.out")
  code=$(cat "$work/$name.code")
  echo "snapshot save against http://$name:2379: exit $code: $out"
  [ "$code" -ne 0 ] || fail "snapshot save against $name succeeded?"
  [ "$(echo "$out" | wc -l)" -eq 1 ] || fail "expected one error line for $name: $out"
  case "$name" in
    *nxdomain*) if echo "$out" | grep -q 'Connection refused'; then fail "a name that does not exist resolved: $out"; fi ;;
    *) echo "$out" | grep -q 'Connection refused' || fail "the static binary did not resolve $name: $out" ;;
  esac
done
step "names resolve from /etc/hosts and from DNS in the empty root"
step "ok"
