//! Merging several channels' histories into one order that keeps each channel's own.
//!
//! A channel is a log of its own: positions of different channels say nothing about each
//! other, so sorting the events of several channels by position can put a later event of one
//! channel before an earlier one. A resume (and a node's catch-up after a reconnect) instead
//! merges the lists k-way: an event is taken only when it is at the head of *every* list it is
//! in, so it comes once, at a point that is in order for each of its channels. When several
//! heads are ready, the one at the earliest position goes first (equal positions: the lower
//! list index), so the merge is deterministic and close to the order of publication.
//!
//! With an engine that writes a multi-channel event to all its channels at once (the
//! in-memory engine, a single Redis), two events are in the same order on every channel they
//! share, and some head is always ready. Only writes that are not atomic across channels
//! (Redis Cluster, channel by channel) can cross: `x` before `y` on one channel, `y` before
//! `x` on another. Then no head is ready, and the merge takes the head at the earliest
//! position anyway: that event comes ahead of the events before it on its other channels
//! (which it crossed, so they were being published at the same moment), and its other
//! occurrences are passed over silently when they reach their heads.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::cursor::Position;
use crate::event::{Copy, Published};

/// One channel's events in its order, each with its position on that channel.
pub(crate) type List = VecDeque<(Position, Arc<Published>)>;

/// An event taken from the head of one list.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The index of the list (the channel) it was taken from.
    pub list: usize,
    /// Its position on that channel.
    pub position: Position,
    pub event: Arc<Published>,
}

/// One step of a merge.
#[derive(Debug)]
pub(crate) struct Step {
    /// The event's first appearance: write it. Otherwise an occurrence of an event already
    /// written (a crossing was broken), to pass over: its channel moves on, nothing is written.
    pub first: bool,
    /// The occurrences taken together, in the order of their lists' heads.
    pub taken: SmallVec<[Taken; 2]>,
}

impl Step {
    /// The event with its copies from every list it was taken from: one object for the
    /// hub to deliver once to the subscribers of all those channels. (An engine that keeps
    /// one object per event, with all its copies, already has it.)
    pub(crate) fn joined(&self) -> Option<Arc<Published>> {
        let first = self.taken.first()?;
        if self.taken.iter().all(|t| Arc::ptr_eq(&t.event, &first.event)) {
            return Some(Arc::clone(&first.event));
        }
        let copies = self
            .taken
            .iter()
            .flat_map(|t| &t.event.copies)
            .map(|c| Copy::framed(c.channel.clone(), c.position, c.frame.clone()))
            .collect();
        let ev = &first.event;
        Some(Arc::new(Published::new(Arc::clone(&ev.id), Arc::clone(&ev.event_type), copies, ev.fanout)))
    }
}

#[derive(Default)]
struct Count {
    /// Lists the event is in.
    total: usize,
    /// Lists where it is the head now.
    at_head: usize,
}

