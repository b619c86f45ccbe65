"""A multi-node Ray cluster on 127.0.0.1, run in a process of its own for the cluster tests.

    python tests/ray_cluster_controller.py ROOT HEAD_CPUS DASHBOARD_PORT CLIENT_PORT

Starts the head node (GCS, dashboard and job server, Ray Client server) with
`ray.cluster_utils.Cluster`, prints one JSON line with its addresses, then reads one JSON
command per line from stdin and answers each with one JSON line on stdout:

    {"cmd": "add_node", "num_cpus": 2}          -> {"node_id": ...}
    {"cmd": "remove_node", "node_id": ...}       -> {"ok": true}   (SIGKILL: a lost machine)
    {"cmd": "nodes"}                             -> {"alive": [node ids]}
    {"cmd": "shutdown"}                          -> {"ok": true}, then exits

The caller's environment must hold RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so that every node
binds 127.0.0.1 (`ray start` refuses worker nodes in that mode; the Cluster utility does
not). Every Ray process is a child of this one and shares its fate: killing this process
group tears the whole cluster down without touching any other Ray on the machine.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main() -> None:
    root, head_cpus, dashboard_port, client_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import ray._private.utils
    from ray.cluster_utils import Cluster

    temp_dir = root / "ray"
    # Cluster writes the head's address to /tmp/ray/ray_current_cluster, where
    # `ray.init(address="auto")` of anyone else on this machine would find it: keep it ours.
    original = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda address, temp=None: original(address, str(temp_dir))

    def free_port() -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    common = dict(object_store_memory=80 * 1024 * 1024, num_gpus=0)
    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(
            num_cpus=head_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port, ray_client_server_port=client_port, temp_dir=str(temp_dir),
            dashboard_agent_listen_port=free_port(), **common,
        ),
    )
    nodes = {cluster.head_node.node_id: cluster.head_node}
    reply({"address": cluster.address, "dashboard": cluster.head_node.webui_url,
           "head_node_id": cluster.head_node.node_id, "node_ip": cluster.head_node.node_ip_address})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            name = cmd["cmd"]
            if name == "add_node":
                node = cluster.add_node(num_cpus=int(cmd.get("num_cpus", 1)),
                                        dashboard_agent_listen_port=free_port(), **common)
                nodes[node.node_id] = node
                reply({"node_id": node.node_id, "node_ip": node.node_ip_address})
            elif name == "remove_node":
                cluster.remove_node(nodes.pop(cmd["node_id"]), allow_graceful=bool(cmd.get("graceful", False)))
                reply({"ok": True})
            elif name == "nodes":
                alive = [n["NodeID"] for n in cluster.global_state.node_table() if n.get("Alive")]
                reply({"alive": alive})
            elif name == "shutdown":
                cluster.shutdown()
                reply({"ok": True})
                return
            else:
                reply({"error": f"unknown command {name!r}"})
        except Exception as err:  # noqa: BLE001 - reported to the test
            reply({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})


def reply(data: dict) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
