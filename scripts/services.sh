#!/usr/bin/env bash
# Make sure the database servers the test suite talks to are running on loopback:
#
#   PostgreSQL  127.0.0.1:5432  user postgres, password "postgres", database test
#               -> postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/test
#   MariaDB     127.0.0.1:3306  user root, empty password, database test
#               -> mysql+pymysql://root@127.0.0.1:3306/test
#   Redis       127.0.0.1:6379  -> redis://127.0.0.1:6379/0
#               plus the redis-server and redis-cli binaries, which the tests use
#               to start a Redis Cluster and a Sentinel on other loopback ports.
#   memcached   127.0.0.1:11211 -> memcached://127.0.0.1:11211
#               the tests only need the memcached binary (Debian's package):
#               they start their own servers on other loopback ports.
#
# For each one: if it answers, leave it alone. Otherwise install it when its
# binaries are missing (Debian/Ubuntu, as root: apt-get), start it, and wait up
# to $TOWERSESS_SERVICES_TIMEOUT seconds (default 30) for it to answer. Then
# make sure the test database exists and the TCP login above works (on a fresh
# Debian install: set the postgres role's password; let MariaDB's root log in
# over TCP with an empty password). Every step is idempotent; a no-op when all
# is in place. Prints one line per service.
#
# Usage: scripts/services.sh [postgresql] [mariadb] [redis] [memcached]   (default: all four)
set -euo pipefail

LOG_PREFIX=services
# shellcheck source=scripts/_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
PG_PASSWORD=postgres
MY_PORT=3306
REDIS_PORT=6379
MEMCACHED_PORT=11211
TEST_DB="test"
WAIT_SECONDS=${TOWERSESS_SERVICES_TIMEOUT:-30}

# report WHAT STEP...: one line saying what was done, steps joined by ", ".
report() {
    local what=$1 line
    shift
    line=$(printf '%s, ' "$@")
    log "$what: ${line%, }"
}

# Something accepts TCP connections on 127.0.0.1:PORT (no client tools needed).
port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# wait_until CHECK...: run CHECK until it succeeds or WAIT_SECONDS have passed.
wait_until() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
}

# --- PostgreSQL ---------------------------------------------------------------

pg_server_installed() {
    have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}
pg_answers() { pg_isready -q -h "$HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1; }
# pg_sql DB SQL: run SQL over TCP as the test user, print unaligned tuples.
pg_sql() {
    PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -w -q -v ON_ERROR_STOP=1 \
        -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$1" -tA -c "$2"
}

pg_start() {
    local version out
    # The newest cluster version (there is normally only one).
    # shellcheck disable=SC2012
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [[ -n $version && -d /etc/postgresql/$version/main ]] ||
        die "postgresql: not running and no cluster in /etc/postgresql/*/main (create one: pg_createcluster <version> main)"
    is_root || [[ $(id -un) == postgres ]] ||
        die "postgresql: not running on $HOST:$PG_PORT, and only root can start it here (sudo $0)"
    if is_root && [[ ! -d /var/run/postgresql ]]; then
        install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    fi
    if ! out=$(pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1); then
        printf '%s\n' "$out" >&2
        log "postgresql: pg_ctlcluster $version main start failed; waiting anyway"
    fi
}

ensure_postgresql() {
    local did=()
    if pg_answers; then
        did+=("already running")
    else
        pg_start
        wait_until pg_answers ||
            die "postgresql: nothing answers on $HOST:$PG_PORT after ${WAIT_SECONDS}s (see /var/log/postgresql/)"
        did+=("started")
    fi

    if ! pg_sql postgres 'select 1' >/dev/null 2>&1; then
        # Fresh Debian install: TCP logins need a password (scram-sha-256) and
        # the postgres role has none. Set it over the local socket (peer auth).
        is_root || die "postgresql: cannot log in as $PG_USER:$PG_PASSWORD over TCP; run this script as root to set the password"
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres \
            -c "ALTER ROLE $PG_USER WITH LOGIN PASSWORD '$PG_PASSWORD'") >/dev/null ||
            die "postgresql: could not set the password of role $PG_USER"
        pg_sql postgres 'select 1' >/dev/null ||
            die "postgresql: still cannot log in as $PG_USER over TCP on $HOST:$PG_PORT; check pg_hba.conf (a 'host all all 127.0.0.1/32 scram-sha-256' line)"
        did+=("set role $PG_USER's password to '$PG_PASSWORD'")
    fi

    if [[ $(pg_sql postgres "select 1 from pg_database where datname = '$TEST_DB'") == 1 ]]; then
        did+=("database $TEST_DB exists")
    else
        # Tolerate a concurrent run creating it first.
        pg_sql postgres "create database $TEST_DB" >/dev/null 2>&1 ||
            [[ $(pg_sql postgres "select 1 from pg_database where datname = '$TEST_DB'") == 1 ]] ||
            die "postgresql: could not create database $TEST_DB"
        did+=("created database $TEST_DB")
    fi
    report "postgresql $HOST:$PG_PORT" "${did[@]}"
}

