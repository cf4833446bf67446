//! What one client, or all of them together, may ask of the API at once: a token bucket per client
//! address (`API.RateLimit`), a cap on requests in flight (`API.MaxConcurrentRequests`) and on open
//! log WebSockets (`API.MaxLogStreams`). Over a limit the answer is 429 with `Retry-After`, before
//! any credential is checked (so a flood cannot make the node hash bcrypt passwords), and the refusal
//! is counted in `caravel_api_throttled_total{reason}`.
//!
//! ```text
//! request ──▶ observe ──▶ limits (rate per IP, in-flight) ──▶ auth ──▶ handler
//!                                                               └─ logs: + a log-stream permit held
//!                                                                  for the WebSocket's life
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use caravel_model::config::ApiConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiErr;
use super::auth::{ClientAddr, ReasonLabel};

/// Client addresses tracked at once; past this, idle buckets are dropped, and if none is idle the
/// newcomers share one bucket (so a spray of source addresses cannot grow the table).
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Paths never limited: the probes an orchestrator of containers uses to decide whether to kill us.
const PROBES: &[&str] = &["/livez", "/readyz", "/api/v1/agent/alive"];

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<IpAddr, Bucket>,
    /// When idle buckets were last dropped: at most once a second, so a full table costs one scan
    /// per second, not one per request.
    swept: Option<Instant>,
}

#[derive(Debug)]
pub struct Limits {
    rate: f64,
    burst: f64,
    exempt_loopback: bool,
    buckets: Mutex<Table>,
    /// The bucket shared by clients that arrive while the table is full of active ones.
    overflow: Mutex<Option<Bucket>>,
    in_flight: Option<Arc<Semaphore>>,
    log_streams: Option<Arc<Semaphore>>,
    throttled: Family<ReasonLabel, Counter>,
}

