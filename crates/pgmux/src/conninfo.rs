//! What the admin console shows of each client and server connection
//! (SHOW CLIENTS, SHOW SERVERS): fixed facts plus a few atomics the relay
//! stores as the connection changes state. Each pool keeps its own list, so
//! registering touches only that pool's lock, and only at connect and close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// PgBouncer's state names, so tools read them unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Active = 0,
    Waiting = 1,
    Idle = 2,
    Used = 3,
    Tested = 4,
    Login = 5,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Active,
            1 => State::Waiting,
            2 => State::Idle,
            3 => State::Used,
            4 => State::Tested,
            _ => State::Login,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Waiting => "waiting",
            State::Idle => "idle",
            State::Used => "used",
            State::Tested => "tested",
            State::Login => "login",
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    micros_at(Instant::now())
}

/// Microseconds since the Unix epoch at `at`: the wall clock read once,
/// then advanced by the monotonic clock. So the instant a request's timing
/// already read serves its connection record too (no second clock read per
/// transaction), and a step of the wall clock cannot make a wait negative.
pub fn micros_at(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (base, base_us) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), wall)
    });
    base_us + at.saturating_duration_since(base).as_micros() as u64
}

/// An address as a connection record keeps it: IPv4 (nearly every peer)
/// in place, anything else boxed, so each of a record's two addresses
/// takes 16 bytes instead of `Option<SocketAddr>`'s 32 (every idle client
/// keeps a record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Addr {
    #[default]
    Unknown,
    V4([u8; 4], u16),
    Other(Box<SocketAddr>),
}

impl Addr {
    pub fn get(&self) -> Option<SocketAddr> {
        match self {
            Addr::Unknown => None,
            Addr::V4(ip, port) => Some(SocketAddr::from((*ip, *port))),
            Addr::Other(addr) => Some(**addr),
        }
    }
}

impl From<Option<SocketAddr>> for Addr {
    fn from(addr: Option<SocketAddr>) -> Addr {
        match addr {
            None => Addr::Unknown,
            Some(SocketAddr::V4(v4)) => Addr::V4(v4.ip().octets(), v4.port()),
            Some(other) => Addr::Other(Box::new(other)),
        }
    }
}

/// One connection, client or server.
pub struct ConnInfo {
    pub id: u64,
    /// The peer: a client's address, or the server's.
    pub addr: Addr,
    pub local: Addr,
    pub connected_us: u64,
    /// For a server, its backend pid; for a client, the pid pgmux gave it.
    pub remote_pid: u32,
    pub application_name: Box<str>,
    /// For a server: the pool generation it was opened under.
    pub generation: u64,
    /// Its TLS protocol and cipher ([`tls_code`]; 0: plaintext).
    pub tls: u8,
    /// For a client: asked to stop (drain, shutdown, KILL).
    pub stop: crate::lifecycle::StopSignal,
    state: AtomicU8,
    request_us: AtomicU64,
    /// When a client began waiting for a server (Waiting), or became idle
    /// (Idle, recorded only where `client_idle_timeout` is set); 0: unknown.
    waiting_since_us: AtomicU64,
    /// The id of the connection it is linked to, or 0.
    link: AtomicU64,
    /// For a client in transaction mode: the session state pinning it to
    /// its server (a `session::state::pins::Pins` set), kept here rather than
    /// in the idle task.
    pins: AtomicU8,
    /// For a client: closed for `client_idle_timeout`.
    idle_timed_out: AtomicBool,
}

impl ConnInfo {
    pub fn new(id: u64, state: State) -> ConnInfo {
        let now = now_micros();
        ConnInfo {
            id,
            addr: Addr::Unknown,
            local: Addr::Unknown,
            connected_us: now,
            remote_pid: 0,
            application_name: Box::default(),
            generation: 0,
            tls: 0,
            stop: Default::default(),
            state: AtomicU8::new(state as u8),
            request_us: AtomicU64::new(now),
            waiting_since_us: AtomicU64::new(0),
            link: AtomicU64::new(0),
            pins: AtomicU8::new(0),
            idle_timed_out: AtomicBool::new(false),
        }
    }

    pub fn pin_bits(&self) -> u8 {
        self.pins.load(Ordering::Relaxed)
    }