# --- MariaDB ------------------------------------------------------------------

my_admin() { if have mariadb-admin; then mariadb-admin "$@"; else mysqladmin "$@"; fi; }
my_client() { if have mariadb; then mariadb "$@"; else mysql "$@"; fi; }
# `ping` exits 0 whenever the server answers, even with "Access denied".
my_answers() {
    my_admin --protocol=tcp -h "$HOST" -P "$MY_PORT" -uroot --connect-timeout=3 ping >/dev/null 2>&1
}
# my_sql SQL: run SQL over TCP as root with an empty password.
my_sql() {
    my_client --protocol=tcp -h "$HOST" -P "$MY_PORT" -uroot --connect-timeout=5 -N -B -e "$1"
}

my_start() {
    is_root || die "mariadb: not running on $HOST:$MY_PORT, and only root can start it here (sudo $0)"
    # /run is often a fresh tmpfs; mariadbd wants to put its socket and pid there.
    [[ -d /run/mysqld ]] || install -d -m 755 -o mysql -g root /run/mysqld
    # mariadbd refuses to run as root; --user makes it switch to mysql (Debian's
    # stock config does not set user=). It stays in the foreground, hence
    # --background; its start-up errors go to the --output file.
    [[ -d /var/log/mysql ]] || install -d -m 2750 -o mysql -g adm /var/log/mysql
    start-stop-daemon --start --oknodo --background --output /var/log/mysql/towersess-start.log \
        --exec /usr/sbin/mariadbd -- --user=mysql
}

ensure_mariadb() {
    local did=()
    if my_answers; then
        did+=("already running")
    else
        my_start
        wait_until my_answers ||
            die "mariadb: nothing answers on $HOST:$MY_PORT after ${WAIT_SECONDS}s (see /var/log/mysql/towersess-start.log and /var/log/mysql/error.log)"
        did+=("started")
    fi

    if ! my_sql 'select 1' >/dev/null 2>&1; then
        # Fresh Debian install: root@localhost only authenticates via
        # unix_socket. Let root in over TCP with an empty password too (also as
        # root@127.0.0.1, which is what matches with skip-name-resolve).
        is_root || die "mariadb: root cannot log in over TCP with an empty password; run this script as root to allow it"
        my_client --protocol=socket -uroot -N -B -e "
            ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
            CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
            GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
            FLUSH PRIVILEGES;" ||
            die "mariadb: could not change root's authentication over the local socket"
        my_sql 'select 1' >/dev/null ||
            die "mariadb: root still cannot log in over TCP on $HOST:$MY_PORT with an empty password"
        did+=("allowed root over TCP with an empty password")
    fi

    if [[ -n $(my_sql "SHOW DATABASES LIKE '$TEST_DB'") ]]; then
        did+=("database $TEST_DB exists")
    else
        my_sql "CREATE DATABASE IF NOT EXISTS \`$TEST_DB\`" ||
            die "mariadb: could not create database $TEST_DB"
        did+=("created database $TEST_DB")
    fi
    report "mariadb $HOST:$MY_PORT" "${did[@]}"
}

# --- Redis --------------------------------------------------------------------