/// Held by a log WebSocket for as long as it is open.
#[derive(Debug)]
pub struct LogPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    pub fn new(api: &ApiConfig) -> Self {
        let cap = |n: u32| (n > 0).then(|| Arc::new(Semaphore::new(n as usize)));
        let rl = &api.rate_limit;
        Limits {
            rate: f64::from(rl.requests_per_second),
            burst: f64::from(rl.burst.max(1)),
            exempt_loopback: rl.exempt_loopback,
            buckets: Mutex::new(Table::default()),
            overflow: Mutex::new(None),
            in_flight: cap(api.max_concurrent_requests),
            log_streams: cap(api.max_log_streams),
            throttled: Family::default(),
        }
    }

    /// Registers `caravel_api_throttled_total{reason}`.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "api_throttled",
            "API requests refused with 429 by a limit (rate, in_flight, log_streams)",
            self.throttled.clone(),
        );
    }

    fn refuse(&self, reason: &'static str, retry_after: Duration, message: String) -> ApiErr {
        self.throttled.get_or_create(&ReasonLabel { reason }).inc();
        ApiErr::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
            .hint("wait for the Retry-After seconds and try again; an operator can raise API.RateLimit, API.MaxConcurrentRequests or API.MaxLogStreams")
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Takes one token of `ip`'s bucket, or says how long until one is there.
    fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 || (self.exempt_loopback && ip.is_loopback()) {
            return Ok(());
        }
        let mut table = self.buckets.lock().expect("rate buckets");
        if !table.map.contains_key(&ip) && table.map.len() >= MAX_TRACKED_CLIENTS {
            let due = table
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if due {
                // Buckets that have refilled carry no state worth keeping.
                let (rate, burst) = (self.rate, self.burst);
                table
                    .map
                    .retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
                table.swept = Some(now);
            }
            if table.map.len() >= MAX_TRACKED_CLIENTS {
                drop(table);
                let mut shared = self.overflow.lock().expect("overflow bucket");
                return self.spend(&mut shared, now);
            }
        }
        let mut slot = table.map.get(&ip).copied();
        let r = self.spend(&mut slot, now);
        if let Some(b) = slot {
            table.map.insert(ip, b);
        }
        r
    }

    fn spend(&self, slot: &mut Option<Bucket>, now: Instant) -> Result<(), Duration> {
        let b = slot.map_or(
            Bucket {
                tokens: self.burst,
                at: now,
            },
            |b| refill(b, now, self.rate, self.burst),
        );
        if b.tokens >= 1.0 {
            *slot = Some(Bucket {
                tokens: b.tokens - 1.0,
                at: now,
            });
            Ok(())
        } else {
            *slot = Some(b);
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// A permit for one log WebSocket, or the 429 to answer with.
    pub fn log_stream(&self) -> Result<LogPermit, ApiErr> {
        let Some(sem) = &self.log_streams else {
            return Ok(LogPermit(None));
        };
        sem.clone()
            .try_acquire_owned()
            .map(|p| LogPermit(Some(p)))
            .map_err(|_| {
                self.refuse(
                    "log_streams",
                    Duration::from_secs(5),
                    "too many log streams are open on this API (API.MaxLogStreams); close some or use another orchestrator".into(),
                )
            })
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> Bucket {
    let dt = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + dt * rate).min(burst),
        at: now,
    }
}

/// The limits layer: rate per client address, then a slot among the requests in flight, held until
/// the response is produced.
pub async fn middleware(
    State(limits): State<Arc<Limits>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    req: Request,
    next: Next,
) -> Response {
    if PROBES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    if let Err(wait) = limits.take(client.ip(), Instant::now()) {
        tracing::debug!(client = %client, "API request over the client's rate limit");
        return limits
            .refuse(
                "rate",
                wait,
                format!(
                    "this client ({}) is over its rate limit of {} requests per second (burst {})",
                    client.ip(),
                    limits.rate,
                    limits.burst
                ),
            )
            .into_response();
    }
    let _slot = match &limits.in_flight {
        None => None,
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return limits
                    .refuse(
                        "in_flight",
                        Duration::from_secs(1),
                        "the API is serving as many requests as it may at once (API.MaxConcurrentRequests)".into(),
                    )
                    .into_response();
            }
        },
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravel_model::config::RateLimitConfig;

    fn limits(rps: u32, burst: u32, exempt: bool) -> Limits {
        Limits::new(&ApiConfig {
            rate_limit: RateLimitConfig {
                requests_per_second: rps,
                burst,
                exempt_loopback: exempt,
            },
            ..ApiConfig::default()
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let l = limits(10, 3, true);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take(ip, t0).unwrap();
        }
        let wait = l.take(ip, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        l.take(ip, t1).unwrap();
        l.take(ip, t1).unwrap_err();
        // Another client has its own bucket; loopback is exempt.
        l.take("192.0.2.2".parse().unwrap(), t1).unwrap();
        for _ in 0..100 {
            l.take("127.0.0.1".parse().unwrap(), t1).unwrap();
        }
    }

    #[test]
    fn zero_means_no_limit_and_loopback_can_be_limited() {
        let off = limits(0, 1, false);
        for _ in 0..1000 {
            off.take("192.0.2.1".parse().unwrap(), Instant::now())
                .unwrap();
        }
        let strict = limits(1, 1, false);
        let lo: IpAddr = "::1".parse().unwrap();
        strict.take(lo, Instant::now()).unwrap();
        strict.take(lo, Instant::now()).unwrap_err();
    }

    #[test]
    fn a_spray_of_addresses_cannot_grow_the_table() {
        let l = limits(1, 1, true);
        let t = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.take(ip, t);
        }
        assert_eq!(l.buckets.lock().unwrap().map.len(), MAX_TRACKED_CLIENTS);
        // The newcomers share the overflow bucket: the first took its token, the rest wait.
        let ip = IpAddr::from(std::net::Ipv4Addr::new(11, 0, 0, 1));
        l.take(ip, t).unwrap_err();
        // Once the old buckets have refilled they are dropped and newcomers get their own.
        let later = t + Duration::from_secs(5);
        l.take(ip, later).unwrap();
        assert_eq!(l.buckets.lock().unwrap().map.len(), 1);
    }
}
