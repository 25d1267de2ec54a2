//! A small Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1,
//! speaking enough of the real wire protocol for kube-rs's client and
//! kube-runtime's `watcher` (no real API server can run on the test
//! machines).
//!
//! - Resources: Services, Nodes, Pods, EndpointSlices and the two policy
//!   kinds of `balancing.elf.io/v1beta1`, at their cluster-wide collection
//!   paths (`Api::all`), their namespaced ones, and `.../NAME` for one object.
//!   Only GET is served: tests change objects with `apply` and `delete`.
//! - List: the matching objects in pages of `limit` (all in one without
//!   it), each page ending with a `continue` token while more follow, as
//!   kube-runtime's watcher lists (500 a page). A list's resourceVersion is
//!   the one of its first page; later pages are read from the objects then
//!   (not a snapshot: a change meanwhile shows, and its watch event comes
//!   after the list too, so a watcher ends up right either way).
//!   `resourceVersionMatch=Exact` is served for the current resourceVersion
//!   only; an older one gets HTTP 410 Expired.
//! - Watch (`watch=true|1`): a chunked stream of newline-delimited JSON
//!   events. With `resourceVersion` N, the events after N come from the
//!   history, then live ones; N older than the history (see
//!   `expire_history`) gets a 200 stream holding one ERROR event with a 410
//!   Status, as a real API server answers. Without `resourceVersion`, with
//!   `0`, or with `sendInitialEvents=true`, the current objects come first as
//!   ADDED (followed by a BOOKMARK annotated `k8s.io/initial-events-end` for
//!   `sendInitialEvents`), so both of kube-runtime's initial list strategies
//!   work: `ListWatch` (the default) and `StreamingList`. With
//!   `allowWatchBookmarks=true`, a BOOKMARK every second and at the end of
//!   `timeoutSeconds` (capped at 10 minutes, default 5).
//! - Selectors: field selectors on `metadata.name`, `metadata.namespace` and
//!   `spec.nodeName`, label selectors `k=v`, `k==v`, `k!=v`, `k` and `!k`
//!   (comma-separated, all must hold); anything else is a 400 Bad Request,
//!   as the API server answers for an unsupported field. A watch with a
//!   selector sees an object that stops matching as DELETED and one that
//!   starts matching as ADDED, as a real one does.
//! - Authentication: `Authorization: Bearer` with the token of the
//!   kubeconfig `write_kubeconfig` writes, else 401.
//!
//! Every response closes its connection (`Connection: close`), so the
//! client never reuses a connection that `drop_watches` or
//! `set_reachable(false)` closed under it. Sockets have read and write
//! timeouts, watches end at their timeout, and `Drop` stops and joins every
//! thread.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod http;

use http::{Query, Request, read_request, respond, write_chunk};

const TOKEN: &str = "balctl-test-token";
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds: the remembered events and request lines.
const MAX_HISTORY: usize = 10_000;
const MAX_REQUESTS: usize = 10_000;

