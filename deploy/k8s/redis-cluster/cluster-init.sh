#!/bin/sh
# Join fresh redis-server nodes (cluster-enabled yes) into one Redis Cluster, once. Idempotent.
#
# Used by both samples: the compose init service (deploy/compose.cluster.yaml mounts this file) and the
# Kubernetes Job (deploy/k8s/redis-cluster, through a ConfigMap). POSIX sh + redis-cli only.
#
#   REDIS_NODES             every node as host:port, space-separated (required)
#   REDIS_CLUSTER_REPLICAS  replicas per master for `redis-cli --cluster create` (default 0)
#   REDIS_CLUSTER_WAIT_S    give up after this many seconds of waiting (default 300)
#
# 1. waits until every node answers PING;
# 2. every node fresh (knows only itself, no slot assigned): `redis-cli --cluster create ... --cluster-yes`;
#    every node already in a cluster: creates nothing (a second run, a restarted stack);
#    some fresh, some not (e.g. a node lost its volume): refuses with exit 1 -- joining or replacing a
#    node is an operator's decision (`redis-cli --cluster add-node` / `--cluster fix`), not this script's;
# 3. waits until every node reports cluster_state:ok and knows all the nodes, and `redis-cli --cluster check`
#    finds them agreeing on the slots;
# 4. when nodes announce host names (cluster-announce-hostname), waits until every node has heard every
#    announced name by gossip -- until then a node hands clients an IP or an empty endpoint for the others
#    (measured: CLUSTER SHARDS on node 0 still gave hostname None for a peer just after step 3) -- then exits 0.
set -eu

: "${REDIS_NODES:?REDIS_NODES must list every node as host:port}"
replicas="${REDIS_CLUSTER_REPLICAS:-0}"
wait_s="${REDIS_CLUSTER_WAIT_S:-300}"
deadline=$(( $(date +%s) + wait_s ))
total=$(echo $REDIS_NODES | wc -w)

cli() { # host:port, command...
    node="$1"
    shift
    redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

info_field() { # host:port, field of CLUSTER INFO -> its value (empty when the node does not answer)
    cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

answers() { [ "$(cli "$1" ping 2>/dev/null)" = "PONG" ]; }

fresh() { [ "$(info_field "$1" cluster_known_nodes)" = 1 ] && [ "$(info_field "$1" cluster_slots_assigned)" = 0 ]; }

joined() { [ "$(info_field "$1" cluster_state)" = ok ] && [ "$(info_field "$1" cluster_known_nodes)" = "$total" ]; }

wait_for() { # what, command...
    what="$1"
    shift
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "cluster-init: gave up after ${wait_s}s waiting for $what" >&2
            exit 1
        fi
        sleep 1
    done
}

for node in $REDIS_NODES; do
    wait_for "$node to answer PING" answers "$node"
done

n_fresh=0
for node in $REDIS_NODES; do
    if fresh "$node"; then n_fresh=$((n_fresh + 1)); fi
done

if [ "$n_fresh" -eq "$total" ]; then
    echo "cluster-init: creating a cluster of $total nodes ($replicas replica(s) per master)"
    # shellcheck disable=SC2086  # one argument per node
    redis-cli --cluster create $REDIS_NODES --cluster-replicas "$replicas" --cluster-yes
elif [ "$n_fresh" -eq 0 ]; then
    echo "cluster-init: every node is already in a cluster; nothing to create"
else
    echo "cluster-init: $n_fresh of $total nodes are empty and the others are in a cluster: not touching it" \
         "(add or replace nodes with redis-cli --cluster add-node / --cluster fix)" >&2
    exit 1
fi

for node in $REDIS_NODES; do
    wait_for "cluster_state:ok and $total known nodes on $node" joined "$node"
done
first=$(echo $REDIS_NODES | cut -d' ' -f1)
checked() { redis-cli --cluster check "$first" >/dev/null 2>&1; }
wait_for "every node to agree on the slots (redis-cli --cluster check $first)" checked

announced() { cli "$1" config get cluster-announce-hostname 2>/dev/null | tr -d '\r' | sed -n 2p; }
n_named=0
for node in $REDIS_NODES; do
    if [ -n "$(announced "$node")" ]; then n_named=$((n_named + 1)); fi
done
# CLUSTER NODES shows a node's announced name after its address: "ip:port@cport,hostname"
hears_names() { [ "$(cli "$1" cluster nodes 2>/dev/null | awk '{print $2}' | grep -c ',.')" -ge "$n_named" ]; }
if [ "$n_named" -gt 0 ]; then
    for node in $REDIS_NODES; do
        wait_for "$node to hear the $n_named announced host names" hears_names "$node"
    done
fi
echo "cluster-init: cluster_state:ok on all $total nodes; they agree on the slots"
