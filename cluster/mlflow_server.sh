#!/usr/bin/env bash
# The cluster's MLflow tracking server, on the node that runs it (the Ray head; SLURM's first node):
#   bash cluster/mlflow_server.sh start [HOST] [PORT]   start it (again), wait until it answers, exit 0
#   bash cluster/mlflow_server.sh stop                  stop the one this script started
# - MLflow's basic-auth app: a client needs the user and password. The admin password is made once
#   (random, never printed) into ~/.mlflow/credentials (mode 600), the file MLflow's clients read by
#   themselves (as do the variables MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which win).
# - It listens on HOST (default: this node's first private address, never 0.0.0.0), port 5000.
# - With MLFLOW_FOLLOW_RAY=1 (cluster.yaml's head_start_ray_commands, right after `ray start --head`), it
#   ends when that node's Ray ends (`ray down`, `ray stop`): a watcher follows the GCS server Ray just
#   started. Otherwise (SLURM, by hand) there is no watcher, whatever other Ray runs on the node (another
#   job's, which would take the server down with it when it ends): `stop` ends it.
# - The store: sqlite in $MLFLOW_DIR (default ~/mlflow), artifacts served by the server from there; a study
#   whose storage is s3://... keeps its artifacts and a copy of the store there instead (studies/archive.py:
#   server.json, written here, says which file serves which URL).
# - Host check: MLflow 3 allows only localhost and private addresses in a request's Host header; the node's
#   own address (public on many clusters) and loopback on any port are allowed here, MLFLOW_ALLOWED_HOSTS more.
# - One worker process (MLFLOW_WORKERS; a study's driver is its only heavy client): MLflow's default of 4
#   uvicorn workers with a 5 s health check made a busy node kill and restart workers still importing, forever
#   (where more are asked for, each gets 120 s).
set -euo pipefail
cmd=${1:-start}
dir=${MLFLOW_DIR:-$HOME/mlflow}
venv=${IABF_VENV:-$HOME/venv}
# one server per MLFLOW_SERVER_ID (a SLURM job's id; none on cluster.yaml's head): its own pid, log and URL file
id=${MLFLOW_SERVER_ID:+-$MLFLOW_SERVER_ID}
pidfile=$dir/server$id.pid
log=$dir/server$id.log

stop() {
    [ -s "$pidfile" ] || return 0
    read -r pid watcher < "$pidfile" || true
    for p in $pid ${watcher:-}; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$pidfile" "$dir/server$id.json"
}

case $cmd in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: $0 start [HOST] [PORT] | stop" >&2; exit 2 ;;
esac

host=${2:-$(hostname -I 2>/dev/null | awk '{print $1}')}
port=${3:-5000}
if [ -z "$host" ]; then echo "error: this node has no address but loopback; give the host: $0 start HOST" >&2; exit 2; fi

umask 077
mkdir -p "$dir" ~/.mlflow
# The password, the store's schema and the auth database are made by a server's first start: two servers
# starting at once on one store (two SLURM jobs) would each make a password, and both the schema, and one fail.
# This lock (the one the study's driver takes for the same, <store>.lock) is held until this server answers.
# A filesystem without locks is said here.
exec 9>> "$dir/mlflow.db.lock"
flock -w "${MLFLOW_START_TIMEOUT:-300}" 9 || { echo "error: cannot lock $dir/mlflow.db.lock (a filesystem without locks, or another server starting for ${MLFLOW_START_TIMEOUT:-300} s): put the store on one that has them (MLFLOW_DIR, IABF_STUDIES)" >&2; exit 1; }
creds=~/.mlflow/credentials
if ! grep -q mlflow_tracking_password "$creds" 2>/dev/null; then
    password=$("$venv/bin/python" -c "import secrets; print(secrets.token_urlsafe(24))")
    printf '[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = %s\n' "$password" > "$creds"
