#!/usr/bin/env bash
# Builds the image from the unmodified Dockerfile with podman (the real `cargo build` in the
# build stage), then runs it and checks it:
#   - with the compose file's environment for the service, beside the compose file's Redis in one
#     pod (`redis` and `otel-collector` resolve to the pod; no collector runs): GET /items/foo
#     twice (origin, then cache), the entry is in Redis, /metrics answers; DISK_CACHE_DIR on a new
#     named volume, as compose mounts it: the image's directory there is owned by 65532, the
#     volume takes that ownership, and /health says tiers.disk "ok";
#   - as the chart runs it: read-only root filesystem, every capability dropped, no new
#     privileges; the process must be uid/gid 65532 (the image's USER);
#   - the image's HEALTHCHECK passes (`podman healthcheck run`);
#   - `podman stop` with the compose grace period: SIGTERM, exit 0 within it;
#   - the runtime image's size (`podman image inspect`) is at most CHECK_IMAGE_MAX_MB.
# Prints the build time and the image size. Exits non-zero at the first failed check, after
# printing what the containers logged. Its pod and containers are removed in every case.
#
#   scripts/check-image.sh
#
# Needs root (podman as root). Installs podman, buildah, runc, netavark, catatonit, iptables,
# debootstrap and curl from apt when they are missing. The base images are pulled first; when a
# registry cannot be reached, stand-ins with the same names are made here and kept for later
# runs (`podman rmi NAME` to try the pull again):
#   gcr.io/distroless/cc-debian12:nonroot: the Debian packages that image consists of, unpacked
#     with dpkg-deb into an empty root with root/nonroot (65532) users and no shell;
#   docker.io/library/rust:<version>-slim-bookworm: Debian bookworm (debootstrap --variant=minbase)
#     with gcc, libc6-dev, ca-certificates and this machine's Rust <version> (from rustup);
#   the compose file's Redis: localhost/check-image/redis:bookworm, Debian's redis-server.
# podman runs with runc and explicit nofile/nproc limits (crun and podman's default limits fail
# on some hosts, e.g. cgroups v1 hybrid, or a hard RLIMIT_NOFILE below podman's default).
#
# Settings (environment):
#   CHECK_IMAGE_CA_BUNDLE      PEM bundle mounted read-only at /etc/ssl/certs/ca-certificates.crt
#                              into every build step (default: the system bundle), for networks
#                              that re-sign TLS
#   CHECK_IMAGE_TAG            name of the built image (default localhost/cache-layer:check)
#   CHECK_IMAGE_MAX_MB         size limit of the runtime image, MB (10^6 bytes) (default 40)
#   CHECK_IMAGE_LOCK           a lock file: the image build holds it (`flock`), for machines where
#                              only one compile may run at a time
#   CHECK_IMAGE_PULL_TIMEOUT   seconds for each pull of a base image (default 60)
#   CHECK_IMAGE_DEBIAN_MIRROR  Debian archive for the stand-ins (default http://deb.debian.org/debian)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${CHECK_IMAGE_TAG:-localhost/cache-layer:check}"
CA_BUNDLE="${CHECK_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
MAX_MB="${CHECK_IMAGE_MAX_MB:-40}"
LOCK="${CHECK_IMAGE_LOCK:-}"
PULL_TIMEOUT="${CHECK_IMAGE_PULL_TIMEOUT:-60}"
MIRROR="${CHECK_IMAGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_IMAGE="localhost/check-image/debian:bookworm"
REDIS_STANDIN="localhost/check-image/redis:bookworm"
STANDIN_LABEL="check-image.stand-in"

T0=$SECONDS
step() { printf '\n==> %s  [%ss]\n' "$*" "$((SECONDS - T0))"; }
PASSED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS  %s\n' "$*"
}
note() { printf '      %s\n' "$*"; }
die() {
  printf 'FAIL  %s\n' "$*" >&2
  exit 1
}

[[ "$(id -u)" -eq 0 ]] || die "run as root: podman here runs containers as root"