redis_answers() {
    [[ $(timeout 5 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_start() {
    local dir=/var/lib/redis logdir=/var/log/redis
    if ! is_root; then
        # Can't write the system directories: keep everything under /tmp.
        dir=${TMPDIR:-/tmp}/towersess-redis
        logdir=$dir
    fi
    mkdir -p "$dir" "$logdir"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir "$dir" --logfile "$logdir/ci.log" ||
        die "redis: redis-server failed to start (see $logdir/ci.log)"
    REDIS_LOG=$logdir/ci.log
}

ensure_redis() {
    local did=()
    if redis_answers; then
        did+=("already running")
    else
        REDIS_LOG=
        redis_start
        wait_until redis_answers ||
            die "redis: nothing answers PONG on $HOST:$REDIS_PORT after ${WAIT_SECONDS}s (see $REDIS_LOG)"
        did+=("started")
    fi
    did+=("$(redis-server --version | grep -o 'v=[0-9.]*' | sed 's/v=/redis-server /')")
    report "redis $HOST:$REDIS_PORT" "${did[@]}"
}

# --- memcached ----------------------------------------------------------------

memcached_answers() {
    local reply
    reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$MEMCACHED_PORT; printf 'version\r\n' >&3; head -c 8 <&3" 2>/dev/null) || return 1
    [[ $reply == VERSION* ]]
}

memcached_start() {
    local user=()
    # memcached refuses to run as root without -u; Debian's package makes a
    # memcache user for it.
    if is_root; then
        if id memcache >/dev/null 2>&1; then user=(-u memcache); else user=(-u root); fi
    fi
    # Loopback and TCP only (-U 0: no UDP), 64 MB, in the background (-d).
    memcached -d -l "$HOST" -p "$MEMCACHED_PORT" -U 0 -m 64 "${user[@]}" ||
        die "memcached: failed to start"
}

ensure_memcached() {
    local did=()
    if memcached_answers; then
        did+=("already running")
    else
        memcached_start
        wait_until memcached_answers ||
            die "memcached: nothing answers on $HOST:$MEMCACHED_PORT after ${WAIT_SECONDS}s"
        did+=("started")
    fi
    did+=("$(memcached -V)")
    report "memcached $HOST:$MEMCACHED_PORT" "${did[@]}"
}

# --- main ---------------------------------------------------------------------

want_pg='' want_my='' want_redis='' want_memcached=''
if (($# == 0)); then
    set -- postgresql mariadb redis memcached
fi
for arg in "$@"; do
    case $arg in
        postgresql | postgres | pg) want_pg=1 ;;
        mariadb | mysql) want_my=1 ;;
        redis) want_redis=1 ;;
        memcached) want_memcached=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown service '$arg' (expected postgresql, mariadb, redis or memcached)" ;;
    esac
done

# Find what is missing and install it all in one apt-get run. A server package
# is only needed when nothing listens on its port yet (it might run elsewhere,
# e.g. in a container); the client tools are always needed.
packages=()
if [[ -n $want_pg ]]; then
    if ! port_open "$PG_PORT" && ! pg_server_installed; then
        packages+=(postgresql)
    elif ! have pg_isready || ! have psql; then
        packages+=(postgresql-client)
    fi
fi
if [[ -n $want_my ]]; then
    if ! port_open "$MY_PORT" && [[ ! -x /usr/sbin/mariadbd ]]; then
        packages+=(mariadb-server)
    elif ! { have mariadb-admin || have mysqladmin; } || ! { have mariadb || have mysql; }; then
        packages+=(mariadb-client)
    fi
fi
if [[ -n $want_redis ]]; then
    # redis-server is always needed: the tests start their own Cluster/Sentinel.
    if ! have redis-server; then
        packages+=(redis-server)
    elif ! have redis-cli; then
        packages+=(redis-tools)
    fi
fi
if [[ -n $want_memcached ]] && ! have memcached; then
    # Always needed: the tests start their own memcached processes.
    packages+=(memcached)
fi
if ((${#packages[@]})); then
    apt_install "${packages[@]}"
fi

[[ -z $want_pg ]] || ensure_postgresql
[[ -z $want_my ]] || ensure_mariadb
[[ -z $want_redis ]] || ensure_redis
[[ -z $want_memcached ]] || ensure_memcached
