//! The time of a connection's turn: each clock read at most once per poll of a connection's
//! task.
//!
//! Reading a clock costs 40 to 70 ns on the virtual machines Herald is measured on (the TSC
//! read through the vDSO, more than the rest of an event id), and one publish asked seven
//! times: its request id, its event's timestamp, its answer's `date`, the rate limiter, the
//! engine's acceptance time and two deadlines. As nginx reads the time once per turn of its
//! event loop, a connection's task here polls its work inside [`in_turns`], and whatever asks
//! for the time during one poll gets that poll's reading of each clock, read when first
//! asked. A poll does not block, so a reading is at most that poll's own work old, and a
//! later poll reads again.
//!
//! What must measure a span of time within one poll, or asks again and again whether a time
//! has passed (a loop round a timer), keeps `Instant::now()`: [`wall`] and [`mono`] are for
//! "now" as a timestamp or a deadline's start. Outside a turn (an
//! application's own task, a test) they read the clock each time.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::time::{Instant, SystemTime};

/// The readings of the current turn, if a turn is on.
#[derive(Clone, Copy)]
struct Readings {
    on: bool,
    wall: Option<SystemTime>,
    mono: Option<Instant>,
}

const OFF: Readings = Readings { on: false, wall: None, mono: None };

thread_local! {
    static TURN: Cell<Readings> = const { Cell::new(OFF) };
}

/// The wall clock: this turn's reading, or a fresh one outside a turn.
pub(crate) fn wall() -> SystemTime {
    reading(|r| &mut r.wall, SystemTime::now)
}

/// The monotonic clock: this turn's reading, or a fresh one outside a turn.
pub(crate) fn mono() -> Instant {
    reading(|r| &mut r.mono, Instant::now)
}

/// The turn's reading of one clock (`slot` of the readings), read by `now` when first asked;
/// outside a turn, `now` each time.
fn reading<T: Copy>(slot: fn(&mut Readings) -> &mut Option<T>, now: fn() -> T) -> T {
    TURN.with(|turn| {
        let mut r = turn.get();
        if let Some(at) = *slot(&mut r) {
            return at;
        }
        let at = now();
        if r.on {
            *slot(&mut r) = Some(at);
            turn.set(r);
        }
        at
    })
}

/// A turn on this thread until dropped; a turn inside another is part of it.
struct Turn {
    outermost: bool,
}

impl Turn {
    fn enter() -> Self {
        TURN.with(|turn| {
            if turn.get().on {
                Turn { outermost: false }
            } else {
                turn.set(Readings { on: true, ..OFF });
                Turn { outermost: true }
            }
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.outermost {
            TURN.with(|turn| turn.set(OFF));
        }
    }
}

/// Runs `work` with each of its polls one turn: what reads [`wall`] or [`mono`] while it is
/// polled shares one reading of each clock.
pub(crate) async fn in_turns<F: Future>(work: F) -> F::Output {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        let _turn = Turn::enter();
        work.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outside_a_turn_every_call_reads_the_clock() {
        let a = mono();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono() > a);
        let w = wall();
        std::thread::sleep(Duration::from_millis(2));
        assert!(wall() > w);
    }

    #[tokio::test]
    async fn one_poll_shares_a_reading_and_the_next_poll_reads_again() {
        let (first, second) = in_turns(async {
            let wall_a = wall();
            let mono_a = mono();
            std::thread::sleep(Duration::from_millis(2));
            // Same poll: the same readings, however long the poll's work took.
            assert_eq!(wall(), wall_a);
            assert_eq!(mono(), mono_a);
            // A nested turn is part of the outer one.
            let nested = in_turns(async { mono() }).await;
            assert_eq!(nested, mono_a);
            tokio::task::yield_now().await;
            // A later poll: fresh readings.
            (mono_a, mono())
        })
        .await;
        assert!(second > first);
        // The turn is over: the clock is read again.
        let after = mono();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono() > after);
    }

    #[tokio::test]
    async fn a_turn_reads_a_clock_only_when_asked() {
        in_turns(async {
            TURN.with(|turn| {
                let r = turn.get();
                assert!(r.on && r.wall.is_none() && r.mono.is_none());
            });
            let _ = mono();
            TURN.with(|turn| assert!(turn.get().wall.is_none()));
        })
        .await;
        TURN.with(|turn| assert!(!turn.get().on));
    }
}