fi
password=$(sed -n 's/^mlflow_tracking_password = //p' "$creds")
# the auth app's CSRF key: made once, kept so that a restarted server accepts the forms a browser holds
test -s "$dir/secret_key" || "$venv/bin/python" -c "import secrets; print(secrets.token_hex(32))" > "$dir/secret_key"
# MLflow's own auth config (its basic_auth.ini keys); read at the first start, when it makes the admin user
cat > "$dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$dir/basic_auth.db
admin_username = admin
admin_password = $password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

stop   # a server this script started before (a second `ray up`): one server, on the current settings
# MLflow 3 answers 403 to a Host header it does not allow (by default localhost and private addresses only),
# and many clusters' nodes have public addresses: the node's own address is allowed by name, and loopback on
# any port (an SSH tunnel's); MLFLOW_ALLOWED_HOSTS adds more (a proxy's name)
allowed="$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*${MLFLOW_ALLOWED_HOSTS:+,$MLFLOW_ALLOWED_HOSTS}"
# MLflow 3's job runner (seven huey consumers, for GenAI evaluation jobs and trace rollups that a study never
# asks for) is left off: a server then starts in seconds on a busy node, and two servers on one store do not
# both run its periodic tasks
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$dir/secret_key") setsid nohup "$venv/bin/mlflow" server --app-name basic-auth \
    --host "$host" --port "$port" --allowed-hosts "$allowed" --backend-store-uri "sqlite:///$dir/mlflow.db" \
    --artifacts-destination "$dir/artifacts" --serve-artifacts --workers "${MLFLOW_WORKERS:-1}" \
    --uvicorn-opts "--timeout-worker-healthcheck 120" > "$log" 2>&1 < /dev/null 9>&- &
pid=$!
watcher=
if [ "${MLFLOW_FOLLOW_RAY:-0}" = 1 ] && gcs=$(pgrep -n -u "$(id -u)" -x gcs_server); then
    # the server lives as long as this node's Ray
    setsid nohup bash -c "while kill -0 $gcs 2>/dev/null; do sleep 2; done; kill -TERM -- -$pid 2>/dev/null" \
        > /dev/null 2>&1 < /dev/null 9>&- &
    watcher=$!
fi
echo "$pid $watcher" > "$pidfile"

answers() {   # /health, then a search with the credentials (curl where the node has it: no Python to import)
    if command -v curl > /dev/null; then
        curl -fs -o /dev/null --max-time 5 "$1/health" &&
            curl -fs -o /dev/null --max-time 10 -u "admin:$password" "$1/api/2.0/mlflow/experiments/search?max_results=1"
    else
        "$venv/bin/python" - "$1" "$password" <<'PY' 2>/dev/null
import sys, requests
requests.get(sys.argv[1] + "/health", timeout=5).raise_for_status()
requests.get(sys.argv[1] + "/api/2.0/mlflow/experiments/search", params={"max_results": 1},
             auth=("admin", sys.argv[2]), timeout=10).raise_for_status()
PY
    fi
}

# answer before anything is run against it: /health, then a request with the credentials (its first start
# makes two databases: a minute or more on a busy node)
deadline=$((SECONDS + ${MLFLOW_START_TIMEOUT:-300}))
while [ $SECONDS -lt $deadline ]; do
    if answers "http://$host:$port"; then
        # which store serves this URL: a study on s3:// storage copies it there when it ends (studies/archive.py)
        printf '{"url": "http://%s:%s", "store": "%s"}\n' "$host" "$port" "$dir/mlflow.db" > "$dir/server$id.json"
        flock -u 9
        echo "MLflow tracking server: http://$host:$port (basic auth; credentials in ~/.mlflow/credentials); log: $log"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
echo "error: the MLflow server did not answer on http://$host:$port within ${MLFLOW_START_TIMEOUT:-300} s (or ended); the end of $log:" >&2
tail -20 "$log" >&2
stop
exit 1