WORK="$(mktemp -d /var/tmp/check-image.XXXXXX)"
POD="check-image-$$"
APP="$POD-app"
REDIS="$POD-redis"
DISK_VOLUME="$POD-disk"
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]] && podman container exists "$APP" 2>/dev/null; then
    echo "---- $APP log (last 40 lines) ----" >&2
    podman logs --tail 40 "$APP" >&2 2>&1 || true
  fi
  if [[ $rc -ne 0 ]] && podman container exists "$REDIS" 2>/dev/null; then
    echo "---- $REDIS log (last 10 lines) ----" >&2
    podman logs --tail 10 "$REDIS" >&2 2>&1 || true
  fi
  podman pod rm -f "$POD" >/dev/null 2>&1 || true
  podman volume rm -f "$DISK_VOLUME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [[ $rc -ne 0 ]]; then echo "check-image: $PASSED passed, 1 failed" >&2; fi
  exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools

step "tools"
missing=()
for pair in podman:podman buildah:buildah runc:runc netavark:/usr/lib/podman/netavark \
  catatonit:catatonit iptables:iptables debootstrap:debootstrap curl:curl; do
  pkg="${pair%%:*}" exe="${pair#*:}"
  command -v "$exe" >/dev/null 2>&1 || [[ -x "$exe" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get install ${missing[*]}"; }
fi
# Python with PyYAML, for reading docker-compose.yml through scripts/packaging_contract.py.
PY=""
for candidate in "$ROOT/.tools/venv/bin/python" python3 /usr/bin/python3; do
  if "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    PY="$candidate"
    break
  fi
done
if [[ -z "$PY" ]]; then
  echo "installing python3-yaml (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml \
    >"$WORK/apt.log" 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends python3-yaml >"$WORK/apt.log" 2>&1
  } || { cat "$WORK/apt.log" >&2; die "apt-get install python3-yaml"; }
  PY=/usr/bin/python3
fi

# runc, and rlimits that root may set here, for every container podman starts (a pod's infra
# container too, which takes no --ulimit): this script's podman calls read this containers.conf
# instead of the system's (it sets nothing else, so podman's built-in defaults apply).
limit() {
  local hard="$1"
  if [[ "$hard" == unlimited || "$hard" -gt 20000 ]]; then echo 20000; else echo "$hard"; fi
}
NOFILE="$(limit "$(ulimit -Hn)")"
NPROC="$(limit "$(ulimit -Hu)")"
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
echo "$(podman --version), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)," \
  "ulimits nofile=$NOFILE nproc=$NPROC"
[[ -r "$CA_BUNDLE" ]] || die "CHECK_IMAGE_CA_BUNDLE=$CA_BUNDLE is not a readable file"

# ---------------------------------------------------------------- what the packaging declares

# docker.io's short names, as podman and docker resolve them.
qualify() {
  local ref="$1" first="${1%%/*}"
  if [[ "$ref" != */* ]]; then
    echo "docker.io/library/$ref"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    echo "$ref"
  else
    echo "docker.io/$ref"
  fi
}

mapfile -t FROMS < <(awk 'toupper($1) == "FROM" {
  for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' Dockerfile)
((${#FROMS[@]} >= 2)) || die "Dockerfile: expected a build stage and a runtime stage"
BUILDER_BASE="$(qualify "${FROMS[0]}")"
RUNTIME_BASE="$(qualify "${FROMS[${#FROMS[@]} - 1]}")"
RUST_WANT="$(sed -n 's/^rust:\([0-9][0-9.]*\)-.*/\1/p' <<<"${FROMS[0]##*/}")"

# The compose file, read by the same code as the static and live packaging checks.
"$PY" - "$WORK" <<'PY' || die "cannot read docker-compose.yml"
import re, shlex, sys
sys.path.insert(0, "scripts")
import packaging_contract as pc

work = sys.argv[1]
services = pc.load_compose()["services"]
app, redis = services[pc.SERVICE], services["redis"]
# The service's own environment: the image's ENV is applied by podman itself.
env = pc.compose_env(base={})
with open(f"{work}/app.env", "w") as f:
    f.write("".join(f"{k}={v}\0" for k, v in env.items()))
cmd = redis.get("command", [])
cmd = cmd if isinstance(cmd, list) else cmd.split()
with open(f"{work}/redis.cmd", "w") as f:
    f.write("".join(f"{a}\0" for a in cmd))

def seconds(value: str) -> int:
    parts = re.findall(r"(\d+)(h|m|s)", str(value))
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts) if parts else int(value)

with open(f"{work}/compose.sh", "w") as f:
    f.write(f"REDIS_IMAGE={shlex.quote(redis['image'])}\n")
    f.write(f"GRACE={seconds(app.get('stop_grace_period', '10s'))}\n")
    f.write(f"APP_PORT={pc.listen_port(env)}\n")
    f.write(f"KEY_PREFIX={shlex.quote(env.get('REDIS_KEY_PREFIX', 'cache-layer'))}\n")
    f.write(f"DISK_DIR={shlex.quote(env.get('DISK_CACHE_DIR', ''))}\n")
PY
# shellcheck source=/dev/null
source "$WORK/compose.sh"
mapfile -d '' -t APP_ENV <"$WORK/app.env"
mapfile -d '' -t REDIS_CMD <"$WORK/redis.cmd"
REDIS_IMAGE="$(qualify "$REDIS_IMAGE")"
echo "build stage FROM $BUILDER_BASE, runtime FROM $RUNTIME_BASE, Redis $REDIS_IMAGE"
echo "compose: ${#APP_ENV[@]} variables for the service, port $APP_PORT, stop grace ${GRACE}s"

# ---------------------------------------------------------------- base images

# The stand-ins' Debian bookworm: debootstrap --variant=minbase, apt pointed at Debian's archive.
make_debian_image() {
  podman image exists "$DEBIAN_IMAGE" && return 0
  echo "making $DEBIAN_IMAGE: debootstrap --variant=minbase bookworm from $MIRROR"
  local root="$WORK/debian-root"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap bookworm ($MIRROR)"; }
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
  tar --numeric-owner -C "$root" -cf - . | podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --change "LABEL $STANDIN_LABEL=debian-bookworm-debootstrap" \
    - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$root"
}

# A stand-in built from a generated Containerfile in $1 (the context) as $2. Its apt uses
# Debian's archive over http: no CA bundle mounted (ca-certificates writes its own).
build_standin() {
  podman build -q --layers=false "${LIMITS[@]}" -t "$2" "$1" >"$WORK/standin.log" 2>&1 \
    || { tail -30 "$WORK/standin.log" >&2; die "building $2"; }
}

# gcr.io/distroless/cc-debian12: what its build files put in it (static: base-files, netbase,
# tzdata, media-types, the CA bundle, passwd/group, /tmp, /home/nonroot; base: libc6, libssl3;
# cc: libgcc-s1, libgomp1, libstdc++6, gcc-12-base), unpacked without maintainer scripts.
make_distroless_standin() {
  local name="$1" user=0 workdir=/ root="$WORK/distroless-root" debs="$WORK/debs"
  if [[ "$name" == *nonroot* ]]; then user=65532 workdir=/home/nonroot; fi
  mkdir -p "$root" "$debs" "$WORK/ca"
  (cd "$debs" && apt-get download base-files netbase tzdata media-types ca-certificates libc6 \
    libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base >"$WORK/download.log" 2>&1) \
    || { apt-get update -qq && (cd "$debs" && apt-get download base-files netbase tzdata \
      media-types ca-certificates libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base \
      >"$WORK/download.log" 2>&1); } || { cat "$WORK/download.log" >&2; die "apt-get download"; }
  local deb
  for deb in "$debs"/*.deb; do
    case "$deb" in
      */ca-certificates_*) dpkg-deb -x "$deb" "$WORK/ca" ;;
      *) dpkg-deb -x "$deb" "$root" ;;
    esac
  done
  # Only the bundle, as distroless ships it (no update-ca-certificates script).
  mkdir -p "$root/etc/ssl/certs" "$root/usr/share/doc/ca-certificates"
  find "$WORK/ca/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat \
    >"$root/etc/ssl/certs/ca-certificates.crt"
  cp "$WORK/ca/usr/share/doc/ca-certificates/copyright" "$root/usr/share/doc/ca-certificates/"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' \
    >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' \
    'networks: files' 'protocols: db files' 'services: db files' >"$root/etc/nsswitch.conf"
  install -d -m 1777 "$root/tmp"
  install -d -m 700 "$root/root"
  install -d -m 755 "$root/home"
  install -d -m 700 -o 65532 -g 65532 "$root/home/nonroot"
  if [[ -e "$root/bin/sh" || -e "$root/usr/bin/sh" ]]; then die "$name stand-in has a shell"; fi
  tar --numeric-owner -C "$root" -cf - . | podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change "USER $user" --change "WORKDIR $workdir" \
    --change "LABEL $STANDIN_LABEL=distroless-cc-debian12-from-debian-packages" \
    - "$name" >/dev/null
  rm -rf "$root" "$debs" "$WORK/ca"
}

# rust:<v>-slim-bookworm: like the official image (bookworm + ca-certificates gcc libc6-dev, Rust
# under /usr/local/rustup and /usr/local/cargo), with this machine's toolchain copied in.
make_rust_standin() {
  local name="$1" rustup_home="${RUSTUP_HOME:-$HOME/.rustup}" dir="" tc version
  [[ -n "$RUST_WANT" ]] || die "cannot read the Rust version from the Dockerfile's FROM ${FROMS[0]}"
  for tc in "$rustup_home"/toolchains/*/; do
    if [[ "$("$tc/bin/rustc" -V 2>/dev/null)" == "rustc $RUST_WANT"[.\ ]* ]]; then
      dir="$(realpath "$tc")"
      break
    fi
  done
  [[ -n "$dir" ]] || die "no Rust $RUST_WANT toolchain under $rustup_home/toolchains for the $name stand-in"
  version="$("$dir/bin/rustc" -V | awk '{print $2}')"
  local rustup_bin
  rustup_bin="$(command -v rustup || echo "${CARGO_HOME:-$HOME/.cargo}/bin/rustup")"
  [[ -x "$rustup_bin" ]] || die "rustup not found (needed for the $name stand-in)"
  make_debian_image
  echo "making $name: $DEBIAN_IMAGE + gcc libc6-dev ca-certificates + Rust $version from $dir"
  local ctx="$WORK/rust-ctx" triple
  triple="$(basename "$dir" | sed -n 's/.*\(x86_64-unknown-linux-gnu\|aarch64-unknown-linux-gnu\)$/\1/p')"
  [[ -n "$triple" ]] || triple="$(uname -m)-unknown-linux-gnu"
  mkdir -p "$ctx/toolchain"
  tar -C "$dir" --exclude=./share/doc -cf - . | tar -C "$ctx/toolchain" -xf -
  cp -L "$rustup_bin" "$ctx/rustup"
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$version
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rustup/toolchains/$version-$triple
COPY rustup /usr/local/cargo/bin/rustup
RUN set -eu; \\
    printf 'version = "12"\\ndefault_toolchain = "%s"\\nprofile = "minimal"\\n' "$version-$triple" \\
      > /usr/local/rustup/settings.toml; \\
    for p in cargo rustc rustdoc rust-gdb rust-lldb; do ln -s rustup "/usr/local/cargo/bin/\$p"; done; \\
    chmod -R a+w /usr/local/rustup /usr/local/cargo; \\
    rustup --version; cargo --version; rustc --version
LABEL $STANDIN_LABEL=rust-$version-bookworm-debootstrap-with-this-machines-toolchain
EOF
  build_standin "$ctx" "$name"
  rm -rf "$ctx"
}

# Redis from Debian's package, run as its redis user (the compose file gives the command).
make_redis_standin() {
  make_debian_image
  echo "making $REDIS_STANDIN: $DEBIAN_IMAGE + Debian's redis-server"
  local ctx="$WORK/redis-ctx"
  mkdir -p "$ctx"
  cat >"$ctx/Containerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \\
    && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
LABEL $STANDIN_LABEL=redis-from-debian-bookworm
EOF
  build_standin "$ctx" "$REDIS_STANDIN"
  rm -rf "$ctx"
}

standin_of() { podman image inspect --format "{{index .Labels \"$STANDIN_LABEL\"}}" "$1" 2>/dev/null || true; }

# ensure_image NAME KIND: NAME present (pulled now or earlier), else a stand-in made by KIND.
ensure_image() {
  local name="$1" kind="$2" what
  if podman image exists "$name"; then
    what="$(standin_of "$name")"
    if [[ -n "$what" && "$what" != "<no value>" ]]; then
      echo "$name: the stand-in made by an earlier run ($what)"
    else
      echo "$name: present"
    fi
    return 0
  fi
  echo "$name: pulling (at most ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" podman pull -q "$name" >"$WORK/pull.log" 2>&1; then
    echo "$name: pulled"
    return 0
  fi
  echo "NOTE: $name cannot be pulled ($(tail -1 "$WORK/pull.log" | cut -c1-160))"
  echo "NOTE: using a STAND-IN made here instead of the real $name"
  "make_${kind}_standin" "$name"
}

step "base images"
ensure_image "$RUNTIME_BASE" distroless
ensure_image "$BUILDER_BASE" rust
if ! podman image exists "$REDIS_IMAGE" && podman image exists "$REDIS_STANDIN"; then
  echo "$REDIS_IMAGE: using the stand-in $REDIS_STANDIN made by an earlier run"
  REDIS_IMAGE="$REDIS_STANDIN"
elif ! podman image exists "$REDIS_IMAGE"; then
  echo "$REDIS_IMAGE: pulling (at most ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" podman pull -q "$REDIS_IMAGE" >"$WORK/pull.log" 2>&1; then
    echo "$REDIS_IMAGE: pulled"
  else
    echo "NOTE: $REDIS_IMAGE cannot be pulled ($(tail -1 "$WORK/pull.log" | cut -c1-160))"
    echo "NOTE: using a STAND-IN made here instead: $REDIS_STANDIN (Debian's redis-server)"
    make_redis_standin
    REDIS_IMAGE="$REDIS_STANDIN"
  fi
else
  echo "$REDIS_IMAGE: present"
fi

# ---------------------------------------------------------------- build

step "podman build (Dockerfile as it is; --format docker keeps the HEALTHCHECK)"
BUILD=(podman build --format docker --layers "${LIMITS[@]}"
  -v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" -f Dockerfile -t "$IMAGE" .)
echo "${BUILD[*]}"
if [[ -n "$LOCK" ]]; then
  # One compile at a time on this machine: the build waits for the lock (not counted as build time).
  lock_start=$SECONDS
  exec 9>>"$LOCK"
  flock 9
  echo "(waited $((SECONDS - lock_start))s for $LOCK)"
fi
build_start=$SECONDS
set +e
"${BUILD[@]}" 2>&1 | tee "$WORK/build.log" \
  | grep --line-buffered -E '^(\[[0-9/]+\] )?(STEP|COMMIT)|^Successfully|^--> Using cache|^ *Finished|^error'
build_rc=${PIPESTATUS[0]}
set -e
BUILD_SECS=$((SECONDS - build_start))
if [[ -n "$LOCK" ]]; then flock -u 9 && exec 9>&-; fi
if [[ $build_rc -ne 0 ]]; then
  tail -60 "$WORK/build.log" >&2
  die "podman build exited $build_rc after ${BUILD_SECS}s"
fi
cached=$(grep -c '^--> Using cache' "$WORK/build.log" || true)
pass "image built in ${BUILD_SECS}s ($cached steps from podman's layer cache): $IMAGE"
# Crates compiled by each RUN step that ran (a step taken from the cache compiles none).
awk '/^(\[[0-9\/]+\] )?STEP [0-9\/]+: RUN/ {
       if (run) print run n
       run = $0; sub(/: RUN.*/, " (RUN): ", run); n = 0 }
     /^ *Compiling / { n++ }
     END { if (run) print run n }' "$WORK/build.log" | sed 's/^/      /; s/$/ crates compiled/'

