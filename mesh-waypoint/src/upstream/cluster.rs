//! A cluster: the endpoints one (host, subset, port) resolves to, with the DestinationRule's
//! traffic policy applied to them: load balancing, connection-pool limits (circuit breaking)
//! and outlier detection (ejection). Its counters outlive configuration updates, so an
//! ejected endpoint stays ejected and in-flight requests stay counted across them.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_api::{
    duration,
    networking::{
        ConnectionPoolSettings, ConsistentHash, LocalityLbSetting, OutlierDetection, SimpleLb,
        TrafficPolicy,
    },
};

use crate::store::Endpoint;

/// How endpoints are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Random,
    /// By a hash of the request's key (header, cookie, query parameter or source address).
    Hash(HashKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    SourceIp,
}

/// Connection-pool limits; `None` is unlimited (Envoy's defaults are effectively so).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_pending: Option<usize>,
    pub max_requests: Option<usize>,
    pub max_requests_per_connection: Option<usize>,
    pub max_retries: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// The traffic policy of one cluster, from its DestinationRule (subset over top level).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub balance: Balance,
    pub limits: Limits,
    pub outlier: Option<Outlier>,
    /// Locality-aware load balancing: only with outlier detection, as in Istio.
    pub locality: Option<LocalityLbSetting>,
    /// Why requests are refused, when the rule's `tls` asks for what Ambit does not do.
    pub tls_refusal: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            // Istio's default.
            balance: Balance::LeastRequest,
            limits: Limits::default(),
            outlier: None,
            locality: None,
            tls_refusal: None,
        }
    }
}

fn positive(n: Option<i32>) -> Option<usize> {
    n.filter(|n| *n > 0).map(|n| n as usize)
}

impl Policy {
    /// The policy for `port` from the DestinationRule's top level and its subset's (the
    /// subset's and port-level settings win, field group by field group, as in Istio).
    pub fn from_rule(
        top: Option<&TrafficPolicy>,
        subset: Option<&TrafficPolicy>,
        port: u16,
    ) -> Self {
        let mut policy = Policy::default();
        let mut locality: Option<LocalityLbSetting> = None;
        for level in [top, subset].into_iter().flatten() {
            let port_level = level
                .port_level_settings
                .iter()
                .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)));
            let lb = port_level
                .and_then(|p| p.load_balancer.as_ref())
                .or(level.load_balancer.as_ref());
            if let Some(lb) = lb {
                if let Some(setting) = &lb.locality_lb_setting {
                    locality = Some(setting.clone());
                }
                policy.balance = match (&lb.consistent_hash, lb.simple) {
                    (Some(hash), _) => Balance::Hash(hash_key(hash)),
                    (None, Some(SimpleLb::RoundRobin)) => Balance::RoundRobin,
                    (None, Some(SimpleLb::Random)) => Balance::Random,
                    _ => Balance::LeastRequest,
                };
            }
            let pool = port_level
                .and_then(|p| p.connection_pool.as_ref())
                .or(level.connection_pool.as_ref());
            if let Some(pool) = pool {
                policy.limits = limits(pool);
            }
            let outlier = port_level
                .and_then(|p| p.outlier_detection.as_ref())
                .or(level.outlier_detection.as_ref());
            if let Some(outlier) = outlier {
                policy.outlier = Some(outlier_of(outlier));
            }
            let tls = port_level
                .and_then(|p| p.tls.as_ref())
                .or(level.tls.as_ref());
            if let Some(tls) = tls {
                policy.tls_refusal = tls.refusal();
            }
        }
        // As Istio's mesh default: on (failover by nearness) wherever outliers are ejected,
        // unless the rule turns it off.
        policy.locality = match policy.outlier {
            Some(_) => Some(locality.unwrap_or_default()).filter(|l| l.enabled != Some(false)),
            None => None,
        };
        policy
    }
}

fn hash_key(hash: &ConsistentHash) -> HashKey {
    if let Some(header) = hash
        .http_header_name
        .as_ref()
        .and_then(|h| http::HeaderName::try_from(h.as_str()).ok())
    {
        HashKey::Header(header)
    } else if let Some(cookie) = &hash.http_cookie {
        HashKey::Cookie(cookie.name.clone())
    } else if let Some(query) = &hash.http_query_parameter_name {
        HashKey::Query(query.clone())
    } else {
        HashKey::SourceIp
    }
}

