//! Reaching the fleet's Redis: plain (`redis://`), over TLS (`rediss://`), or through Redis
//! Sentinel (`redis+sentinel://`), whose primary may change under a running fleet.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, TlsCertificates};

use crate::error::FleetError;

/// How long one Redis command may take before it counts as failed: a lease renewal must know in
/// time that it did not get through.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take, at start and on each reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a fleet behind Sentinel asks the sentinels which node is the primary.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// The URL scheme of a fleet behind Redis Sentinel.
const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Where the fleet's Redis is, parsed from its URL.
pub(crate) enum Target {
    /// One node, `redis://` or `rediss://`.
    Node(redis::Client),
    /// Whatever node the sentinels name the primary of `service`.
    Sentinel(Sentinels),
}

/// The sentinels of one monitored primary, and how to reach it.
pub(crate) struct Sentinels {
    /// Asks the sentinels and checks (`ROLE`) that the node they name is a primary.
    client: SentinelClient,
    /// The sentinels' own addresses, for the cheap poll (`SENTINEL get-master-addr-by-name`).
    addrs: Vec<(String, u16)>,
    service: String,
    /// A connection per sentinel, made when first asked.
    conns: Vec<Option<MultiplexedConnection>>,
}

/// The node the fleet talks to now, and the client that reconnects to it.
pub(crate) struct Current {
    pub(crate) conn: ConnectionManager,
    pub(crate) client: redis::Client,
    /// `host:port` of the node, to notice a change of primary.
    pub(crate) addr: String,
}

/// Parses `url`: `redis://`, `rediss://` (with `ca_pem` as the only trusted roots when given,
/// the webpki roots otherwise) or `redis+sentinel://[user[:password]@]host:port[,host:port…]/service[/db]`.
pub(crate) fn target(url: &str, ca_pem: Option<&[u8]>) -> Result<Target, String> {
    if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
        if ca_pem.is_some() {
            return Err(
                "a CA certificate is for rediss:// only; Sentinel is reached without TLS".into(),
            );
        }
        return sentinel_target(rest).map(Target::Sentinel);
    }
    if url.starts_with("rediss+sentinel://") {
        return Err("Sentinel over TLS (rediss+sentinel://) is not supported".into());
    }
    if url.starts_with("rediss://") {
        use_ring_unless_a_provider_is_installed();
    }
    match ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
    .map(Target::Node)
    .map_err(|e| e.to_string())
}

/// The redis crate builds its TLS config from rustls' process-wide provider. With only ring in the
/// dependency tree rustls would pick it by itself; a bot whose tree also enables aws-lc-rs has no
/// automatic choice, and rustls would panic. Installing ring when nothing is installed keeps the
/// project's provider; a provider the bot installed itself is left alone.
fn use_ring_unless_a_provider_is_installed() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn sentinel_target(rest: &str) -> Result<Sentinels, String> {
    let (auth, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("the primary's name is missing (redis+sentinel://host:port,…/name)")?;
    let mut path = path.trim_end_matches('/').splitn(2, '/');
    let service = path.next().unwrap_or_default();
    if service.is_empty() {
        return Err("the primary's name is missing (redis+sentinel://host:port,…/name)".into());
    }
    let db: Option<i64> = match path.next() {
        Some(db) => Some(
            db.parse()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        ),
        None => None,
    };
    let mut addrs = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (h, p) = host
            .rsplit_once(':')
            .ok_or(format!("sentinel {host:?} has no port"))?;
        let port: u16 = p.parse().map_err(|_| format!("sentinel port {p:?}"))?;
        addrs.push((h.trim_matches(['[', ']']).to_owned(), port));
    }
    if addrs.is_empty() {
        return Err("no sentinel address".into());
    }
    let mut builder = SentinelClientBuilder::new(
        addrs
            .iter()
            .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p)),
        service,
        SentinelServerType::Master,
    )
    .map_err(|e| e.to_string())?;
    if let Some(auth) = auth {
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        if !user.is_empty() {
            builder = builder.set_client_to_redis_username(percent_decode(user));
        }
        if !password.is_empty() {
            builder = builder.set_client_to_redis_password(percent_decode(password));
        }
    }
    if let Some(db) = db {
        builder = builder.set_client_to_redis_db(db);
    }
    let conns = addrs.iter().map(|_| None).collect();
    Ok(Sentinels {
        client: builder.build().map_err(|e| e.to_string())?,
        addrs,
        service: service.to_owned(),
        conns,
    })
}