struct Kind {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const KINDS: [Kind; 7] = [
    Kind { api_version: "v1", kind: "Service", plural: "services", namespaced: true },
    Kind { api_version: "v1", kind: "Node", plural: "nodes", namespaced: false },
    Kind { api_version: "v1", kind: "Pod", plural: "pods", namespaced: true },
    Kind {
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
    },
    Kind {
        api_version: "balancing.elf.io/v1beta1",
        kind: "LocalRedirectPolicy",
        plural: "localredirectpolicies",
        namespaced: true,
    },
    Kind {
        api_version: "balancing.elf.io/v1beta1",
        kind: "BalancingPolicy",
        plural: "balancingpolicies",
        namespaced: true,
    },
    // Served once `install_mcs` was called, as on a cluster with the MCS
    // API's CRDs; 404 before, as on most.
    Kind {
        api_version: "multicluster.x-k8s.io/v1alpha1",
        kind: "ServiceImport",
        plural: "serviceimports",
        namespaced: true,
    },
];

/// Where ServiceImport is in KINDS.
const SERVICE_IMPORT: usize = 6;

fn kind_of(api_version: &str, kind: &str) -> usize {
    KINDS
        .iter()
        .position(|k| k.api_version == api_version && k.kind == kind)
        .unwrap_or_else(|| panic!("the test API server does not serve {api_version} {kind}"))
}

/// An object's identity: index into KINDS, namespace ("" if cluster-scoped), name.
type Key = (usize, String, String);

/// A change, as watches replay it: the object before (none when added) and
/// after (none when deleted), so a selector can tell whether it entered or
/// left the selection.
struct Change {
    resource_version: u64,
    kind: usize,
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Default)]
struct State {
    /// The global resourceVersion: bumped by every change.
    resource_version: u64,
    /// `history` holds every change after this resourceVersion.
    history_start: u64,
    history: Vec<Change>,
    objects: BTreeMap<Key, Value>,
    next_uid: u64,
    /// Bumped to end every open watch.
    watch_generation: u64,
    reachable: bool,
    stopping: bool,
    requests: Vec<String>,
    /// ServiceImports are served (`install_mcs`).
    mcs: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of `state`, to wake watches.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    /// The acceptor's listening socket, shut down to wake it.
    listening: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ApiServer {
    pub fn start() -> Self {
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind the test API server"))
    }

    /// `start` on the loopback of the network namespace `netns`, for an
    /// agent that runs there: the listening socket is made by a thread
    /// that enters the namespace, and stays in it.
    #[allow(dead_code, reason = "the CLI tests' agents in a namespace; the benches use start")]
    pub fn start_in(netns: &str) -> Self {
        let path = format!("/run/netns/{netns}");
        let listener = thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("open the network namespace");
            // SAFETY: setns on a descriptor we hold, for this thread only.
            let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns {path}: {}", std::io::Error::last_os_error());
            TcpListener::bind("127.0.0.1:0").expect("bind the test API server")
        })
        .join()
        .expect("the thread that binds in the namespace");
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let listening = listener.try_clone().expect("the listening socket");
        let shared = Arc::new(Shared {
            state: Mutex::new(State { reachable: true, ..State::default() }),
            changed: Condvar::new(),
        });
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (shared, connections) = (shared.clone(), connections.clone());
            thread::spawn(move || accept(&listener, &shared, &connections))
        };
        Self { addr, listening, shared, acceptor: Some(acceptor), connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig with one cluster (this server, plain HTTP), one token
    /// user and one context, which is current. JSON is YAML, so
    /// `kube::Config::from_kubeconfig` and `--kubeconfig` read it.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "test", "cluster": { "server": self.url() } }],
            "users": [{ "name": "test", "user": { "token": TOKEN } }],
            "contexts": [{ "name": "test", "context": { "cluster": "test", "user": "test" } }],
            "current-context": "test",
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).expect("write kubeconfig");
    }

    /// Creates or replaces an object (by apiVersion, kind, namespace and
    /// name; a namespaced kind without namespace goes to `default`), giving
    /// it the next resourceVersion and a uid (kept on replace), and tells
    /// the watches: ADDED or MODIFIED.
    /// Serves ServiceImports from now on (the MCS API's CRDs installed).
    #[allow(dead_code, reason = "the CLI tests' MCS case; the benches need none")]
    pub fn install_mcs(&self) {
        self.shared.lock().mcs = true;
    }

    pub fn apply(&self, mut object: Value) {
        let text = |field: &str| object[field].as_str().unwrap_or_default().to_owned();
        let kind = kind_of(&text("apiVersion"), &text("kind"));
        let metadata = object["metadata"].as_object_mut().expect("an object with metadata");
        let name = metadata.get("name").and_then(Value::as_str).expect("metadata.name").to_owned();
        let namespace = if KINDS[kind].namespaced {
            metadata.entry("namespace").or_insert_with(|| json!("default")).as_str().unwrap().to_owned()
        } else {
            String::new()
        };
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let key = (kind, namespace, name);
        let before = state.objects.get(&key).cloned();
        let uid = match &before {
            Some(old) => old["metadata"]["uid"].clone(),
            None => {
                state.next_uid += 1;
                json!(format!("00000000-0000-4000-8000-{:012x}", state.next_uid))
            }
        };
        metadata.insert("uid".into(), uid);
        metadata.insert("resourceVersion".into(), json!(state.resource_version.to_string()));
        state.objects.insert(key, object.clone());
        record(&mut state, kind, before, Some(object));
        self.shared.changed.notify_all();
    }

    /// Deletes an object, which must exist, and tells the watches: DELETED.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let kind = kind_of(api_version, kind);
        let key = (kind, namespace.unwrap_or_default().to_owned(), name.to_owned());
        let mut state = self.shared.lock();
        let before = state.objects.remove(&key).unwrap_or_else(|| panic!("delete: no {key:?}"));
        state.resource_version += 1;
        record(&mut state, kind, Some(before), None);
        self.shared.changed.notify_all();
    }

    /// Closes every open watch connection mid-stream, without the final
    /// chunk, as a restarting API server or a broken network does.
    pub fn drop_watches(&self) {
        self.shared.lock().watch_generation += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the event history, as etcd compaction does: a watch from a
    /// resourceVersion older than the current one gets 410 Gone and must
    /// list again.
    pub fn expire_history(&self) {
        let mut state = self.shared.lock();
        state.history.clear();
        state.history_start = state.resource_version;
        self.shared.changed.notify_all();
    }

    /// While unreachable, connections are closed as soon as they are
    /// accepted and open watches are dropped.
    pub fn set_reachable(&self, reachable: bool) {
        let mut state = self.shared.lock();
        state.reachable = reachable;
        if !reachable {
            state.watch_generation += 1;
        }
        self.shared.changed.notify_all();
    }

    /// The request lines seen so far (`GET /api/v1/services?...`), also
    /// those refused while unreachable.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        // Wakes the acceptor's blocking accept(); it sees `stopping` and
        // ends. A connection does it in the test's namespace; shutdown
        // (accept fails with EINVAL) in another, where the test cannot
        // connect to the listener.
        let _ = TcpStream::connect(self.addr);
        // SAFETY: shutdown of a socket this server owns.
        unsafe { libc::shutdown(self.listening.as_raw_fd(), libc::SHUT_RD) };
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for connection in std::mem::take(&mut *self.connections.lock().unwrap()) {
            let _ = connection.join();
        }
    }
}

