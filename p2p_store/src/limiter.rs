//! Upload bandwidth cap: a virtual-clock token bucket shared by all uploads.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces out sends so that the long-run rate stays at `bytes_per_sec`.
/// A burst of up to `burst` bytes may go out at once.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    burst: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        let bps = bytes_per_sec.max(1) as f64;
        Self {
            bytes_per_sec: bps,
            burst: Duration::from_secs_f64(burst_bytes as f64 / bps),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec as u64
    }

    /// Waits until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Unused capacity accumulates only up to the burst.
            let floor = now.checked_sub(self.burst).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + cost;
            start
        };
        // The send may begin once its slot is reached.
        if start > Instant::now() {
            tokio::time::sleep_until(start).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_is_respected() {
        let l = RateLimiter::new(1_000_000, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            l.acquire(200_000).await;
        }
        // 10 x 200 kB at 1 MB/s: the last send starts at 1.8 s.
        let el = t0.elapsed();
        assert!(el >= Duration::from_millis(1790), "{el:?}");
        assert!(el <= Duration::from_millis(1850), "{el:?}");
    }
}