/// Merges `lists` (each in its channel's order) into steps; see the module docs.
pub(crate) fn merge(mut lists: Vec<List>) -> Vec<Step> {
    if lists.iter().filter(|l| !l.is_empty()).count() <= 1 {
        // One channel with missed events (the usual resume): its order is the order.
        let one = lists.into_iter().enumerate().flat_map(|(list, l)| {
            l.into_iter().map(move |(position, event)| Step {
                first: true,
                taken: smallvec::smallvec![Taken { list, position, event }],
            })
        });
        return one.collect();
    }
    let mut counts: HashMap<Arc<str>, Count> = HashMap::new();
    let mut len = 0;
    for (_, ev) in lists.iter().flatten() {
        counts.entry(Arc::clone(&ev.id)).or_default().total += 1;
        len += 1;
    }
    let mut heads: BTreeSet<(Position, usize)> = BTreeSet::new();
    let expose = |lists: &[List], i: usize, heads: &mut BTreeSet<(Position, usize)>, counts: &mut HashMap<_, Count>| {
        if let Some((pos, ev)) = lists[i].front() {
            heads.insert((*pos, i));
            if let Some(c) = counts.get_mut(&ev.id) {
                c.at_head += 1;
            }
        }
    };
    for i in 0..lists.len() {
        expose(&lists, i, &mut heads, &mut counts);
    }
    let mut written: HashSet<Arc<str>> = HashSet::new();
    let mut steps = Vec::with_capacity(len);
    let id_at = |lists: &[List], i: usize| lists[i].front().map(|(_, ev)| Arc::clone(&ev.id));
    while let Some(&earliest) = heads.first() {
        let ready = heads.iter().copied().find(|&(_, i)| {
            id_at(&lists, i)
                .is_some_and(|id| written.contains(&id) || counts.get(&id).is_some_and(|c| c.at_head == c.total))
        });
        // No head ready: a crossing (see the module docs); the earliest head breaks it.
        let (_, i) = ready.unwrap_or(earliest);
        let Some(id) = id_at(&lists, i) else { break };
        let first = written.insert(Arc::clone(&id));
        let from: SmallVec<[usize; 2]> = if first {
            heads.iter().map(|&(_, j)| j).filter(|&j| id_at(&lists, j).as_ref() == Some(&id)).collect()
        } else {
            smallvec::smallvec![i]
        };
        let mut taken = SmallVec::new();
        for j in from {
            let Some((position, event)) = lists[j].pop_front() else { continue };
            heads.remove(&(position, j));
            if let Some(c) = counts.get_mut(&id) {
                c.at_head -= 1;
            }
            expose(&lists, j, &mut heads, &mut counts);
            taken.push(Taken { list: j, position, event });
        }
        steps.push(Step { first, taken });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;

    fn ch(i: usize) -> ChannelName {
        ChannelName::parse(&format!("channel:{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An event `id` at `(channel index, ms)` on each of its channels.
    fn event(id: &str, at: &[(usize, u64)]) -> Arc<Published> {
        let copies = at.iter().map(|&(c, ms)| Copy::new(ch(c), Position::new(ms, 0), "t", b"{}")).collect();
        Arc::new(Published::new(Arc::from(id), Arc::from("t"), copies, at.len() as u16))
    }

    /// The lists of `channels` channels holding `events`, each in position order.
    fn lists(channels: usize, events: &[Arc<Published>]) -> Vec<List> {
        let mut lists = vec![List::new(); channels];
        for ev in events {
            for copy in &ev.copies {
                let i = (0..channels).find(|&i| ch(i) == copy.channel).unwrap_or_else(|| panic!("channel"));
                lists[i].push_back((copy.position, Arc::clone(ev)));
            }
        }
        for list in &mut lists {
            list.make_contiguous().sort_by_key(|(p, _)| *p);
        }
        lists
    }

    fn written(steps: &[Step]) -> Vec<&str> {
        steps.iter().filter(|s| s.first).map(|s| &*s.taken[0].event.id).collect()
    }

    #[test]
    fn each_channel_keeps_its_order_though_positions_of_different_channels_interleave() {
        // Channel 0's log is far ahead in time of channel 1's: sorting all by position would
        // write `x` (at 10 on channel 1) before `a1` (at 101 on channel 0, before `x` there).
        let events = [
            event("a1", &[(0, 101)]),
            event("x", &[(0, 102), (1, 10)]),
            event("b1", &[(1, 11)]),
            event("a2", &[(0, 103)]),
        ];
        let steps = merge(lists(2, &events));
        assert_eq!(written(&steps), ["a1", "x", "b1", "a2"]);
        let x = &steps[1];
        assert_eq!(x.taken.len(), 2, "`x` is taken from both channels at once");
        assert!(steps.iter().all(|s| s.first), "nothing is passed over when the writes were atomic");
    }

    #[test]
    fn one_list_is_taken_as_it_is() {
        let events = [event("a", &[(1, 5)]), event("b", &[(1, 9)])];
        let steps = merge(lists(2, &events));
        assert_eq!(written(&steps), ["a", "b"]);
        assert!(steps.iter().all(|s| s.taken.len() == 1 && s.taken[0].list == 1));
    }

    #[test]
    fn ready_heads_go_in_position_order_then_list_order() {
        let events = [event("b", &[(1, 5)]), event("a", &[(0, 5)]), event("c", &[(0, 3)]), event("d", &[(1, 9)])];
        assert_eq!(written(&merge(lists(2, &events))), ["c", "a", "b", "d"]);
    }

    #[test]
    fn an_event_on_three_channels_waits_for_the_events_before_it_on_each() {
        let events = [
            event("a", &[(0, 1)]),
            event("b", &[(1, 50)]),
            event("c1", &[(2, 7)]),
            event("c2", &[(2, 8)]),
            event("all", &[(0, 2), (1, 51), (2, 9)]),
            event("after", &[(1, 52)]),
        ];
        let steps = merge(lists(3, &events));
        let order = written(&steps);
        let at = |id: &str| order.iter().position(|x| *x == id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(order.len(), events.len());
        for before in ["a", "b", "c1", "c2"] {
            assert!(at(before) < at("all"), "{before} before `all`: {order:?}");
        }
        assert!(at("all") < at("after"));
    }

    #[test]
    fn crossed_writes_are_broken_at_the_earliest_head_and_every_event_comes_once() {
        // `x` before `y` on channel 0, `y` before `x` on channel 1: no order keeps both.
        let events = [event("x", &[(0, 10), (1, 21)]), event("y", &[(0, 11), (1, 20)]), event("z", &[(1, 22)])];
        let steps = merge(lists(2, &events));
        assert_eq!(written(&steps), ["x", "y", "z"], "the earliest head (x at 10) goes first");
        // `x`'s copy on channel 1 is passed over after `y`, so channel 1 moves on in order.
        let passed: Vec<(usize, Position)> =
            steps.iter().filter(|s| !s.first).flat_map(|s| s.taken.iter().map(|t| (t.list, t.position))).collect();
        assert_eq!(passed, [(1, Position::new(21, 0))]);
        // Every occurrence is taken exactly once, each list in its order.
        for list in 0..2 {
            let positions: Vec<Position> =
                steps.iter().flat_map(|s| s.taken.iter()).filter(|t| t.list == list).map(|t| t.position).collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "list {list}: {positions:?}");
        }
    }

    #[test]
    fn the_same_event_read_from_two_channels_as_two_copies_is_one_event() {
        // Redis returns one object per Stream entry: same id, one copy each.
        let (on0, on1) = (event("x", &[(0, 4)]), event("x", &[(1, 9)]));
        let mut l = vec![List::new(), List::new()];
        l[0].push_back((Position::new(4, 0), on0));
        l[1].push_back((Position::new(9, 0), on1));
        let steps = merge(l);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].taken.iter().map(|t| t.list).collect::<Vec<_>>(), [0, 1]);
    }
}