fn record(state: &mut State, kind: usize, before: Option<Value>, after: Option<Value>) {
    let resource_version = state.resource_version;
    state.history.push(Change { resource_version, kind, before, after });
    if state.history.len() > MAX_HISTORY {
        state.history.drain(..MAX_HISTORY / 2);
        state.history_start = state.history[0].resource_version - 1;
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, connections: &Mutex<Vec<JoinHandle<()>>>) {
    for stream in listener.incoming() {
        let (stopping, reachable) = {
            let state = shared.lock();
            (state.stopping, state.reachable)
        };
        if stopping {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        let handle = thread::spawn(move || {
            if reachable {
                serve(stream, &shared);
            } else {
                // Read the request line (for `requests`) and hang up unanswered.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                if let Ok(request) = read_request(&stream) {
                    log_request(&shared, &request);
                }
                let _ = stream.shutdown(Shutdown::Both);
            }
        });
        let mut connections = connections.lock().unwrap();
        connections.retain(|c| !c.is_finished());
        connections.push(handle);
    }
}

fn log_request(shared: &Shared, request: &Request) {
    let mut state = shared.lock();
    if state.requests.len() >= MAX_REQUESTS {
        state.requests.remove(0);
    }
    state.requests.push(format!("{} {}", request.method, request.target));
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(request) = read_request(&stream) else { return };
    log_request(shared, &request);
    let response = if request.authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        Err(status(401, "Unauthorized", "no or wrong bearer token"))
    } else if request.method != "GET" {
        Err(status(405, "MethodNotAllowed", "the test API server serves GET only; use ApiServer::apply"))
    } else {
        route(&request).and_then(|route| {
            if route.kind == SERVICE_IMPORT && !shared.lock().mcs {
                return Err(status(404, "NotFound", &format!("the server could not find {}", request.path)));
            }
            Ok(route)
        })
    };
    let mut stream = stream;
    match response {
        Ok(Route { kind, namespace, name: Some(name), .. }) => {
            let state = shared.lock();
            let found = state.objects.get(&(kind, namespace.unwrap_or_default(), name.clone())).cloned();
            drop(state);
            match found {
                Some(object) => respond(&mut stream, 200, &object),
                None => {
                    let message = format!("{} \"{name}\" not found", KINDS[kind].plural);
                    respond(&mut stream, 404, &status(404, "NotFound", &message));
                }
            }
        }
        Ok(route) if route.query.flag("watch") => watch(&mut stream, shared, &route),
        Ok(route) => match list(shared, &route) {
            Ok(list) => respond(&mut stream, 200, &list),
            Err(error) => respond(&mut stream, error["code"].as_u64().unwrap() as u16, &error),
        },
        Err(error) => respond(&mut stream, error["code"].as_u64().unwrap() as u16, &error),
    }
}