SIZE="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
SIZE_MB="$(awk -v b="$SIZE" 'BEGIN { printf "%.1f", b / 1e6 }')"
base_size="$(podman image inspect --format '{{.Size}}' "$RUNTIME_BASE")"
base_mb="$(awk -v b="$base_size" 'BEGIN { printf "%.1f", b / 1e6 }')"
note "runtime image: $SIZE bytes = $SIZE_MB MB (base $RUNTIME_BASE: $base_mb MB)"
if [[ -n "$(standin_of "$RUNTIME_BASE" | sed 's/<no value>//')" ]]; then
  note "(on the stand-in for $RUNTIME_BASE)"
fi

health="$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE")"
[[ "$health" == *'"/usr/local/bin/cache-layer","healthcheck"'* ]] \
  || die "the image has no HEALTHCHECK running cache-layer healthcheck: $health"
pass "image keeps its HEALTHCHECK: $health"
user="$(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
[[ "$user" == 65532* ]] || die "image USER is '$user', not 65532"
if [[ -n "$DISK_DIR" ]]; then
  # A new named volume takes the ownership of the image's directory (Docker and podman copy it
  # up), so the image must hold DISK_CACHE_DIR owned by its user.
  image_root="$(podman image mount "$IMAGE")" || die "podman image mount $IMAGE"
  owner="$(stat -c %u:%g "$image_root$DISK_DIR" 2>/dev/null || echo missing)"
  podman image unmount "$IMAGE" >/dev/null || true
  [[ "$owner" == 65532:65532 ]] || die "the image's $DISK_DIR (DISK_CACHE_DIR) is $owner, not a directory of 65532:65532"
  pass "the image holds $DISK_DIR (the compose DISK_CACHE_DIR) owned by 65532:65532"