/// `%XX` escapes in a URL's user or password (as in `redis://`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(a), Some(b)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((a * 16 + b) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn manager_config(extra_wait: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT + extra_wait))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// A reconnecting connection to the node of `client`, whose commands may take `extra_wait`
/// longer than usual.
pub(crate) async fn manager(
    client: &redis::Client,
    extra_wait: Duration,
) -> Result<ConnectionManager, String> {
    let connecting = client.get_connection_manager_with_config(manager_config(extra_wait));
    tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

fn addr_of(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Connects to the node `target` names now.
pub(crate) async fn current(target: &mut Target) -> Result<Current, String> {
    let client = match target {
        Target::Node(client) => client.clone(),
        Target::Sentinel(sentinels) => sentinels
            .client
            .async_get_client()
            .await
            .map_err(|e| format!("no primary from the sentinels: {e}"))?,
    };
    let conn = manager(&client, Duration::ZERO).await?;
    Ok(Current {
        addr: addr_of(&client),
        conn,
        client,
    })
}

impl Sentinels {
    /// `host:port` of the primary the first sentinel that answers names.
    async fn primary(&mut self) -> Option<String> {
        for (i, (host, port)) in self.addrs.iter().enumerate() {
            if self.conns[i].is_none() {
                let Ok(client) = redis::Client::open(ConnectionAddr::Tcp(host.clone(), *port))
                else {
                    continue;
                };
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(conn) => self.conns[i] = Some(conn),
                    Err(_) => continue,
                }
            }
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            let named: Result<Option<(String, u16)>, _> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.service)
                .query_async(conn)
                .await;
            match named {
                Ok(Some((h, p))) => return Some(format!("{h}:{p}")),
                Ok(None) => continue,
                Err(_) => {
                    self.conns[i] = None;
                }
            }
        }
        None
    }
}

/// Follows the primary the sentinels name: every [`SENTINEL_POLL`] it asks them, and when they
/// name another node than the one in `slot`, connects to it and puts it in `slot`, where
/// every later command of the fleet picks it up. Ends when the fleet's connection is dropped.
pub(crate) async fn follow_primary(mut sentinels: Sentinels, slot: Weak<RwLock<Current>>) {
    let mut logged_unreachable = false;
    loop {
        tokio::time::sleep(SENTINEL_POLL).await;
        let Some(live) = slot.upgrade() else {
            return;
        };
        let known = read(&live).addr.clone();
        let Some(named) = sentinels.primary().await else {
            if !logged_unreachable {
                tracing::warn!("Redis Sentinel: no sentinel answers; staying on {known}");
                logged_unreachable = true;
            }
            continue;
        };
        logged_unreachable = false;
        if named == known {
            continue;
        }
        // The redis crate checks with `ROLE` that the node it connects to is a primary, so a
        // half-done failover is not followed to a replica.
        let mut target = Target::Sentinel(sentinels);
        let switched = current(&mut target).await;
        let Target::Sentinel(back) = target else {
            return;
        };
        sentinels = back;
        match switched {
            Ok(next) => {
                tracing::info!(from = %known, to = %next.addr, "Redis Sentinel: following the new primary");
                *write(&live) = next;
            }
            Err(e) => tracing::warn!("Redis Sentinel names {named} the primary, but: {e}"),
        }
    }
}

pub(crate) fn read(slot: &RwLock<Current>) -> std::sync::RwLockReadGuard<'_, Current> {
    // A panic while holding the lock cannot leave `Current` half-written (it is replaced whole).
    slot.read().unwrap_or_else(|e| e.into_inner())
}

fn write(slot: &RwLock<Current>) -> std::sync::RwLockWriteGuard<'_, Current> {
    slot.write().unwrap_or_else(|e| e.into_inner())
}

/// Connects to `url` and, behind Sentinel, starts following its primary.
pub(crate) async fn connect(
    url: &str,
    ca_pem: Option<&[u8]>,
) -> Result<Arc<RwLock<Current>>, FleetError> {
    let failed = |reason: String| FleetError::Connect {
        url: redact_url(url),
        reason,
    };
    let mut target = target(url, ca_pem).map_err(failed)?;
    let now = current(&mut target).await.map_err(failed)?;
    let mut conn = now.conn.clone();
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if pong != "PONG" {
        return Err(failed(format!("unexpected answer to PING: {pong}")));
    }
    let slot = Arc::new(RwLock::new(now));
    if let Target::Sentinel(sentinels) = target {
        tokio::spawn(follow_primary(sentinels, Arc::downgrade(&slot)));
    }
    Ok(slot)
}

/// A connection to the fleet's Redis and the prefix of the bot's keys. Cheap to clone: clones share
/// one multiplexed connection, which reconnects by itself after Redis comes back. Behind Redis
/// Sentinel, the connection follows the primary the sentinels name (docs/fleet.md, "Redis").
#[derive(Clone)]
pub struct FleetRedis {
    /// The node the fleet talks to; replaced whole when Sentinel names a new primary.
    current: Arc<std::sync::RwLock<Current>>,
    prefix: Arc<str>,
    /// The bot's shard total, part of every per-shard key once known ([`for_total`](Self::for_total)).
    total: Option<u32>,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRedis")
            .field("prefix", &self.prefix)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl FleetRedis {
    /// Connects to `url` and checks that Redis answers. `prefix` names the bot: every key of it
    /// starts with `prefix:`. Must run inside a tokio (actix) runtime. The URL is one of
    ///
    /// - `redis://[user:password@]host:port[/db]`;
    /// - `rediss://…`, the same over TLS (rustls; the server's certificate is checked against the
    ///   webpki roots: see [`connect_with_ca`](Self::connect_with_ca) for a private CA);
    /// - `redis+sentinel://[user:password@]host:port[,host:port…]/primary-name[/db]`: the
    ///   sentinels to ask for the primary named `primary-name`; the user and password are the
    ///   primary's (the sentinels are asked without them). The fleet follows a failover.
    ///
    /// # Errors
    /// [`FleetError::Connect`] when the URL is not usable, or Redis cannot be reached or does not
    /// answer `PING`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, FleetError> {
        Self::connect_with_ca(url, prefix, None).await
    }