    pub fn set_pin_bits(&self, bits: u8) {
        self.pins.store(bits, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// A request began (the client asked, or the server was lent).
    pub fn requested(&self, at_us: u64) {
        self.request_us.store(at_us, Ordering::Relaxed);
    }

    pub fn request_us(&self) -> u64 {
        self.request_us.load(Ordering::Relaxed)
    }

    pub fn start_waiting(&self, at_us: u64) {
        self.waiting_since_us.store(at_us, Ordering::Relaxed);
        self.set_state(State::Waiting);
    }

    /// The client became idle at `at_us`.
    pub fn idle_from(&self, at_us: u64) {
        self.waiting_since_us.store(at_us, Ordering::Relaxed);
        self.set_state(State::Idle);
    }

    /// Whether an idle client has been idle `limit_us` or longer; a client
    /// whose idle start is unknown (idle since before the timeout was set)
    /// counts from now.
    pub fn idle_past(&self, now_us: u64, limit_us: u64) -> bool {
        if self.state() != State::Idle {
            return false;
        }
        match self.waiting_since_us.load(Ordering::Relaxed) {
            0 => {
                let _ = self.waiting_since_us.compare_exchange(
                    0,
                    now_us,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                false
            }
            since => now_us.saturating_sub(since) >= limit_us,
        }
    }

    /// Ask an idle client to leave for `client_idle_timeout`.
    pub fn time_out_idle(&self) {
        self.idle_timed_out.store(true, Ordering::Release);
        self.stop.raise(crate::lifecycle::Stop::AfterTransaction);
    }

    pub fn idle_timed_out(&self) -> bool {
        self.idle_timed_out.load(Ordering::Acquire)
    }

    /// How long a waiting client has waited, in microseconds (0 otherwise).
    pub fn waited_us(&self, now_us: u64) -> u64 {
        if self.state() != State::Waiting {
            return 0;
        }
        now_us.saturating_sub(self.waiting_since_us.load(Ordering::Relaxed))
    }

    pub fn link(&self, other: u64) {
        self.link.store(other, Ordering::Relaxed);
    }

    pub fn linked(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }
}

/// Ids for connections, unique across clients and servers (SHOW's `ptr`
/// and `link` columns refer to them).
pub fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// PgBouncer's timestamp text: `2026-11-27 15:52:01 UTC`.
pub fn format_timestamp(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's well-known algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// TLS descriptions (`TLSv1.3/TLS13_AES_256_GCM_SHA384`), interned, so a
/// connection keeps one byte for its `tls` column. Only a handful of
/// protocol and cipher pairs exist; past 254 the rest read "TLS".
static TLS_NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// The code of a TLS description (taken once per TLS connection).
pub fn tls_code(description: &str) -> u8 {
    let mut names = TLS_NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = names.iter().position(|n| *n == description) {
        return i as u8 + 1;
    }
    if names.len() >= 254 {
        return u8::MAX;
    }
    names.push(Box::leak(description.to_owned().into_boxed_str()));
    names.len() as u8
}

/// What SHOW CLIENTS and SHOW SERVERS print for a `tls` code.
pub fn tls_name(code: u8) -> &'static str {
    match code {
        0 => "",
        u8::MAX => "TLS",
        c => {
            let names = TLS_NAMES.lock().unwrap_or_else(|p| p.into_inner());
            names.get(usize::from(c) - 1).copied().unwrap_or("TLS")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_pgbouncer_ones() {
        assert_eq!(format_timestamp(0), "1970-01-01 00:00:00 UTC");
        // 2026-11-27 15:52:01 UTC
        assert_eq!(
            format_timestamp(1_795_794_721_000_000),
            "2026-11-27 15:52:01 UTC"
        );
        // A leap day.
        assert_eq!(
            format_timestamp(951_782_400_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }

    #[test]
    fn addresses_keep_what_they_were_given() {
        for text in ["127.0.0.1:5432", "[::1]:6432", "10.1.2.3:65535"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(Addr::from(Some(addr)).get(), Some(addr));
        }
        assert_eq!(Addr::from(None).get(), None);
        assert_eq!(std::mem::size_of::<Addr>(), 16);
    }
}
