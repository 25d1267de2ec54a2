//! kube-rs against the test API server (support/apiserver.rs): the client
//! lists and gets what it holds, kube-runtime's watcher and reflector follow
//! it, and recover from dropped watches, expired history (410 Gone) and
//! outages. These prove the test server speaks the protocol `sync --kube`
//! relies on. Need no privileges: only 127.0.0.1 traffic.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    Api, Client, Config, ResourceExt as _,
    api::{ApiResource, DynamicObject, ListParams, VersionMatch},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};

use crate::support::apiserver::ApiServer;

/// How long a watcher may take to catch up, backoff included: kube-runtime's
/// default backoff starts at 0.8 s and doubles, and outages below last ~2 s.
const CATCH_UP: Duration = Duration::from_secs(15);

fn run<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test)
}

/// A client configured the way `--kubeconfig` configures one.
async fn client(server: &ApiServer) -> Client {
    // One file per server (its port), outside the sandboxes' `bct-` names.
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let path = std::env::temp_dir().join(format!("balctl-kubeconfig-{}-{port}.json", std::process::id()));
    server.write_kubeconfig(&path);
    let kubeconfig = Kubeconfig::read_from(&path).expect("kube-rs reads the kubeconfig");
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    assert_eq!(config.cluster_url.to_string().trim_end_matches('/'), server.url());
    Client::try_from(config).unwrap()
}

fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": name } },
        "spec": { "clusterIP": cluster_ip, "ports": [{ "port": 80, "protocol": "TCP" }] },
    })
}

fn pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "kube-system", "labels": { "k8s-app": "node-local-dns" } },
        "spec": { "nodeName": node, "containers": [{ "name": "dns", "image": "dns" }] },
    })
}

fn policy_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "balancing.elf.io".into(),
        version: "v1beta1".into(),
        api_version: "balancing.elf.io/v1beta1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Names (namespace/name) and cluster IPs the store holds, sorted.
fn held(store: &Store<Service>) -> Vec<(String, String)> {
    let mut services: Vec<(String, String)> = store
        .state()
        .iter()
        .map(|s| {
            let ip = s.spec.as_ref().and_then(|spec| spec.cluster_ip.clone()).unwrap_or_default();
            (format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()), ip)
        })
        .collect();
    services.sort();
    services
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(name, ip)| (name.to_string(), ip.to_string())).collect()
}