fn limits(pool: &ConnectionPoolSettings) -> Limits {
    let http = pool.http.as_ref();
    Limits {
        max_connections: positive(pool.tcp.as_ref().and_then(|t| t.max_connections)),
        max_pending: positive(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: positive(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
        max_retries: positive(http.and_then(|h| h.max_retries)),
    }
}

fn outlier_of(o: &OutlierDetection) -> Outlier {
    let consecutive_5xx = o
        .consecutive_5xx_errors
        .or(o.consecutive_errors.map(|n| n.max(0) as u32));
    Outlier {
        // Envoy's default: 5 consecutive 5xx when the rule names none.
        consecutive_5xx: match (consecutive_5xx, o.consecutive_gateway_errors) {
            (None, None) => Some(5),
            (n, _) => n.filter(|n| *n > 0),
        },
        consecutive_gateway: o.consecutive_gateway_errors.filter(|n| *n > 0),
        base_ejection: o
            .base_ejection_time
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: o
            .max_ejection_percent
            .map_or(10, |p| p.clamp(0, 100) as u32),
    }
}

/// What the waypoint tracks of one endpoint.
#[derive(Default)]
pub struct EndpointStats {
    pub active: AtomicUsize,
    outlier: Mutex<OutlierState>,
}

#[derive(Default)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl EndpointStats {
    fn ejected(&self, now: Instant) -> bool {
        let state = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        state.ejected_until.is_some_and(|until| until > now)
    }
}

/// One cluster's counters, kept across configuration updates.
#[derive(Default)]
pub struct Cluster {
    next: AtomicU64,
    pub active_requests: AtomicUsize,
    pub pending: AtomicUsize,
    pub active_retries: AtomicUsize,
    pub connections: Arc<AtomicUsize>,
    /// Per endpoint address.
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl Cluster {
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Picks an endpoint by `policy`, skipping ejected ones (unless all are: then all are
    /// candidates, as Envoy's panic threshold does). `key` is the request's hash key.
    pub fn pick<'e>(
        &self,
        endpoints: &'e [Endpoint],
        policy: &Policy,
        key: Option<&str>,
    ) -> Option<&'e Endpoint> {
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut healthy: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| !self.stats(e.addr).ejected(now))
            .collect();
        if healthy.is_empty() {
            healthy = endpoints.iter().collect();
        }
        // The nearest tier with endpoints left; with shares, one locality by its share.
        if let Some(nearest) = healthy.iter().map(|e| e.placement.tier).min() {
            healthy.retain(|e| e.placement.tier == nearest);
        }
        if healthy.iter().any(|e| e.placement.weight > 0) {
            let mut groups: Vec<(u32, u32)> = healthy
                .iter()
                .map(|e| (e.placement.group, e.placement.weight))
                .collect();
            groups.sort_unstable();
            groups.dedup();
            let (group, _) = *crate::routes::pick_weighted(&groups, |(_, weight)| *weight);
            healthy.retain(|e| e.placement.group == group);
        }
        // A stable order, so hashing and round robin do not depend on update order.
        healthy.sort_by_key(|e| e.addr);
        let n = healthy.len() as u64;
        let index = match (&policy.balance, key) {
            (Balance::Hash(_), Some(key)) => jump_hash(hash_of(key), n),
            (Balance::RoundRobin, _) => self.next.fetch_add(1, Ordering::Relaxed) % n,
            (Balance::LeastRequest, _) if n > 1 => {
                // Power of two choices.
                let a = fastrand::u64(..n);
                let b = (a + 1 + fastrand::u64(..n - 1)) % n;
                let load = |i: u64| {
                    self.stats(healthy[i as usize].addr)
                        .active
                        .load(Ordering::Relaxed)
                };
                if load(b) < load(a) { b } else { a }
            }
            _ => fastrand::u64(..n),
        };
        Some(healthy[index as usize])
    }

    /// Records a response (or failure) from `addr` for outlier detection. `gateway` marks a
    /// connect failure, reset or 502-504.
    pub fn record(
        &self,
        addr: SocketAddr,
        policy: &Policy,
        server_error: bool,
        gateway: bool,
        total: usize,
    ) {
        let Some(outlier) = &policy.outlier else {
            return;
        };
        let stats = self.stats(addr);
        let mut state = stats.outlier.lock().unwrap_or_else(|p| p.into_inner());
        if !server_error && !gateway {
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            return;
        }
        state.consecutive_5xx += 1;
        if gateway {
            state.consecutive_gateway += 1;
        }
        let tripped = outlier
            .consecutive_5xx
            .is_some_and(|n| state.consecutive_5xx >= n)
            || outlier
                .consecutive_gateway
                .is_some_and(|n| state.consecutive_gateway >= n);
        let now = Instant::now();
        if !tripped || state.ejected_until.is_some_and(|u| u > now) {
            return;
        }
        drop(state);
        // Never eject more than the allowed share (at least one endpoint may go).
        let ejected = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.ejected(now))
            .count();
        let allowed = ((total as u32 * outlier.max_ejection_percent) / 100).max(1) as usize;
        if ejected >= allowed {
            return;
        }
        let mut state = stats.outlier.lock().unwrap_or_else(|p| p.into_inner());
        state.ejections += 1;
        state.ejected_until = Some(now + outlier.base_ejection * state.ejections);
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        tracing::info!(endpoint = %addr, for_ms = (outlier.base_ejection * state.ejections).as_millis() as u64,
            "endpoint ejected by outlier detection");
    }
}

