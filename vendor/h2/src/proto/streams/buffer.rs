use slab::Slab;
use std::time::{Duration, Instant};

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
    /// The most frames held since the slab was last empty.
    peak: usize,
    /// The `peak` of the fill before the slab was last freed: the next frame reserves that much
    /// at once, so a connection that fills and drains the buffer in every round (an event sent
    /// to many streams) allocates once a round, not once a doubling.
    regrow: usize,
    /// When the current `BUSY_STEP` began (a large slab emptied a step or more after the last
    /// one began), and in how many steps in a row the slab has emptied.
    last_step: Option<Instant>,
    steps: u32,
}

/// Slots a buffer keeps when it empties; a larger slab is freed, unless the buffer is busy.
/// (A patch of Herald's, see `vendor/README.md`: an idle connection kept the slab of its busiest
/// moment for as long as it lived, for a burst of 100 streams about 30 KiB of received heads and
/// 40 KiB of queued frames.)
const KEEP_WHEN_EMPTY: usize = 16;

/// A buffer whose large slab has emptied in `BUSY_STEPS` steps of `BUSY_STEP` in a row (with no
/// step missed) is busy, and keeps its slab: it would only allocate it again (freeing and
/// reallocating a large slab on every event cost a connection that sends 50 events a second to
/// 100 streams a tenth to a fifth more CPU). A client opening 100 streams at once empties the
/// send buffer up to about 30 times within a few tens of milliseconds, as heads and first
/// chunks go out in waves, and 15,000 streams open within half a second: fewer steps than a
/// busy buffer's second.
const BUSY_STEPS: u32 = 10;
const BUSY_STEP: Duration = Duration::from_millis(100);

/// A sequence of frames in a `Buffer`
#[derive(Debug)]
pub struct Deque {
    indices: Option<Indices>,
}

/// Tracks the head & tail for a sequence of frames in a `Buffer`.
#[derive(Debug, Default, Copy, Clone)]
struct Indices {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    next: Option<usize>,
}

impl<T> Buffer<T> {
    pub fn new() -> Self {
        Buffer {
            slab: Slab::new(),
            peak: 0,
            regrow: 0,
            last_step: None,
            steps: 0,
        }
    }

    fn insert(&mut self, slot: Slot<T>) -> usize {
        if self.slab.capacity() == 0 && self.regrow > 0 {
            self.slab.reserve(self.regrow);
        }
        let key = self.slab.insert(slot);
        self.peak = self.peak.max(self.slab.len());
        key
    }

    fn remove(&mut self, key: usize) -> Slot<T> {
        let slot = self.slab.remove(key);
        if self.slab.is_empty() {
            if self.slab.capacity() > KEEP_WHEN_EMPTY && !self.busy() {
                // No deque holds a key when the slab is empty, so a new slab is safe.
                self.regrow = self.peak;
                self.slab = Slab::new();
            }
            self.peak = 0;
        }
        slot
    }

    /// Counts an emptying of a large slab; true once it has emptied in `BUSY_STEPS` steps in a
    /// row.
    fn busy(&mut self) -> bool {
        let now = Instant::now();
        let since = self
            .last_step
            .map(|last| now.saturating_duration_since(last));
        match since {
            Some(since) if since < BUSY_STEP => {}
            Some(since) if since < 2 * BUSY_STEP => {
                self.steps = self.steps.saturating_add(1);
                self.last_step = Some(now);
            }
            _ => {
                self.steps = 1;
                self.last_step = Some(now);
            }
        }
        self.steps >= BUSY_STEPS
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

impl Deque {
    pub fn new() -> Self {
        Deque { indices: None }
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_none()
    }

    pub fn push_back<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[idxs.tail].next = Some(key);
                idxs.tail = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn push_front<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[key].next = Some(idxs.head);
                idxs.head = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn pop_front<T>(&mut self, buf: &mut Buffer<T>) -> Option<T> {
        match self.indices {
            Some(mut idxs) => {
                let mut slot = buf.remove(idxs.head);

                if idxs.head == idxs.tail {
                    assert!(slot.next.is_none());
                    self.indices = None;
                } else {
                    idxs.head = slot.next.take().unwrap();
                    self.indices = Some(idxs);
                }

                Some(slot.value)
            }
            None => None,
        }
    }
}