fi

# ---------------------------------------------------------------- run

step "run: Redis and the image in one pod, compose environment, chart security settings"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE_URL="http://127.0.0.1:$PORT"
podman pod create --name "$POD" -p "127.0.0.1:$PORT:$APP_PORT" \
  --add-host redis:127.0.0.1 --add-host otel-collector:127.0.0.1 >/dev/null
podman run -d --name "$REDIS" --pod "$POD" "${LIMITS[@]}" "$REDIS_IMAGE" "${REDIS_CMD[@]}" >/dev/null
for _ in $(seq 50); do
  [[ "$(podman exec "$REDIS" redis-cli ping 2>/dev/null)" == PONG ]] && break
  sleep 0.2
done
[[ "$(podman exec "$REDIS" redis-cli ping 2>/dev/null)" == PONG ]] \
  || die "Redis ($REDIS_IMAGE) does not answer PING"
pass "Redis $REDIS_IMAGE answers in the pod (redis:6379)"

env_args=()
for kv in "${APP_ENV[@]}"; do env_args+=(-e "$kv"); done
if [[ -n "$DISK_DIR" ]]; then
  # The compose file's named volume: a new, empty one, mounted where DISK_CACHE_DIR points.
  podman volume create "$DISK_VOLUME" >/dev/null
  env_args+=(-v "$DISK_VOLUME:$DISK_DIR")
