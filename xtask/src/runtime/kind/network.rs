//! The pod network of an offline kind cluster. kind's own (kindnetd) cannot be built from the
//! Go module proxy these machines reach, so the offline cluster config disables it and xtask
//! does what kindnetd does for a cluster of a few nodes on one Docker network: on each node, a
//! CNI config with the `ptp` plugin (one veth per pod, no bridge) and the node's pod CIDR, and a
//! route to every other node's pod CIDR through that node's address. Everything happens inside
//! the node containers' own network namespaces; the host's routes and sysctls are not touched.

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

/// A node as the pod network needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub pod_cidr: String,
}

/// The nodes of the cluster (`kubectl get nodes`), once each has its pod CIDR.
fn nodes(sh: &Shell, context: &str) -> anyhow::Result<Vec<Node>> {
    let (found, _) = crate::procs::wait_for(std::time::Duration::from_secs(90), || {
        let json = cmd!(sh, "kubectl --context {context} get nodes -o json")
            .quiet()
            .read()?;
        let v: Value = serde_json::from_str(&json)?;
        let nodes: Vec<Node> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| Node {
                name: n["metadata"]["name"].as_str().unwrap_or_default().into(),
                address: n["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == "InternalIP")
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or_default()
                    .into(),
                pod_cidr: n["spec"]["podCIDR"].as_str().unwrap_or_default().into(),
            })
            .collect();
        ensure!(
            !nodes.is_empty()
                && nodes
                    .iter()
                    .all(|n| !n.address.is_empty() && !n.pod_cidr.is_empty()),
            "not every node has its address and pod CIDR yet: {nodes:?}"
        );
        Ok(nodes)
    })
    .context("the nodes did not get their pod CIDRs (the controller manager allocates them)")?;
    Ok(found)
}

/// The CNI config of one node.
pub fn cni_config(pod_cidr: &str) -> String {
    json!({
        "cniVersion": "0.4.0",
        "name": "spire-lab",
        "plugins": [
            {
                "type": "ptp",
                "mtu": 1500,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": "/run/cni-ipam-state",
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "ranges": [[{ "subnet": pod_cidr }]]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
    .to_string()
}

/// The shell script one node runs: forwarding on in its own namespace, its CNI config, routes.
pub fn node_script(node: &Node, all: &[Node]) -> String {
    let mut script = format!(
        "set -eu\nsysctl -qw net.ipv4.ip_forward=1\nmkdir -p /etc/cni/net.d\ncat > /etc/cni/net.d/10-spire-lab.conflist <<'EOF'\n{}\nEOF\n",
        cni_config(&node.pod_cidr)
    );
    for other in all.iter().filter(|o| o.name != node.name) {
        script += &format!(
            "ip route replace {} via {}\n",
            other.pod_cidr, other.address
        );
    }
    script
}

/// Sets the pod network up on every node of the cluster of `context`.
pub fn set_up(sh: &Shell, context: &str) -> anyhow::Result<()> {
    let all = nodes(sh, context)?;
    for node in &all {
        let script = node_script(node, &all);
        let name = &node.name;
        cmd!(sh, "docker exec {name} sh -c {script}")
            .quiet()
            .run()
            .with_context(|| format!("the pod network on node {name}"))?;
        println!(
            "        {name}: pods in {} (ptp), routes to the other nodes' pods",
            node.pod_cidr
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_routes_to_the_others() {
        let nodes = [
            Node {
                name: "a".into(),
                address: "172.18.0.2".into(),
                pod_cidr: "10.244.0.0/24".into(),
            },
            Node {
                name: "b".into(),
                address: "172.18.0.3".into(),
                pod_cidr: "10.244.1.0/24".into(),
            },
        ];
        let script = node_script(&nodes[0], &nodes);
        assert!(script.contains("ip route replace 10.244.1.0/24 via 172.18.0.3"));
        assert!(!script.contains("10.244.0.0/24 via"));
        let conf: Value = serde_json::from_str(&cni_config("10.244.0.0/24")).unwrap();
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.0.0/24"
        );
    }
}
