//! Link emulator for the namespace testnet (`testnet/netns.sh delay`).
//!
//! The kernels this project is tested on may lack `sch_netem`, so latency,
//! jitter and loss between validators are applied here instead: the host's
//! FORWARD chain hands every packet between two namespaces to an NFQUEUE,
//! and this process releases each one after the configured delay, or drops
//! it. Packets leave in arrival order (jitter never reorders a stream), and
//! at most `--limit` are held; beyond that, new ones are dropped, as a full
//! netem queue would. Timing is accurate to about a millisecond.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use nfq::{Message, Queue, Verdict};

#[derive(Parser, Debug)]
#[command(about = "Delays, jitters and drops the packets of one NFQUEUE")]
struct Args {
    /// The NFQUEUE number the iptables rule sends packets to.
    #[arg(long)]
    queue: u16,
    /// One-way delay added to every packet, in milliseconds.
    #[arg(long, default_value_t = 25.0)]
    delay_ms: f64,
    /// Each packet's delay varies uniformly by up to ± this, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Percentage of packets dropped.
    #[arg(long, default_value_t = 0.0)]
    loss_pct: f64,
    /// Most packets held at once.
    #[arg(long, default_value_t = 100_000)]
    limit: usize,
}

/// xorshift64*: a reproducible sequence is all jitter and loss need.
struct Dice(u64);

impl Dice {
    /// Uniform in [0, 1).
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Link {
    delay: f64,
    jitter: f64,
    loss: f64,
    dice: Dice,
    last_release: Instant,
}

impl Link {
    /// When a packet that arrives `now` leaves, or `None` if it is lost.
    fn release_time(&mut self, now: Instant) -> Option<Instant> {
        if self.loss > 0.0 && self.dice.roll() * 100.0 < self.loss {
            return None;
        }
        let ms = (self.delay + self.jitter * (2.0 * self.dice.roll() - 1.0)).max(0.0);
        let at = (now + Duration::from_secs_f64(ms / 1000.0)).max(self.last_release);
        self.last_release = at;
        Some(at)
    }
}

fn answer(queue: &mut Queue, mut msg: Message, verdict: Verdict) -> Result<()> {
    msg.set_verdict(verdict);
    queue.verdict(msg).context("sending a verdict")
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.delay_ms >= 0.0 && args.jitter_ms >= 0.0 && (0.0..=100.0).contains(&args.loss_pct),
        "delay and jitter must be >= 0 and loss within 0..=100"
    );
    let mut queue = Queue::open().context("opening a netfilter queue socket (needs root)")?;
    queue
        .bind(args.queue)
        .with_context(|| format!("binding NFQUEUE {}", args.queue))?;
    queue.set_nonblocking(true);
    let mut link = Link {
        delay: args.delay_ms,
        jitter: args.jitter_ms,
        loss: args.loss_pct,
        dice: Dice(0x9e37_79b9_7f4a_7c15 ^ u64::from(args.queue)),
        last_release: Instant::now(),
    };
    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    loop {
        loop {
            match queue.recv() {
                Ok(msg) => match link.release_time(Instant::now()) {
                    Some(at) if held.len() < args.limit => held.push_back((at, msg)),
                    _ => answer(&mut queue, msg, Verdict::Drop)?,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receiving from the queue"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, msg)) = held.pop_front() {
                answer(&mut queue, msg, Verdict::Accept)?;
            }
        }
        let idle = held
            .front()
            .map_or(Duration::from_millis(1), |(at, _)| {
                at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(1));
        std::thread::sleep(idle);
    }
}