/// Waits until the store holds exactly `expected`.
async fn until_held(store: &Store<Service>, expected: &[(&str, &str)], what: &str) {
    let expected = pairs(expected);
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while held(store) != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the reflector holds {:?}, not {expected:?}",
            held(store)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reflector on every Service, as `sync --kube` would run it, driven on
/// this runtime; returns its store and the watcher errors it saw.
fn reflect_services(client: Client) -> (Store<Service>, Arc<Mutex<Vec<String>>>) {
    let (reader, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let stream = watcher(Api::<Service>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(stream.for_each(move |item| {
        match item {
            // The status code too: a 410 is what makes the watcher relist.
            Err(watcher::Error::WatchError(status)) => {
                seen.lock().unwrap().push(format!("watch error {}: {status}", status.code))
            }
            Err(error) => seen.lock().unwrap().push(error.to_string()),
            Ok(_) => {}
        }
        futures::future::ready(())
    }));
    (reader, errors)
}

fn count(server: &ApiServer, prefix: &str, watches: bool) -> usize {
    server.requests().iter().filter(|r| r.starts_with(prefix) && r.contains("watch=true") == watches).count()
}

pub fn the_client_lists_and_gets_every_kind() {
    let server = ApiServer::start();
    server.apply(service("default", "web", "198.18.0.1"));
    server.apply(service("shop", "cart", "198.18.0.2"));
    server.apply(pod("dns-a", "node-a"));
    server.apply(pod("dns-b", "node-b"));
    let lrp = json!({
        "apiVersion": "balancing.elf.io/v1beta1",
        "kind": "LocalRedirectPolicy",
        "metadata": { "name": "nodelocaldns", "namespace": "kube-system" },
        "spec": { "frontend": { "serviceMatcher": { "serviceName": "kube-dns" } } },
    });
    server.apply(lrp);
    server.apply(json!({
        "apiVersion": "balancing.elf.io/v1beta1",
        "kind": "BalancingPolicy",
        "metadata": { "name": "api", "namespace": "shop" },
        "spec": { "frontend": { "addressMatcher": { "ip": "198.18.3.10" } } },
    }));
    run(async {
        let client = client(&server).await;
        let all = Api::<Service>::all(client.clone()).list(&ListParams::default()).await.unwrap();
        let names: Vec<String> = all.items.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["web", "cart"]);
        assert_eq!(all.metadata.resource_version.as_deref(), Some("6"));
        assert_eq!(all.items[1].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("198.18.0.2"));

        // In pages, as kube-runtime's watcher lists: a continue token
        // while more follow, the first page's resourceVersion throughout.
        let services = Api::<Service>::all(client.clone());
        let first = services.list(&ListParams::default().limit(1)).await.unwrap();
        let token = first.metadata.continue_.clone().expect("a continue token");
        let second = services.list(&ListParams::default().limit(1).continue_token(&token)).await.unwrap();
        let paged: Vec<String> = first.items.iter().chain(&second.items).map(|s| s.name_any()).collect();
        assert_eq!(paged, ["web", "cart"]);
        assert_eq!(second.metadata.continue_.as_deref().unwrap_or_default(), "");
        assert_eq!(second.metadata.resource_version.as_deref(), Some("6"));
        assert!(services.list(&ListParams::default().continue_token("zz")).await.is_err());

        let shop = Api::<Service>::namespaced(client.clone(), "shop");
        assert_eq!(shop.list(&ListParams::default()).await.unwrap().items.len(), 1);
        assert_eq!(shop.get("cart").await.unwrap().resource_version().as_deref(), Some("2"));
        let missing = shop.get("web").await.unwrap_err();
        assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404), "{missing:?}");

        // What `sync --kube` selects: this node's Pods, objects by name and label.
        let pods = Api::<Pod>::all(client.clone());
        let on_b = pods.list(&ListParams::default().fields("spec.nodeName=node-b")).await.unwrap();
        assert_eq!(on_b.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["dns-b"]);
        let by_name = ListParams::default().fields("metadata.name=web");
        assert_eq!(Api::<Service>::all(client.clone()).list(&by_name).await.unwrap().items.len(), 1);
        let by_label = ListParams::default().labels("app=cart");
        let found = Api::<Service>::all(client.clone()).list(&by_label).await.unwrap();
        assert_eq!(found.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(), ["cart"]);
        let unsupported = ListParams::default().fields("status.phase=Running");
        let refused = pods.list(&unsupported).await.unwrap_err();
        assert!(matches!(refused, kube::Error::Api(ref s) if s.code == 400), "{refused:?}");

        // The policy kinds, with ApiResources written by hand (no discovery).
        for (kind, plural, name) in [
            ("LocalRedirectPolicy", "localredirectpolicies", "nodelocaldns"),
            ("BalancingPolicy", "balancingpolicies", "api"),
        ] {
            let resource = policy_resource(kind, plural);
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let policies = api.list(&ListParams::default()).await.unwrap();
            assert_eq!(policies.items.len(), 1, "{kind}");
            let policy = &policies.items[0];
            assert_eq!(policy.name_any(), name);
            assert_eq!(policy.types.as_ref().unwrap().kind, kind);
            assert!(policy.data["spec"]["frontend"].is_object(), "{kind}: {policy:?}");
        }

        // An exact list of a version that is no longer kept is gone (410).
        let old = ListParams::default().at("1").matching(VersionMatch::Exact);
        let gone = Api::<Service>::all(client.clone()).list(&old).await.unwrap_err();
        assert!(
            matches!(gone, kube::Error::Api(ref s) if s.code == 410 && s.reason == "Expired"),
            "{gone:?}"
        );
    });

    // Without the kubeconfig's token, nothing is served.
    let answer = raw_get(&server, "/api/v1/services", "");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A watch is chunked JSON lines: the history after the version asked
    // for, a bookmark every second and at its timeout, then the last chunk.
    let watch = "/api/v1/namespaces/shop/services?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=1";
    let answer = raw_get(&server, watch, "Authorization: Bearer balctl-test-token\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\r\nTransfer-Encoding: chunked\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n0\r\n\r\n"), "{answer}");
    let events: Vec<Value> =
        answer.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "BOOKMARK"], "{answer}");
    assert_eq!(events[0]["object"]["metadata"]["name"], "cart");
    assert_eq!(events[1]["object"]["metadata"]["resourceVersion"], "6");
}

