//! A bound on what a client without an accepted token can cost the API server. Each request whose token the
//! review cache does not hold as accepted (`auth`) makes a TokenReview, or was refused: a client sending random
//! tokens would otherwise have the server review each one, loading the API server with no valid credential. Such
//! requests are limited per client by a token bucket; over it they are answered 429 with `Retry-After`, and no
//! review is made. Requests with a token already accepted are never limited: a reader polling a tail, or an agent
//! uploading with its reviewed token, is not slowed by anyone.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use prometheus_client::metrics::counter::Counter;

use crate::error::{Error, Result};

/// Reviews a client may start at once, and how many more per second after that. What people and agents need is
/// a handful: a browser login is one review (the page's requests after it reuse the cached answer), an agent's
/// restart or token rotation one, a `sonde results` command one (each mints its own token), a schemathesis run
/// as one reader one per 30 s. A flood needs thousands a second; at 5 a second each client costs the API server
/// next to nothing, and 20 at once leave room for a few tabs or commands started together.
pub const BURST: u32 = 20;
pub const PER_SECOND: u32 = 5;
/// Clients tracked at most (as the review cache's entries). Past it, idle buckets (refilled to full: the same as
/// none) are swept, once a second at most; while it is still full, new clients share one bucket of the same
/// size. So a flood from more addresses than this costs neither memory without bound nor a sweep per request
/// under the table's lock, and what the clients past it can cost together is bounded as one client's.
pub const CLIENTS: usize = 10_000;
/// How often a full table is swept of idle buckets at most (as `auth`'s review cache).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Who a request comes from, for the limit: its TCP peer's address, IPv4 or IPv6 (an IPv4-mapped IPv6 address
/// as its IPv4 one). The server is a cluster Service: its clients are pods, each with an address of its own,
/// and a node's pods share a /64, so grouping by /64 would let one pod starve its neighbours and its node's
/// agent. A client that takes fresh addresses for a flood is the cluster's network policy's to stop.
///
/// Never `X-Forwarded-For` or the like: the chart exposes the server through its own Service with no proxy in
/// front whose header it could trust, so such a header says whatever the client wrote, and would give a flood a
/// fresh bucket per request. Behind a proxy of one's own (an Ingress, `kubectl port-forward`) every client
/// shares the proxy's address, hence one bucket: a flood through it then delays others' new tokens, never
/// requests with tokens already accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(IpAddr);

impl Peer {
    /// Requests of a router served without its clients' addresses, in this crate's tests only.
    pub(crate) const UNKNOWN: Peer = Peer(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    pub fn of(ip: IpAddr) -> Peer {
        match ip {
            // Each pod has an address of its own, and a node's pods share one /64 (a node's pod CIDR): a /64
            // bucket would let a pod on a node starve its neighbours and its node's agent.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer(IpAddr::V4(v4)),
                None => Peer(IpAddr::V6(v6)),
            },
            v4 => Peer(v4),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}"),
        }
    }
}

/// The TCP peer, as `axum::serve` gives it with `into_make_service_with_connect_info::<SocketAddr>()`
/// (`routes::app`, which main.rs serves). A router served without it has no address to limit by: in this crate's
/// tests its requests are one client, otherwise refused (500) rather than all limited together.
impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer> {
        match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => Ok(Peer::of(addr.ip())),
            None if cfg!(test) => Ok(Peer::UNKNOWN),
            None => Err(Error::NoPeer),
        }
    }
}

/// Token buckets by client, each kept as the instant it is full again (the generic cell rate algorithm: the same
/// as a bucket of `burst` tokens gaining `per_second`, counted exactly in `Instant`s): each review taken moves
/// that instant one interval (1 / `per_second`) later, and a client whose bucket is full again later than
/// `burst - 1` intervals from now has no token left.
pub struct Limiter {
    interval: Duration,
    /// How far ahead a bucket may be full again and still hold a token: `burst - 1` intervals.
    tolerance: Duration,
    burst: u32,
    per_second: u32,
    capacity: usize,
    table: Mutex<Table>,
    /// Requests refused (`sonde_results_rate_limited_total`). No label per client: clients are unbounded.
    pub refused: Counter,
}

struct Table {
    buckets: HashMap<Peer, Bucket>,
    /// The bucket of clients that found the table full of active ones.
    overflow: Bucket,
    swept: Instant,
    #[cfg(test)]
    sweeps: u32,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// When it holds `burst` tokens again; at or before now, it does (an idle bucket, the same as none).
    full_at: Instant,
    /// Refused since it last allowed a request: a refusal is logged once per flood, not per request.
    refusing: bool,
}