fi
# podman logs an error when it cannot reach systemd for the health check's timer; the check
# runs the health check itself below, so that output is kept out of the way.
podman run -d --name "$APP" --pod "$POD" "${LIMITS[@]}" \
  --read-only --read-only-tmpfs=false --cap-drop=all --security-opt=no-new-privileges \
  "${env_args[@]}" "$IMAGE" >/dev/null 2>"$WORK/run.err" \
  || { cat "$WORK/run.err" >&2; die "podman run $IMAGE"; }
ready=""
for _ in $(seq 100); do
  if curl -fsS --max-time 2 "$BASE_URL/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  [[ "$(podman inspect --format '{{.State.Running}}' "$APP")" == true ]] \
    || die "the container exited: $(podman inspect --format '{{.State.ExitCode}}' "$APP")"
  sleep 0.2
done
[[ -n "$ready" ]] || die "/readyz did not answer 200 on $BASE_URL within 20s"
pass "service ready on $BASE_URL (published from the pod's :$APP_PORT)"

step "requests"
first="$(curl -fsS --max-time 10 "$BASE_URL/items/foo")" || die "GET /items/foo failed"
[[ "$first" == *'"source":"origin"'* ]] || die "first GET /items/foo: $first (expected source origin)"
pass "GET /items/foo: $first"
second="$(curl -fsS --max-time 10 "$BASE_URL/items/foo")" || die "second GET /items/foo failed"
[[ "$second" == *'"source":"cache"'* ]] || die "second GET /items/foo: $second (expected source cache)"
pass "GET /items/foo again: $second"
keys="$(podman exec "$REDIS" redis-cli --scan --pattern "$KEY_PREFIX:*foo")"
[[ -n "$keys" ]] || die "no key $KEY_PREFIX:*foo in Redis"
pass "Redis holds the entry: $(tr '\n' ' ' <<<"$keys")"
metrics="$(curl -fsS --max-time 10 "$BASE_URL/metrics")" || die "GET /metrics failed"
for name in cache_hits_total cache_misses_total; do
  grep -q "^$name" <<<"$metrics" || die "/metrics has no $name"