/// The whole answer to one GET, sent by hand.
fn raw_get(server: &ApiServer, target: &str, headers: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(server.url().trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

pub fn a_reflector_follows_adds_changes_and_deletes() {
    let server = ApiServer::start();
    server.apply(service("default", "web", "198.18.0.1"));
    run(async {
        let (store, errors) = reflect_services(client(&server).await);
        until_held(&store, &[("default/web", "198.18.0.1")], "initial list").await;
        server.apply(service("shop", "cart", "198.18.0.2"));
        until_held(&store, &[("default/web", "198.18.0.1"), ("shop/cart", "198.18.0.2")], "ADDED").await;
        server.apply(service("default", "web", "198.18.0.9"));
        until_held(&store, &[("default/web", "198.18.0.9"), ("shop/cart", "198.18.0.2")], "MODIFIED").await;
        server.delete("v1", "Service", Some("default"), "web");
        until_held(&store, &[("shop/cart", "198.18.0.2")], "DELETED").await;
        assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());
        // One list, then one watch that got every change, with bookmarks asked for.
        assert_eq!(count(&server, "GET /api/v1/services", false), 1, "{:?}", server.requests());
        let watches: Vec<String> =
            server.requests().into_iter().filter(|r| r.contains("watch=true")).collect();
        assert_eq!(watches.len(), 1, "{watches:?}");
        assert!(watches[0].contains("allowWatchBookmarks=true"), "{watches:?}");
    });
}

pub fn the_watcher_recovers_from_drops_expiry_and_outages() {
    let server = ApiServer::start();
    server.apply(service("default", "web", "198.18.0.1"));
    run(async {
        let (store, errors) = reflect_services(client(&server).await);
        until_held(&store, &[("default/web", "198.18.0.1")], "initial list").await;

        // A dropped watch resumes from its resourceVersion: the change made
        // while it was away comes from the history, without a new list.
        server.drop_watches();
        server.apply(service("default", "web", "198.18.0.2"));
        until_held(&store, &[("default/web", "198.18.0.2")], "after drop_watches").await;
        assert_eq!(count(&server, "GET /api/v1/services", false), 1, "relisted: {:?}", server.requests());
        assert!(count(&server, "GET /api/v1/services", true) >= 2, "{:?}", server.requests());

        // An outage: the store keeps the last state while nothing answers.
        server.set_reachable(false);
        server.apply(service("default", "web", "198.18.0.3"));
        let watches = count(&server, "GET /api/v1/services", true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count(&server, "GET /api/v1/services", true) == watches {
            assert!(tokio::time::Instant::now() < deadline, "no watch attempted during the outage");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(held(&store), pairs(&[("default/web", "198.18.0.2")]), "during the outage");

        // History expired meanwhile: the resumed watch gets 410 Gone, the
        // watcher lists again and converges.
        server.expire_history();
        server.set_reachable(true);
        until_held(&store, &[("default/web", "198.18.0.3")], "after the outage and 410").await;
        assert!(
            errors.lock().unwrap().iter().any(|e| e.starts_with("watch error 410")),
            "no 410 seen: {:?}",
            errors.lock().unwrap()
        );
        assert_eq!(count(&server, "GET /api/v1/services", false), 2, "{:?}", server.requests());

        // And it keeps following after all that.
        server.apply(service("shop", "cart", "198.18.0.4"));
        until_held(&store, &[("default/web", "198.18.0.3"), ("shop/cart", "198.18.0.4")], "afterwards").await;
    });
}

pub fn a_streaming_list_with_a_field_selector_follows_pods_onto_and_off_the_node() {
    let server = ApiServer::start();
    server.apply(pod("dns-a", "node-a"));
    server.apply(pod("dns-b", "node-b"));
    run(async {
        let client = client(&server).await;
        // The initial state comes as a watch (sendInitialEvents), not a list.
        let config = watcher::Config::default().streaming_lists().fields("spec.nodeName=node-a");
        let (store, writer) = reflector::store();
        let stream = watcher(Api::<Pod>::all(client), config).default_backoff().reflect(writer);
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        let on_node_a = |expected: &'static [&'static str], what: &'static str| {
            let store = store.clone();
            async move {
                let deadline = tokio::time::Instant::now() + CATCH_UP;
                loop {
                    let mut names: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
                    names.sort();
                    if names == expected {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "{what}: {names:?}, not {expected:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        on_node_a(&["dns-a"], "initial events").await;
        // A Pod moved onto the node enters the selection (ADDED), one moved
        // off it leaves it (DELETED), as with a real API server.
        server.apply(pod("dns-b", "node-a"));
        on_node_a(&["dns-a", "dns-b"], "moved onto node-a").await;
        server.apply(pod("dns-a", "node-b"));
        on_node_a(&["dns-b"], "moved off node-a").await;
        let requests = server.requests();
        assert!(requests.iter().all(|r| r.contains("watch=true")), "a list was made: {requests:?}");
        assert!(requests[0].contains("sendInitialEvents=true"), "{requests:?}");
    });
}
