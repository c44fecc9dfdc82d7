//! The discrete-event engine: events ordered by (virtual time, sequence number) and one seeded
//! ChaCha generator from which everything random is drawn. Nothing here reads a clock or
//! spawns a thread, so the same seed always replays the same run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use chacha20::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// A queued event; `at` in nanoseconds of virtual time (u64: 584 years), so ordering compares
/// two integers.
struct Scheduled<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    /// Reversed: the heap pops the earliest event, and of two at the same time the one
    /// scheduled first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Virtual time, the event queue and the random source.
pub struct Engine<E> {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled<E>>,
    rng: ChaCha8Rng,
    /// Events handled so far.
    pub handled: u64,
}

impl<E> std::fmt::Debug for Engine<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("now", &self.now)
            .field("queued", &self.queue.len())
            .field("handled", &self.handled)
            .finish_non_exhaustive()
    }
}

impl<E> Engine<E> {
    pub fn new(seed: u64) -> Self {
        Engine {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            handled: 0,
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Schedules `event` after `delay`.
    pub fn after(&mut self, delay: Duration, event: E) {
        self.seq += 1;
        let at = self.now + delay;
        self.queue.push(Scheduled {
            at: u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
            seq: self.seq,
            event,
        });
    }

    /// The next event, advancing virtual time to it; `None` when the queue is empty or the
    /// next event is past `until`.
    pub fn next(&mut self, until: Duration) -> Option<E> {
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        if self.queue.peek().is_none_or(|s| s.at > until) {
            return None;
        }
        let s = self.queue.pop()?;
        self.now = Duration::from_nanos(s.at);
        self.handled += 1;
        Some(s.event)
    }

    /// A uniform integer in `lo..=hi`.
    pub fn uniform(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.rng.next_u64() % (hi - lo + 1)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// The gap to the next arrival of a Poisson process with `per_s` arrivals per second.
    pub fn exponential(&mut self, per_s: f64) -> Duration {
        let u = 1.0 - self.unit(); // in (0, 1]
        Duration::from_secs_f64((-u.ln() / per_s.max(1e-9)).min(86_400.0))
    }

    /// 32 random bytes (node keys).
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_order_and_ties_in_scheduling_order() {
        let mut e = Engine::new(1);
        e.after(Duration::from_millis(5), "c");
        e.after(Duration::from_millis(1), "a");
        e.after(Duration::from_millis(5), "d");
        e.after(Duration::from_millis(1), "b");
        let mut out = Vec::new();
        while let Some(x) = e.next(Duration::from_secs(1)) {
            out.push((x, e.now().as_millis()));
        }
        assert_eq!(out, [("a", 1), ("b", 1), ("c", 5), ("d", 5)]);
        // Nothing past the horizon.
        e.after(Duration::from_secs(2), "late");
        assert!(e.next(Duration::from_secs(1)).is_none());
    }

    #[test]
    fn the_same_seed_draws_the_same_numbers() {
        let draw = |seed| {
            let mut e: Engine<()> = Engine::new(seed);
            (0..8).map(|_| e.uniform(0, 1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