done
pass "/metrics answers ($(grep -c '^[a-z]' <<<"$metrics") samples, cache_hits_total and cache_misses_total among them)"
if [[ -n "$DISK_DIR" ]]; then
  health="$(curl -fsS --max-time 10 "$BASE_URL/health")" || die "GET /health failed"
  disk="$("$PY" -c 'import json, sys; print(json.load(sys.stdin).get("tiers", {}).get("disk"))' <<<"$health")"
  [[ "$disk" == ok ]] || die "/health tiers.disk is '$disk' with DISK_CACHE_DIR=$DISK_DIR on a named volume: $health"
  mountpoint="$(podman volume inspect --format '{{.Mountpoint}}' "$DISK_VOLUME")"
  owner="$(stat -c %u:%g "$mountpoint")"
  [[ "$owner" == 65532:65532 ]] || die "the named volume is owned by $owner, not 65532:65532"
  pass "disk tier on the named volume at $DISK_DIR: /health tiers.disk ok, volume owned by $owner"
fi

step "health check, user, security"
podman healthcheck run "$APP" >"$WORK/health.out" 2>&1 \
  || die "podman healthcheck run: $(cat "$WORK/health.out")"
pass "podman healthcheck run: healthy"
pid="$(podman inspect --format '{{.State.Pid}}' "$APP")"
status="/proc/$pid/status"
uids="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "$status")"
gids="$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "$status")"
[[ "$uids" == "65532 65532 65532 65532" && "$gids" == "65532 65532 65532 65532" ]] \
  || die "the process runs as uid '$uids' gid '$gids', not 65532"