    /// [`connect`](Self::connect) to a `rediss://` URL whose certificate is issued by the CA in
    /// `ca_pem` (PEM, one or more certificates): they are then the only roots trusted, as with
    /// `redis-cli --cacert`. `None` trusts the webpki roots.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); a CA with a URL that is not `rediss://` is refused.
    pub async fn connect_with_ca(
        url: &str,
        prefix: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, FleetError> {
        Ok(Self {
            current: connect(url, ca_pem).await?,
            prefix: prefix.into(),
            total: None,
        })
    }

    /// The same connection, for a bot of `total` shards: every per-shard key (lease, fencing
    /// counter, session, status) then carries the total, so processes that disagree on it never
    /// share a shard's lease or session, and a fleet resharded to another total keeps its keys
    /// apart from the old ones (docs/fleet.md "Keys").
    pub fn for_total(mut self, total: u32) -> Self {
        self.total = Some(total);
        self
    }

    /// The shard total per-shard keys carry, if set.
    pub fn total(&self) -> Option<u32> {
        self.total
    }

    /// The key `prefix:part`.
    pub(crate) fn key(&self, part: std::fmt::Arguments<'_>) -> String {
        format!("{}:{}", self.prefix, part)
    }

    /// The key of one shard's `kind` of state: `prefix:<total>:kind:<shard>` (or
    /// `prefix:kind:<shard>` while no total is set).
    pub(crate) fn shard_key(&self, kind: &str, shard: u32) -> String {
        match self.total {
            Some(total) => format!("{}:{total}:{kind}:{shard}", self.prefix),
            None => format!("{}:{kind}:{shard}", self.prefix),
        }
    }

    /// The bot's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `host:port` of the Redis node commands go to now (behind Sentinel, the primary it last
    /// named).
    pub fn node(&self) -> String {
        read(&self.current).addr.clone()
    }

    /// A handle on the shared connection, for one command or pipeline. Take one per use: behind
    /// Sentinel, a handle kept across a failover still points at the old primary.
    pub(crate) fn conn(&self) -> ConnectionManager {
        read(&self.current).conn.clone()
    }

    /// The same bot over a connection of its own, driven by the runtime this is called in: the
    /// lease renewals run on a thread of their own, so that nothing else the process does (a
    /// blocked thread, a large batch on the shared connection) can hold them up.
    /// It stays on the node it was made for: compare [`node`](Self::node) with the shared one's
    /// and make a new one when they differ (a Sentinel failover).
    pub(crate) async fn isolated(&self) -> Result<FleetRedis, FleetError> {
        let (client, addr) = {
            let current = read(&self.current);
            (current.client.clone(), current.addr.clone())
        };
        let conn = manager(&client, Duration::ZERO)
            .await
            .map_err(|e| FleetError::Command(format!("connecting: {e}")))?;
        Ok(Self {
            current: Arc::new(std::sync::RwLock::new(Current { conn, client, addr })),
            prefix: self.prefix.clone(),
            total: self.total,
        })
    }

    /// A connection of its own, reconnecting like the shared one, whose commands may take up to
    /// `wait` longer than usual: for blocking reads (`XREADGROUP ... BLOCK`), which would hold up
    /// every command behind them on the shared one. It stays on the node it was made for: make a
    /// new one after an error, so that a failover is followed.
    pub(crate) async fn dedicated(&self, wait: Duration) -> Result<ConnectionManager, FleetError> {
        let client = read(&self.current).client.clone();
        manager(&client, wait)
            .await
            .map_err(|e| FleetError::Command(format!("connecting: {e}")))
    }
}

/// A Redis URL without its password, for errors and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_sentinels_primary_and_database() {
        let s = sentinel_target("u:p%40ss@10.0.0.1:26379,[::1]:26380/mymaster/2").unwrap();
        assert_eq!(
            s.addrs,
            vec![("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert_eq!(s.service, "mymaster");
        assert!(sentinel_target("10.0.0.1:26379/").is_err());
        assert!(sentinel_target("10.0.0.1/m").is_err());
        assert!(sentinel_target("10.0.0.1:1/m/x").is_err());
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
    }

    #[test]
    fn sentinel_over_tls_is_refused_rather_than_ignored() {
        assert!(target("rediss+sentinel://h:1/m", None).is_err());
        assert!(target("redis+sentinel://h:1/m", Some(b"pem")).is_err());
    }

    #[test]
    fn passwords_never_show_in_urls() {
        assert_eq!(
            super::redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
