#!/usr/bin/env bash
# Builds the worker image, checks it, and prints its digest:
#
#   bash scripts/image.sh            # → target/image/bqsync.oci.tar, and the digest on stdout
#   bash scripts/image.sh tools      # only install what it needs (musl target, musl-gcc, podman)
#
# The image is `FROM scratch`: one statically linked binary (musl, built with
# `--no-default-features --features gcp`: no DuckDB), the CA certificates, a passwd/group naming the
# non-root user 10001, the schemas, and /var/lib/bqsync. Podman builds it from a folder with no base
# image to pull and no container to run (vfs storage, chroot isolation: what this sandbox allows).
#
# CARGO_TARGET_DIR is honoured (CI builds the image beside the tests, in a folder of its own).
# BQSYNC_BINARY=PATH packs a static gcp-only binary built beforehand instead of building one.
#
# Checks (each fails the script): the image is at most MAX_IMAGE_MB (default 40) MB; `podman image
# inspect` shows user 10001:10001, the entrypoint /usr/local/bin/bqsync and the command `work`; the
# binary taken back out of the saved image runs `bqsync --version` and says it has no `embedded`.
#
# It installs what it needs when missing: the Rust musl target (rustup), musl-gcc and podman
# (Debian's packages). Where one cannot be installed it stops and says which.
set -euo pipefail
cd "$(dirname "$0")/.."
max_mb=${MAX_IMAGE_MB:-40}
target=x86_64-unknown-linux-musl
out=target/image
tag=localhost/bqsync:${IMAGE_TAG:-$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')}

fail() {
  echo "scripts/image.sh: $*" >&2
  exit 1
}

# Runs "$@" up to three times, 10 s apart: a download that fails once (a registry's passing
# error) would otherwise fail the whole CI run.
with_retries() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    [[ $attempt == 3 ]] || { echo "scripts/image.sh: '$*' failed (attempt $attempt of 3); retrying in 10 s" >&2; sleep 10; }
  done
  return 1
}

# apt_update_and_install [sudo] -- PACKAGE...
apt_update_and_install() {
  local sudo=()
  while [[ $1 != -- ]]; do sudo+=("$1"); shift; done
  shift
  "${sudo[@]}" apt-get update >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null
}

apt_install() {
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
    || with_retries apt_update_and_install "${sudo[@]}" -- "$@" \
    || fail "cannot install $* from Debian's packages (apt-get); install it and run again"
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  with_retries rustup target add "$target" >&2 || fail "cannot add the Rust target $target (rustup target add $target); \
without it there is no static binary. The alternative: a glibc build with the libraries ldd lists copied in"
fi
command -v musl-gcc >/dev/null || apt_install musl-tools
command -v podman >/dev/null || apt_install podman
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || apt_install ca-certificates
# `bash scripts/image.sh tools`: only the above (CI, before it builds the gcp-only tests for musl).
[[ ${1:-} == tools ]] && exit 0

# The C parts (ring, SQLite, mimalloc) are compiled for musl by musl-gcc.
export CC_x86_64_unknown_linux_musl=musl-gcc
if [[ -n ${BQSYNC_BINARY:-} ]]; then
  # A binary built beforehand for the same target and features. CI passes the one its gcp-only
  # tests were built with: building it here again would compile much of the dependency tree a second
  # time, since the tests' dev-dependencies add features to shared crates (rustix, bitflags, …).
  binary=$BQSYNC_BINARY
  [[ -x $binary ]] || fail "BQSYNC_BINARY=$binary is not an executable file"
else
  cargo build --release --locked --target "$target" --no-default-features --features gcp --bin bqsync >&2
  binary=${CARGO_TARGET_DIR:-target}/$target/release/bqsync
fi

rm -rf "$out" && mkdir -p "$out/context/rootfs"
root=$out/context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/bqsync" "$root/tmp" "$root/var/lib" "$out/context/state"
# The service's working directory (checkpoints, the admin address file): the one place it writes.
touch "$out/context/state/.keep"
# Line tables stay in target/ for backtraces; the image gets the binary without them.
strip -o "$root/usr/local/bin/bqsync" "$binary"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp -r schemas "$root/etc/bqsync/schemas"
printf 'root:x:0:0:root:/root:/sbin/nologin\nbqsync:x:10001:10001:bqsync:/var/lib/bqsync:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nbqsync:x:10001:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
cp scripts/image/Containerfile "$out/context/Containerfile"

# Podman's state lives under target/ (no system store is touched; the next run starts clean).
podman=(podman --root "$PWD/$out/storage" --runroot "$PWD/$out/run" --storage-driver vfs)
"${podman[@]}" build --isolation chroot --quiet -t "$tag" -f "$out/context/Containerfile" "$out/context" >&2
read -r size user entrypoint cmd < <("${podman[@]}" image inspect "$tag" \
  --format '{{.Size}} {{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}')
"${podman[@]}" save --quiet --format oci-archive -o "$out/bqsync.oci.tar" "$tag"
"${podman[@]}" save --quiet --format docker-archive -o "$out/bqsync.docker.tar" "$tag"

# The binary as the image holds it: unpacked from the saved layers, then run.
python3 - "$out/bqsync.oci.tar" "$out/extracted" <<'PY'
import gzip, io, json, sys, tarfile
archive, dest = sys.argv[1], sys.argv[2]
with tarfile.open(archive) as oci:
    blob = lambda digest: oci.extractfile("blobs/" + digest.replace(":", "/")).read()
    manifest = json.loads(blob(json.loads(oci.extractfile("index.json").read())["manifests"][0]["digest"]))
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        layer = tarfile.open(fileobj=io.BytesIO(data))
        for member in layer.getmembers():
            # The service owns its working directory and nothing else (/tmp is everyone's, 1777).
            if (member.uid == 10001) != member.name.startswith("var/lib/bqsync"):
                sys.exit(f"image file {member.name} owned by {member.uid}: only var/lib/bqsync is the service's")
        layer.extractall(dest, filter="tar")
PY
version=$("$out/extracted/usr/local/bin/bqsync" --version) || fail "the image's binary does not run"
digest=$("${podman[@]}" image inspect "$tag" --format '{{.Digest}}')

size_mb=$(python3 -c "print(round($size / 1e6, 1))")
echo "image $tag: $size_mb MB (limit $max_mb), user $user, entrypoint $entrypoint, cmd $cmd" >&2
echo "binary: $version" >&2
python3 -c "import sys; sys.exit(0 if $size <= $max_mb * 1e6 else 1)" || fail "the image is $size_mb MB, over $max_mb MB"
[[ $user == "10001:10001" ]] || fail "the image runs as '$user', not 10001:10001"
[[ $entrypoint == '["/usr/local/bin/bqsync"]' ]] || fail "entrypoint $entrypoint"
[[ $cmd == '["work"]' ]] || fail "command $cmd"
[[ $version == *"features: gcp"* && $version != *embedded* ]] || fail "the image's binary is not the gcp-only build: $version"
rm -rf "$out/storage" "$out/run" "$out/extracted"
echo "$digest"
