//! Services with their EndpointSlices as `kubectl get
//! services,endpointslices -A -o yaml` prints them (the fields kubectl
//! shows, managedFields left out): the input of `balctl sync` in the sync
//! and compare benches; and the same objects as JSON, as the API server
//! serves them, for `sync --kube`.

use std::{fmt::Write as _, net::Ipv4Addr};

use serde_json::{Value, json};

/// What opens and closes the List the items go in.
pub const LIST_START: &str = "apiVersion: v1\nitems:\n";
pub const LIST_END: &str = "kind: List\nmetadata:\n  resourceVersion: \"\"\n";

/// One Service with one port and its EndpointSlice.
pub struct ServiceItem<'a> {
    /// The service's number in its cluster: its uids and resourceVersions.
    pub index: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    pub vip: Ipv4Addr,
    pub port_name: &'a str,
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'a str,
    /// The EndpointSlice's port.
    pub target_port: u16,
    /// Each ready endpoint's address and the number of its node.
    pub endpoints: &'a [(Ipv4Addr, u32)],
}

impl ServiceItem<'_> {
    /// Appends the Service and the EndpointSlice as two List items.
    pub fn write(&self, out: &mut String) {
        let Self { index: i, namespace, name, vip, port_name, port, protocol, target_port, endpoints } = self;
        let _ = write!(
            out,
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    creationTimestamp: \"2026-11-01T10:00:00Z\"\n    \
             labels:\n      app: {name}\n    name: {name}\n    namespace: {namespace}\n    \
             resourceVersion: \"{}\"\n    uid: 5f0c8a2e-0000-4000-8000-{i:012}\n  spec:\n    clusterIP: {vip}\n    \
             clusterIPs:\n    - {vip}\n    internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    \
             ipFamilyPolicy: SingleStack\n    ports:\n    - name: {port_name}\n      port: {port}\n      \
             protocol: {protocol}\n      targetPort: {port_name}\n    selector:\n      app: {name}\n    \
             sessionAffinity: None\n    type: ClusterIP\n  status:\n    loadBalancer: {{}}\n",
            1000 + i,
        );
        out.push_str("- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n");
        for (e, (address, node)) in endpoints.iter().enumerate() {
            let _ = write!(
                out,
                "  - addresses:\n    - {address}\n    conditions:\n      ready: true\n      serving: true\n      \
                 terminating: false\n    nodeName: node-{node}\n    targetRef:\n      kind: Pod\n      \
                 name: {name}-{e}\n      namespace: {namespace}\n      uid: 0a1b2c3d-0000-4000-8000-{i:06}{e:06}\n"
            );
        }
        let _ = write!(
            out,
            "  kind: EndpointSlice\n  metadata:\n    creationTimestamp: \"2026-11-01T10:00:00Z\"\n    \
             generateName: {name}-\n    generation: 1\n    labels:\n      \
             endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n      \
             kubernetes.io/service-name: {name}\n    name: {name}-abcde\n    namespace: {namespace}\n    \
             resourceVersion: \"{}\"\n    uid: 7e0c8a2e-0000-4000-8000-{i:012}\n  ports:\n  - name: {port_name}\n    \
             port: {target_port}\n    protocol: {protocol}\n",
            2000 + i,
        );
    }

    /// The Service and the EndpointSlice as the API server holds them (it
    /// gives them their uids and resourceVersions).
    #[allow(dead_code, reason = "the sync bench's --kube scenario; the compare bench writes YAML only")]
    pub fn objects(&self) -> [Value; 2] {
        let Self { index: _, namespace, name, vip, port_name, port, protocol, target_port, endpoints } = self;
        let endpoints: Vec<Value> = endpoints
            .iter()
            .enumerate()
            .map(|(e, (address, node))| {
                json!({
                    "addresses": [address.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": format!("node-{node}"),
                    "targetRef": {"kind": "Pod", "name": format!("{name}-{e}"), "namespace": namespace},
                })
            })
            .collect();
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()],
                "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": port_name, "port": port, "protocol": protocol, "targetPort": port_name}],
                "selector": {"app": name}, "sessionAffinity": "None", "type": "ClusterIP",
            },
        });
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "endpoints": endpoints,
            "metadata": {
                "name": format!("{name}-abcde"), "namespace": namespace, "generateName": format!("{name}-"),
                "labels": {
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "kubernetes.io/service-name": name,
                },
            },
            "ports": [{"name": port_name, "port": target_port, "protocol": protocol}],
        });
        [service, slice]
    }
}