/// A Kubernetes `Status` object for a failure.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

struct Route {
    kind: usize,
    namespace: Option<String>,
    name: Option<String>,
    query: Query,
    selector: Selector,
}

/// `/api/v1/[namespaces/NS/]PLURAL[/NAME]` and `/apis/GROUP/VERSION/...`.
fn route(request: &Request) -> Result<Route, Value> {
    let not_found = || status(404, "NotFound", &format!("the server could not find {}", request.path));
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return Err(not_found()),
    };
    let kind = KINDS
        .iter()
        .position(|k| k.api_version == api_version && k.plural == plural)
        .filter(|&k| KINDS[k].namespaced || namespace.is_none())
        .ok_or_else(not_found)?;
    // One cluster-scoped object is at its path without namespace.
    if name.is_some() && KINDS[kind].namespaced && namespace.is_none() {
        return Err(not_found());
    }
    let query = Query::parse(&request.query);
    let selector = Selector::parse(&query)?;
    Ok(Route { kind, namespace, name, query, selector })
}

impl Route {
    fn matches(&self, object: &Value) -> bool {
        let in_namespace = self.namespace.as_ref().is_none_or(|ns| object["metadata"]["namespace"] == **ns);
        in_namespace && self.selector.matches(object)
    }

    /// The requested resourceVersion; none for absent, empty or "0" (any).
    fn resource_version(&self) -> Result<Option<u64>, Value> {
        match self.query.get("resourceVersion") {
            None | Some("") | Some("0") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                status(400, "BadRequest", &format!("resourceVersion {text:?} is not a resource version"))
            }),
        }
    }
}

fn expired(resource_version: u64) -> Value {
    status(410, "Expired", &format!("too old resource version: {resource_version}"))
}

