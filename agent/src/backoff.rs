//! The one retry delay of the agent: doubling from a first wait up to a cap,
//! with optional jitter so a fleet does not retry in step. Used by enrolment,
//! the controller session and the restart of crashed processes.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Waits `first`, then twice as long each time, never more than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            jitter: false,
        }
    }

    /// Adds up to a quarter of each wait at random.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The wait before the next attempt; the one after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            let quarter = wait.as_millis() as u64 / 4;
            wait + Duration::from_millis(fastrand::u64(0..=quarter))
        } else {
            wait
        }
    }

    /// The wait `next_wait` would give, before jitter.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first wait (the thing retried worked).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let mut b = Backoff::new(Duration::from_millis(400), Duration::from_secs(1)).jittered();
        for expected in [400, 800, 1000, 1000] {
            let w = b.next_wait().as_millis() as u64;
            assert!((expected..=expected + expected / 4).contains(&w), "{w}");
        }
    }
}
