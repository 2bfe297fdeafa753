#!/usr/bin/env bash
# `ray up` / `ray exec` / `ray down` of a cluster.yaml derived config, run for real by tests/test_ray_up.py,
# inside namespaces of its own (unshare --net --mount --pid --fork --mount-proc), so that the cluster can
# touch no port, ~/.ray, /tmp/ray or Ray process of this machine:
#   - the network: loopback, and one private address on a veth device (the head's "private address",
#     what `hostname -I` gives on AWS); nothing routes out of the namespace;
#   - the node: an account `iabfnode` (uid 0, since this machine's Python lives under /root) whose home is
#     $W/node, reached by SSH on 127.0.0.1 with a key made here; /tmp/ray is $W/tmp/ray (Ray's temp dir);
#   - the user's machine: HOME=$W/client, the project's own `ray` CLI;
#   - the package registries: PyPI through tests/registry_proxy.py (its Unix socket $W/proxy.sock, made
#     by the test outside the namespace); the node's ~/.profile names it, as a site's would. With a
#     wheelhouse (WHEELS: this machine's downloaded wheels) the node installs from it alone, no index asked;
#   - S3: the test's stand-in (moto, outside), through the Unix socket $W/s3.sock, on 127.0.0.1:9000 here;
#     the node's ~/.profile names it as AWS, as an instance profile and the region would.
# Every step writes $W/<step>.log and $W/<step>.rc; the test reads them. Usage: ray_up_node.sh W RAY_BIN_DIR [WHEELS]
set -uo pipefail
W=$1
BIN=$2
WHEELS=${3:-}
CONFIG=$W/cluster.yaml
PRIVATE=10.77.0.1

step() {   # step NAME COMMAND...: its output in $W/NAME.log, its exit code in $W/NAME.rc, its seconds in $W/NAME.s
    local name=$1 t0=$SECONDS
    shift
    "$@" > "$W/$name.log" 2>&1
    echo $? > "$W/$name.rc"
    echo $((SECONDS - t0)) > "$W/$name.s"
}

# --- the namespace's network and files ---
ip link set lo up
# a veth pair whose other end is in this namespace too: whatever is sent on n0 ends at n1, unanswered
ip link add n0 type veth peer name n1 && ip addr add $PRIVATE/24 dev n0 && ip link set n1 up && ip link set n0 up
ip route add default dev n0
# Ray's temp dir (/tmp/ray: sessions, the address file a local ray.init() reads, ray up's cluster state) of
# its own; the rest of /tmp stays shared, since the repository and its .venv may live there (a CI clone)
mkdir -p /tmp/ray "$W/tmp/ray" "$W/run" && mount --bind "$W/tmp/ray" /tmp/ray
mount --bind "$W/run" /run && mkdir -p /run/sshd
cp /etc/passwd "$W/passwd" && echo "iabfnode:x:0:0:ray up test node:$W/node:/bin/bash" >> "$W/passwd"
mount --bind "$W/passwd" /etc/passwd
mkdir -p "$W/node" "$W/client" && chmod 700 "$W/node" "$W/client"

# --- the image: the registries through the test's proxy, this machine's Python only ---
"$BIN/python" "$(dirname "$0")/registry_proxy.py" forward 3128 "$W/proxy.sock" &
"$BIN/python" "$(dirname "$0")/registry_proxy.py" forward 9000 "$W/s3.sock" &
cat > "$W/node/.profile" <<EOF
export HTTPS_PROXY=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128 PIP_PROXY=http://127.0.0.1:3128
export NO_PROXY=localhost,127.0.0.1,$PRIVATE no_proxy=localhost,127.0.0.1,$PRIVATE UV_PYTHON_DOWNLOADS=never
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt   # the site's certificates, as pip.conf's cert= gives pip
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:9000 MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000
EOF
if [ -n "$WHEELS" ]; then
    echo "export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELS UV_OFFLINE=1 UV_FIND_LINKS=$WHEELS" >> "$W/node/.profile"
fi

# --- the node's SSH server ---
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
cp "$W/key.pub" "$W/authorized_keys"
cat > "$W/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port 22
HostKey $W/hostkey
PidFile $W/sshd.pid
AuthorizedKeysFile $W/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers iabfnode
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -f "$W/sshd_config" -E "$W/sshd.log" || { echo "sshd did not start" > "$W/up.log"; echo 99 > "$W/up.rc"; exit 1; }

# --- the user's machine: the project's ray CLI, a home of its own ---
export HOME=$W/client PATH="$BIN:$PATH"
unset RAY_ADDRESS MLFLOW_TRACKING_URI RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH RAY_AUTH_MODE
cd "$W"

step up ray up -y --no-config-cache "$CONFIG"
if [ "$(cat "$W/up.rc")" = 0 ]; then
    # the tracking server answers on the head's private address: to the credentials only
    step server ray exec "$CONFIG" "python -c \"import requests; from mlflow.utils.credentials import read_mlflow_creds; \
c = read_mlflow_creds(); url = 'http://$PRIVATE:5000/api/2.0/mlflow/experiments/search?max_results=1'; \
[print(name, requests.get(url, auth=auth, timeout=10).status_code) for name, auth in \
(('anonymous', None), ('wrong', (c.username, 'wrong')), ('credentials', (c.username, c.password)))]\""
    # a small study, launched as the README says: on the head, tracked to the head's server
    step study ray exec "$CONFIG" 'cd ~/iabf && python studies/ablation.py --smoke --chain-steps 5 --storage s3://studies/iabf --tracking-uri http://$(hostname -I | cut -d" " -f1):5000'
    step status ray exec "$CONFIG" 'ray status'
    step tunnel bash "$W/tunnel.sh"   # the README's tunnel to MLflow (written by the test), and a request through it
fi
step down ray down -y "$CONFIG"
# what `ray stop` ended, gone; the tracking server's watcher notices within 2 s and the server takes a few
# seconds to stop (more on a busy machine): wait up to a minute for nothing but this script's own to be left
t0=$SECONDS
while [ $((SECONDS - t0)) -lt 60 ]; do
    ps -ww -eo pid,args --no-headers | grep -vE "ray_up_node\.sh|ps -ww -eo|sshd|registry_proxy|grep" | grep -q . || break
    sleep 1
done
echo $((SECONDS - t0)) > "$W/gone.s"
ps -ww -eo pid,args --no-headers > "$W/left.txt"
kill "$(cat "$W/sshd.pid")" 2>/dev/null
kill %1 %2 2>/dev/null   # the forwarders (the proxy's, S3's)
exit 0