fn list(shared: &Shared, route: &Route) -> Result<Value, Value> {
    let requested = route.resource_version()?;
    let state = shared.lock();
    // Only the current state is kept: an exact older version is gone.
    if let Some(version) = requested
        && route.query.get("resourceVersionMatch") == Some("Exact")
        && version != state.resource_version
    {
        return Err(expired(version));
    }
    let kind = &KINDS[route.kind];
    let limit = route.query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
    let (version, after) = match route.query.get("continue").filter(|token| !token.is_empty()) {
        Some(token) => {
            let (version, namespace, name) = continued(token)?;
            (version, Some((route.kind, namespace, name)))
        }
        None => (state.resource_version, None),
    };
    let start = match after {
        Some(key) => std::ops::Bound::Excluded(key),
        None => std::ops::Bound::Included((route.kind, String::new(), String::new())),
    };
    let mut items: Vec<(&Key, &Value)> = state
        .objects
        .range((start, std::ops::Bound::Unbounded))
        .take_while(|((k, _, _), _)| *k == route.kind)
        .filter(|(_, object)| route.matches(object))
        .take(limit.map_or(usize::MAX, |limit| limit + 1))
        .collect();
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if let Some(limit) = limit.filter(|&limit| items.len() > limit) {
        items.truncate(limit);
        let (_, namespace, name) = items[limit - 1].0;
        metadata["continue"] = continue_token(version, namespace, name).into();
    }
    Ok(json!({
        "apiVersion": kind.api_version,
        "kind": format!("{}List", kind.kind),
        "metadata": metadata,
        "items": items.into_iter().map(|(_, object)| object).collect::<Vec<_>>(),
    }))
}

/// A list's `continue` token: its resourceVersion and the last object
/// given, hex-encoded (it travels in a query string).
fn continue_token(version: u64, namespace: &str, name: &str) -> String {
    format!("{version}\0{namespace}\0{name}").bytes().map(|b| format!("{b:02x}")).collect()
}

