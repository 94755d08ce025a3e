# Shared by scripts/run and scripts/test: installs what is missing (system packages, the Garage S3
# server) and starts Postgres, Redis and Garage on loopback ports under one state folder, reusing
# whatever is already installed or running. Writes the connection settings to $STATE/env.
#
# Overrides: WM_STATE_DIR (default: .local in the repository), WM_PG_PORT (55432),
# WM_REDIS_PORT (56379), WM_S3_PORT (53900; Garage also uses the next ports up to +3).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${WM_STATE_DIR:-$ROOT/.local}"
PG_PORT="${WM_PG_PORT:-55432}"
REDIS_PORT="${WM_REDIS_PORT:-56379}"
S3_PORT="${WM_S3_PORT:-53900}"
GARAGE_VERSION="2.5.0"
BUCKET="watermark"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "please install these packages yourself: $*"
  say "installing $*"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

garage_bin() {
  if command -v garage >/dev/null 2>&1; then command -v garage
  elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage"
  fi
}

# Installs system packages and tools that are missing; reuses what is there.
ensure_tools() {
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust (https://rustup.rs) first"
  local missing=()
  [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/pg_ctl" ] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)       # libjpeg-turbo's build
  command -v nasm >/dev/null 2>&1 || missing+=(nasm)         # libjpeg-turbo's SIMD code
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # the local services' certificates
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)  # the nginx tests
  [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || command -v ip >/dev/null 2>&1 || missing+=(iproute2)  # the multi-host test
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if [ -z "$(garage_bin)" ]; then
    say "building the Garage S3 server $GARAGE_VERSION from crates.io (once; 15-25 minutes on 2 cores)"
    cargo install --locked garage --version "$GARAGE_VERSION"
  fi
}

# Installs Debian's chromium and its chromedriver when missing: the browser tests drive them
# (headless). Distribution packages only: nothing downloads a browser build of its own.
ensure_browser() {
  local missing=()
  [ -x /usr/bin/chromium ] || [ -x /usr/lib/chromium/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || [ -x /usr/lib/chromium/chromedriver ] || missing+=(chromium-driver)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Secrets of this state folder, made once.
ensure_secrets() {
  mkdir -p "$STATE"
  if [ ! -f "$STATE/secrets" ]; then
    # Readable by its owner only from its first byte; the umask stays the caller's.
    (
      umask 077
      {
        echo "PG_PASSWORD=$(hex 16)"
        echo "REDIS_PASSWORD=$(hex 16)"
        echo "GARAGE_RPC_SECRET=$(hex 32)"
        echo "S3_KEY_ID=GK$(hex 12)"
        echo "S3_SECRET=$(hex 32)"
      } > "$STATE/secrets.new"
    )
    mv "$STATE/secrets.new" "$STATE/secrets"
  fi
  # shellcheck disable=SC1091
  . "$STATE/secrets"
}

# A certificate authority of this state folder, and a certificate it signed for 127.0.0.1 and
# localhost: Postgres serves TLS with it, and the TLS tests start a Redis with it and check that
# the apps verify it (sslmode=verify-full, rediss://).
ensure_tls() {
  local tls="$STATE/tls"
  [ -f "$tls/server.pem" ] && [ -f "$tls/ca.pem" ] && return 0
  say "making a test certificate authority and a certificate for 127.0.0.1 in $tls"
  mkdir -p "$tls"
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=watermark local test CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null
  ) || die "openssl could not make the test certificates in $tls"
  chmod 644 "$tls/ca.pem" "$tls/server.pem"
}

# Sets bin, data, run and user for the Postgres of this state folder, and defines pgrun.
pg_paths() {
  bin="$(pg_bin)"; data="$STATE/pg"; run="$STATE/pg-run"
  user="$(id -un)"
  [ "$(id -u)" = 0 ] && user=postgres
  pgrun() { if [ "$user" = "$(id -un)" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }
  # As root, Postgres runs as the postgres user, who may not reach a checkout under /root:
  # then its files live under /var/tmp, one folder per state folder.
  mkdir -p "$STATE"
  if [ "$user" != "$(id -un)" ] && ! runuser -u "$user" -- test -x "$STATE"; then
    local alt
    alt="/var/tmp/watermark-$(printf %s "$STATE" | md5sum | cut -c1-12)"
    mkdir -p "$alt"; chmod 755 "$alt"
    data="$alt/pg"; run="$alt/pg-run"
  fi
}

# Restarts the running Postgres (fast shutdown: open connections are cut), as the fault tests do.
restart_postgres() {
  local bin data run user
  pg_paths
  pgrun "$bin/pg_ctl" -D "$data" -l "$run/postgres.log" -m fast -w -t 60 restart >/dev/null
}

start_postgres() {
  local bin data run user
  pg_paths
  # Running already with TLS and pg_stat_statements (which the scaling test counts with): reuse
  # it; running without them (started by an older version of this script): restart it.
  local shown
  shown="$(PGPASSWORD="$PG_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U watermark -d watermark \
    -Atc "select current_setting('ssl') || ' ' || current_setting('shared_preload_libraries')" 2>/dev/null || true)"
  [ "$shown" = "on pg_stat_statements" ] && return 0
  if [ -n "$shown" ]; then
    say "restarting Postgres with TLS and pg_stat_statements"
    pgrun "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  fi
  mkdir -p "$run"
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a Postgres cluster in $data"
    mkdir -p "$data"
    local pw="$run/initial-password"
    (umask 077; printf '%s\n' "$PG_PASSWORD" > "$pw")
    [ "$user" = "$(id -un)" ] || chown -R "$user" "$data" "$run"
    pgrun "$bin/initdb" -D "$data" -U watermark --pwfile="$pw" --auth=scram-sha-256 -E UTF8 >/dev/null \
      || { rm -f "$pw"; die "initdb failed in $data"; }
    rm -f "$pw"
  fi
  # Postgres reads its key as its own user, which may not reach $STATE.
  cp "$STATE/tls/server.pem" "$STATE/tls/server.key" "$run/"
  chmod 600 "$run/server.key"
  [ "$user" = "$(id -un)" ] || chown -R "$user" "$run"
  say "starting Postgres on 127.0.0.1:$PG_PORT"
  pgrun "$bin/pg_ctl" -D "$data" -l "$run/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $run -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c ssl=on -c ssl_cert_file=$run/server.pem -c ssl_key_file=$run/server.key -c shared_preload_libraries=pg_stat_statements" start >/dev/null \
    || die "Postgres did not start; see $run/postgres.log"
  PGPASSWORD="$PG_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U watermark -d postgres -Atc \
    "select 1 from pg_database where datname='watermark'" | grep -q 1 \
    || PGPASSWORD="$PG_PASSWORD" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U watermark -d postgres -qc 'create database watermark' >/dev/null
}

start_redis() {
  if redis-cli -p "$REDIS_PORT" --no-auth-warning -a "$REDIS_PASSWORD" ping 2>/dev/null | grep -q PONG; then
    return 0
  fi
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  mkdir -p "$STATE/redis"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --dir "$STATE/redis" \
    --save "" --appendonly no --requirepass "$REDIS_PASSWORD" \
    --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" >/dev/null
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" --no-auth-warning -a "$REDIS_PASSWORD" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  die "Redis did not start; see $STATE/redis.log"
}

start_garage() {
  local garage conf node
  garage="$(garage_bin)"; conf="$STATE/garage.toml"
  mkdir -p "$STATE/garage/meta" "$STATE/garage/data"
  cat > "$conf" <<TOML
metadata_dir = "$STATE/garage/meta"
data_dir = "$STATE/garage/data"
db_engine = "lmdb"
replication_factor = 1
# Images and zips of images do not compress: zstd would only spend CPU on every PUT and GET.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((S3_PORT + 1))"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((S3_PORT + 3))"
TOML
  chmod 600 "$conf"
  if ! "$garage" -c "$conf" status >/dev/null 2>&1; then
    say "starting Garage (S3) on 127.0.0.1:$S3_PORT"
    nohup "$garage" -c "$conf" server > "$STATE/garage.log" 2>&1 &
    echo $! > "$STATE/garage.pid"
    for _ in $(seq 100); do
      "$garage" -c "$conf" status >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  "$garage" -c "$conf" status >/dev/null 2>&1 || die "Garage did not start; see $STATE/garage.log"
  if "$garage" -c "$conf" status 2>/dev/null | grep -q 'NO ROLE ASSIGNED'; then
    node="$("$garage" -c "$conf" status 2>/dev/null | awk '/127.0.0.1:'"$((S3_PORT + 1))"'/ {print $1; exit}')"
    "$garage" -c "$conf" layout assign -z dc1 -c 1G "$node" >/dev/null
    "$garage" -c "$conf" layout apply --version 1 >/dev/null
  fi
  "$garage" -c "$conf" key info watermark >/dev/null 2>&1 \
    || "$garage" -c "$conf" key import --yes "$S3_KEY_ID" "$S3_SECRET" -n watermark >/dev/null
  "$garage" -c "$conf" bucket info "$BUCKET" >/dev/null 2>&1 \
    || "$garage" -c "$conf" bucket create "$BUCKET" >/dev/null
  "$garage" -c "$conf" bucket allow --read --write --owner "$BUCKET" --key watermark >/dev/null
  # Tests give every system under test a bucket of its own.
  "$garage" -c "$conf" key allow --create-bucket watermark >/dev/null
  # The S3 API answers once the layout is live.
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && return 0
    sleep 0.2
  done
  die "Garage's S3 API does not answer; see $STATE/garage.log"
}

# Installs what is missing, starts what is not running, and writes $STATE/env.
ensure_services() {
  ensure_tools
  ensure_secrets
  ensure_tls
  start_postgres
  start_redis
  start_garage
  # Holds the passwords: readable by its owner only from its first byte (a file written anew,
  # so an older, wider mode cannot stay), with the umask left as the caller's.
  rm -f "$STATE/env"
  (umask 077; cat > "$STATE/env") <<ENV
DATABASE_URL=postgres://watermark:$PG_PASSWORD@127.0.0.1:$PG_PORT/watermark
REDIS_URL=redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/
S3_ENDPOINT=http://127.0.0.1:$S3_PORT
S3_REGION=us-east-1
S3_BUCKET=$BUCKET
S3_ACCESS_KEY_ID=$S3_KEY_ID
S3_SECRET_ACCESS_KEY=$S3_SECRET
WM_REDIS_PORT=$REDIS_PORT
WM_PG_PORT=$PG_PORT
WM_STATE_DIR=$STATE
WM_TLS_CA=$STATE/tls/ca.pem
WM_TLS_CERT=$STATE/tls/server.pem
WM_TLS_KEY=$STATE/tls/server.key
ENV
  say "Postgres, Redis and Garage are up (settings in $STATE/env)"
}