impl Limiter {
    pub fn new(burst: u32, per_second: u32, capacity: usize) -> Limiter {
        let (burst, per_second) = (burst.max(1), per_second.max(1));
        let interval = Duration::from_secs(1) / per_second;
        let now = Instant::now();
        Limiter {
            interval,
            tolerance: interval * (burst - 1),
            burst,
            per_second,
            capacity,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                overflow: Bucket {
                    full_at: now,
                    refusing: false,
                },
                swept: now,
                #[cfg(test)]
                sweeps: 0,
            }),
            refused: Counter::default(),
        }
    }

    /// Lets `peer` start a review at `now` (taking one of its tokens), or refuses it with how long to wait. A
    /// `now` earlier than one seen before (requests take theirs before waiting for the lock) gives nothing back.
    pub fn take(&self, peer: Peer, now: Instant) -> Result<()> {
        let mut guard = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *guard;
        if !table.buckets.contains_key(&peer) {
            if table.buckets.len() >= self.capacity && now >= table.swept + SWEEP_EVERY {
                table.buckets.retain(|_, b| b.full_at > now);
                table.swept = now;
                #[cfg(test)]
                {
                    table.sweeps += 1;
                }
            }
            if table.buckets.len() < self.capacity {
                let full = Bucket {
                    full_at: now,
                    refusing: false,
                };
                table.buckets.insert(peer, full);
            }
        }
        let (bucket, shared) = match table.buckets.get_mut(&peer) {
            Some(b) => (b, false),
            None => (&mut table.overflow, true),
        };
        let ahead = bucket.full_at.saturating_duration_since(now);
        if ahead <= self.tolerance {
            bucket.full_at = bucket.full_at.max(now) + self.interval;
            bucket.refusing = false;
            return Ok(());
        }
        let first = !std::mem::replace(&mut bucket.refusing, true);
        drop(guard);
        self.refused.inc();
        let client = match shared {
            false => peer.to_string(),
            true => format!(
                "{peer} (with every client past the {} this server tracks)",
                self.capacity
            ),
        };
        if first {
            tracing::warn!(
                client,
                "refusing requests with tokens not yet reviewed: over the limit"
            );
        }
        // Until a token is back, in whole seconds (RFC 9110 delay-seconds), at least one.
        let wait = (ahead - self.tolerance).as_nanos().div_ceil(1_000_000_000);
        Err(Error::TooManyReviews {
            client,
            burst: self.burst,
            per_second: self.per_second,
            retry_after: u64::try_from(wait).unwrap_or(u64::MAX).max(1),
        })
    }

    #[cfg(test)]
    fn clients(&self) -> (usize, u32) {
        let t = self.table.lock().unwrap();
        (t.buckets.len(), t.sweeps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> Peer {
        Peer::of(IpAddr::V4(Ipv4Addr::from(n)))
    }

    fn retry_after(r: Result<()>) -> u64 {
        match r {
            Err(Error::TooManyReviews { retry_after, .. }) => retry_after,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_client_past_its_burst_waits_for_the_refill_and_others_do_not() {
        let limiter = Limiter::new(BURST, PER_SECOND, CLIENTS);
        let t0 = Instant::now();
        for i in 0..BURST {
            limiter
                .take(ip(1), t0)
                .unwrap_or_else(|e| panic!("{i}: {e}"));
        }
        let refused = limiter.take(ip(1), t0).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("too many requests with tokens not yet reviewed from 0.0.0.1: "),
            "{refused}"
        );
        assert_eq!(retry_after(Err(refused)), 1);
        // Waiting does not help before a token has come back, and a refused request takes none.
        assert_eq!(
            retry_after(limiter.take(ip(1), t0 + Duration::from_millis(100))),
            1
        );
        // Another client is unaffected.
        limiter.take(ip(2), t0).unwrap();
        // One second later: PER_SECOND more, then refused again.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..PER_SECOND {
            limiter.take(ip(1), t1).unwrap();
        }
        limiter.take(ip(1), t1).unwrap_err();
        // A clock that goes back (another request's `now`, taken earlier) gives nothing back.
        limiter.take(ip(1), t0).unwrap_err();
        assert_eq!(limiter.refused.get(), 4);
        // Idle long enough, the whole burst again.
        let t2 = t1 + Duration::from_secs(u64::from(BURST / PER_SECOND));
        for _ in 0..BURST {
            limiter.take(ip(1), t2).unwrap();
        }
        limiter.take(ip(1), t2).unwrap_err();
    }

    /// 100,000 clients, each flooding: the table stays at its capacity, swept once a second at most (not per
    /// request), the clients past it share one bucket, and once the flood stops new clients get their own.
    #[test]
    fn the_table_stays_bounded_under_a_hundred_thousand_clients() {
        let limiter = Limiter::new(BURST, PER_SECOND, CLIENTS);
        let t0 = Instant::now() + SWEEP_EVERY;
        let mut allowed = 0;
        for n in 0..100_000 {
            let now = t0 + Duration::from_micros(n.into());
            allowed += (0..3).filter(|_| limiter.take(ip(n), now).is_ok()).count();
            assert!(
                limiter.clients().0 <= CLIENTS,
                "{:?} after {n}",
                limiter.clients()
            );
        }
        // The tracked ones each got 3; the 90,000 past them shared one burst (0.1 s gave it no token back).
        assert_eq!(allowed, 3 * CLIENTS + BURST as usize);
        assert_eq!(limiter.clients(), (CLIENTS, 1), "swept more than once");
        // Past the refill time the tracked buckets are idle: a new client sweeps them and is tracked.
        let later = t0 + Duration::from_secs(u64::from(BURST / PER_SECOND) + 1);
        limiter.take(ip(200_000), later).unwrap();
        assert_eq!(limiter.clients(), (1, 2));
    }

    #[test]
    fn ipv6_clients_are_their_own_address() {
        // Two pods of one node: one /64, two clients (one flooding must not starve the other).
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_ne!(Peer::of(a), Peer::of(b));
        assert_eq!(Peer::of(a).to_string(), "2001:db8:1:2:aaaa::1");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Peer::of(mapped).to_string(), "10.1.2.3");
    }
}