pass "process runs as uid 65532, gid 65532"
for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
  value="$(awk -v c="$cap:" '$1 == c { print $2 }' "$status")"
  [[ "$value" =~ ^0+$ ]] || die "$cap is $value, not empty"
done
pass "no capabilities (CapInh, CapPrm, CapEff, CapBnd, CapAmb all 0)"
[[ "$(awk '/^NoNewPrivs:/ { print $2 }' "$status")" == 1 ]] || die "NoNewPrivs is not set"
pass "no new privileges (NoNewPrivs: 1)"
rootopts="$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -1)"
[[ ",$rootopts," == *,ro,* ]] || die "the root filesystem is mounted '$rootopts', not read-only"
writable="$(awk '$5 ~ /^\/(tmp|var\/tmp|run|home)$/ { print $5 }' "/proc/$pid/mountinfo" | tr '\n' ' ')"
[[ -z "$writable" ]] || die "mounts over the read-only root: $writable"
pass "root filesystem read-only ($rootopts), nothing mounted on /tmp, /var/tmp, /run or /home"

step "SIGTERM: podman stop -t $GRACE (the compose stop_grace_period)"
stop_start=$(date +%s%N)
podman stop -t "$GRACE" "$APP" >/dev/null 2>"$WORK/stop.err" \
  || { cat "$WORK/stop.err" >&2; die "podman stop"; }
stop_ms=$((($(date +%s%N) - stop_start) / 1000000))
code="$(podman inspect --format '{{.State.ExitCode}}' "$APP")"
[[ "$code" == 0 ]] || die "exit status $code after SIGTERM (${stop_ms} ms)"
((stop_ms < GRACE * 1000)) || die "stopping took ${stop_ms} ms, not within the ${GRACE}s grace"
pass "exit 0, ${stop_ms} ms after SIGTERM (grace ${GRACE}s)"

step "size"
awk -v b="$SIZE" -v m="$MAX_MB" 'BEGIN { exit !(b <= m * 1e6) }' \
  || die "runtime image is $SIZE_MB MB, over CHECK_IMAGE_MAX_MB=$MAX_MB"
pass "runtime image $SIZE_MB MB <= $MAX_MB MB"

step "summary"
echo "image $IMAGE: $SIZE_MB MB; build ${BUILD_SECS}s; whole check $((SECONDS - T0))s"
echo "check-image: $PASSED passed, 0 failed"