/// What `continue_token` encoded; a token it did not make is a 400.
fn continued(token: &str) -> Result<(u64, String, String), Value> {
    let bad = || status(400, "BadRequest", &format!("continue token {token:?} is not one this server gave"));
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let mut parts = text.split('\0');
    let (Some(version), Some(namespace), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok((version.parse().map_err(|_| bad())?, namespace.to_owned(), name.to_owned()))
}

fn watch(stream: &mut TcpStream, shared: &Shared, route: &Route) {
    let requested = match route.resource_version() {
        Ok(version) => version,
        Err(error) => return respond(stream, 400, &error),
    };
    let bookmarks = route.query.flag("allowWatchBookmarks");
    let timeout = route.query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(300u64).min(600);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let kind = &KINDS[route.kind];
    let bookmark = |version: u64, annotations: Value| {
        json!({
            "type": "BOOKMARK",
            "object": {
                "apiVersion": kind.api_version,
                "kind": kind.kind,
                "metadata": { "resourceVersion": version.to_string(), "annotations": annotations },
            },
        })
    };

    let mut state = shared.lock();
    let generation = state.watch_generation;
    let mut events = Vec::new();
    let mut sent_up_to = match requested {
        Some(version) => version,
        None => {
            // No version or "0": the current objects first, as ADDED.
            for ((k, _, _), object) in &state.objects {
                if *k == route.kind && route.matches(object) {
                    events.push(json!({ "type": "ADDED", "object": object }));
                }
            }
            if route.query.flag("sendInitialEvents") && bookmarks {
                let end = json!({ "k8s.io/initial-events-end": "true" });
                events.push(bookmark(state.resource_version, end));
            }
            state.resource_version
        }
    };
    let mut next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    loop {
        if state.stopping || state.watch_generation != generation {
            // Hang up mid-stream: no final chunk.
            drop(state);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if sent_up_to < state.history_start {
            drop(state);
            let gone = json!({ "type": "ERROR", "object": expired(sent_up_to) });
            let _ = write_chunk(stream, &gone).and_then(|()| stream.write_all(b"0\r\n\r\n"));
            return;
        }
        let first = state.history.partition_point(|c| c.resource_version <= sent_up_to);
        for change in &state.history[first..] {
            if change.kind == route.kind
                && let Some(event) = event_for(route, change)
            {
                events.push(event);
            }
        }
        sent_up_to = state.resource_version;
        let now = Instant::now();
        if events.is_empty() && now < next_bookmark && now < deadline {
            let wait = next_bookmark.min(deadline) - now;
            state = shared.changed.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0;
            continue;
        }
        drop(state);
        if now >= next_bookmark.min(deadline) {
            if bookmarks {
                events.push(bookmark(sent_up_to, json!({})));
            }
            next_bookmark = now + BOOKMARK_INTERVAL;
        }
        for event in events.drain(..) {
            if write_chunk(stream, &event).is_err() {
                return;
            }
        }
        if now >= deadline {
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        state = shared.lock();
    }
}

/// What a watch with this route's namespace and selectors sees of a change.
fn event_for(route: &Route, change: &Change) -> Option<Value> {
    let was = change.before.as_ref().is_some_and(|o| route.matches(o));
    let is = change.after.as_ref().is_some_and(|o| route.matches(o));
    let (kind, object) = match (was, is) {
        (false, true) => ("ADDED", change.after.as_ref()),
        (true, true) => ("MODIFIED", change.after.as_ref()),
        // Deleted (no `after`), or no longer selected: its last state.
        (true, false) => ("DELETED", change.after.as_ref().or(change.before.as_ref())),
        (false, false) => return None,
    };
    let mut object = object.unwrap().clone();
    object["metadata"]["resourceVersion"] = json!(change.resource_version.to_string());
    Some(json!({ "type": kind, "object": object }))
}

/// One requirement of a selector: a field or label path, an operator, a value.
struct Requirement {
    field: bool,
    key: String,
    equal: bool,
    /// None: the label exists (`k`) or does not (`!k`).
    value: Option<String>,
}

struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(query: &Query) -> Result<Self, Value> {
        let mut requirements = Vec::new();
        let terms = |name| query.get(name).unwrap_or_default().split(',').filter(|t| !t.trim().is_empty());
        for term in terms("fieldSelector") {
            let (key, equal, value) = split_term(term)
                .ok_or_else(|| status(400, "BadRequest", &format!("invalid field selector {term:?}")))?;
            if !matches!(key, "metadata.name" | "metadata.namespace" | "spec.nodeName") {
                let message = format!("field label not supported by the test API server: {key}");
                return Err(status(400, "BadRequest", &message));
            }
            requirements.push(Requirement { field: true, key: key.into(), equal, value: Some(value.into()) });
        }
        for term in terms("labelSelector") {
            let term = term.trim();
            let requirement = match split_term(term) {
                Some((key, equal, value)) => {
                    Requirement { field: false, key: key.into(), equal, value: Some(value.into()) }
                }
                None if !term.contains([' ', '(', '!', '=']) => {
                    Requirement { field: false, key: term.into(), equal: true, value: None }
                }
                None if term.starts_with('!') && !term[1..].contains([' ', '(', '=']) => {
                    Requirement { field: false, key: term[1..].into(), equal: false, value: None }
                }
                None => {
                    let message = format!("label selector not supported by the test API server: {term:?}");
                    return Err(status(400, "BadRequest", &message));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| {
            let actual = if r.field {
                let pointer = format!("/{}", r.key.replace('.', "/"));
                Some(object.pointer(&pointer).and_then(Value::as_str).unwrap_or_default())
            } else {
                object["metadata"]["labels"].get(&r.key).and_then(Value::as_str)
            };
            match &r.value {
                Some(value) => (actual == Some(value.as_str())) == r.equal,
                None => actual.is_some() == r.equal,
            }
        })
    }
}

/// `k=v`, `k==v` or `k!=v`: key, whether equal, value.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let term = term.trim();
    if let Some((key, value)) = term.split_once("!=") {
        return Some((key.trim(), false, value.trim()));
    }
    let (key, value) = term.split_once("==").or_else(|| term.split_once('='))?;
    Some((key.trim(), true, value.trim()))
}