fn hash_of(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Lamping and Veach's jump consistent hash: a key moves only when its bucket goes.
fn jump_hash(mut key: u64, buckets: u64) -> u64 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([10, 0, 0, i + 1], 80)),
                workload: None,
                via: None,
                placement: Default::default(),
            })
            .collect()
    }

    #[test]
    fn a_hash_key_stays_on_one_endpoint_and_round_robin_visits_all() {
        let cluster = Cluster::default();
        let eps = endpoints(4);
        let hash = Policy {
            balance: Balance::Hash(HashKey::Header(http::HeaderName::from_static("x-user"))),
            ..Policy::default()
        };
        let first = cluster.pick(&eps, &hash, Some("jason")).unwrap().addr;
        for _ in 0..50 {
            assert_eq!(
                cluster.pick(&eps, &hash, Some("jason")).unwrap().addr,
                first
            );
        }
        let rr = Policy {
            balance: Balance::RoundRobin,
            ..Policy::default()
        };
        let seen: std::collections::BTreeSet<_> = (0..4)
            .map(|_| cluster.pick(&eps, &rr, None).unwrap().addr)
            .collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn consecutive_errors_eject_within_the_allowed_share() {
        let cluster = Cluster::default();
        let eps = endpoints(2);
        let policy = Policy {
            balance: Balance::RoundRobin,
            outlier: Some(Outlier {
                consecutive_5xx: Some(2),
                consecutive_gateway: None,
                base_ejection: Duration::from_secs(60),
                max_ejection_percent: 50,
            }),
            ..Policy::default()
        };
        let bad = eps[0].addr;
        cluster.record(bad, &policy, true, false, 2);
        assert!((0..4).any(|_| cluster.pick(&eps, &policy, None).unwrap().addr == bad));
        cluster.record(bad, &policy, true, false, 2);
        for _ in 0..10 {
            assert_ne!(
                cluster.pick(&eps, &policy, None).unwrap().addr,
                bad,
                "ejected"
            );
        }
        // The other may not go too: 50 % of 2 is one endpoint.
        let good = eps[1].addr;
        cluster.record(good, &policy, true, false, 2);
        cluster.record(good, &policy, true, false, 2);
        assert_eq!(cluster.pick(&eps, &policy, None).unwrap().addr, good);
    }

    /// Locality: the nearest tier takes every request until its endpoints are ejected; with
    /// shares, each locality group takes its share.
    #[test]
    fn the_nearest_tier_takes_requests_until_it_is_ejected() {
        use crate::upstream::locality::Placement;
        let cluster = Cluster::default();
        let mut eps = endpoints(3);
        eps[1].placement.tier = 2;
        eps[2].placement.tier = 4;
        let policy = Policy {
            outlier: Some(Outlier {
                consecutive_5xx: Some(1),
                consecutive_gateway: None,
                base_ejection: Duration::from_secs(60),
                max_ejection_percent: 100,
            }),
            ..Policy::default()
        };
        let picks = |eps: &[Endpoint]| -> Vec<SocketAddr> {
            (0..50)
                .map(|_| cluster.pick(eps, &policy, None).unwrap().addr)
                .collect()
        };
        assert!(
            picks(&eps).iter().all(|a| *a == eps[0].addr),
            "nearest first"
        );
        cluster.record(eps[0].addr, &policy, true, false, 3);
        assert!(
            picks(&eps).iter().all(|a| *a == eps[1].addr),
            "then the next tier"
        );

        let shared = Cluster::default();
        let mut eps = endpoints(3);
        let placement = |group, weight| Placement {
            tier: 0,
            group,
            weight,
        };
        eps[0].placement = placement(0, 80);
        eps[1].placement = placement(1, 20);
        eps[2].placement = placement(1, 20);
        let first = (0..2000)
            .filter(|_| shared.pick(&eps, &Policy::default(), None).unwrap().addr == eps[0].addr)
            .count();
        // 80 % of 2,000 is 1,600 (sd 18): the group, not each endpoint, has the share.
        assert!((1500..=1700).contains(&first), "{first} of 2000");
    }
}
