//! The bounded buffer between the engine task and the publisher: pushing never blocks and
//! never waits for Redis. When it is full the oldest event goes first; bans are only dropped
//! when nothing but bans is left (they are few, and what other nodes most need).
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Which stream a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Events,
    Bans,
}

/// One encoded message waiting for Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub stream: StreamKind,
    /// The JSON of a [`super::wire::Message`].
    pub payload: String,
    /// What it does to the active-bans hash.
    pub active: Option<Active>,
}

/// A change of the active-bans hash (field: the prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Active {
    /// A ban: the field is set to the message.
    Set(String),
    /// An unban: the field goes.
    Remove(String),
}

#[derive(Debug, Default)]
struct Queues {
    bans: VecDeque<Outgoing>,
    events: VecDeque<Outgoing>,
    dropped: u64,
}

impl Queues {
    fn len(&self) -> usize {
        self.bans.len() + self.events.len()
    }

    /// Makes room for one more.
    fn make_room(&mut self, capacity: usize) {
        while self.len() >= capacity {
            if self.events.pop_front().is_none() && self.bans.pop_front().is_none() {
                break;
            }
            self.dropped += 1;
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    queues: Mutex<Queues>,
    ready: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            capacity: capacity.max(1),
            queues: Mutex::new(Queues::default()),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic elsewhere while holding it leaves plain queues behind: still usable.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message (dropping the oldest when full) and wakes the publisher.
    pub fn push(&self, message: Outgoing) {
        {
            let mut q = self.lock();
            q.make_room(self.capacity);
            match message.stream {
                StreamKind::Bans => q.bans.push_back(message),
                StreamKind::Events => q.events.push_back(message),
            }
        }
        self.ready.notify_one();
    }

    /// Takes up to `max` messages, bans first, oldest first.
    pub fn take(&self, max: usize) -> Vec<Outgoing> {
        let mut q = self.lock();
        let mut out = Vec::with_capacity(max.min(q.len()));
        while out.len() < max {
            match q.bans.pop_front().or_else(|| q.events.pop_front()) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Puts back, in front and in their order, messages Redis did not take, as far as there
    /// is room: what came meanwhile is newer and is kept over them.
    pub fn put_back(&self, batch: Vec<Outgoing>) {
        let mut q = self.lock();
        for m in batch.into_iter().rev() {
            if q.len() >= self.capacity {
                q.dropped += 1;
                continue;
            }
            match m.stream {
                StreamKind::Bans => q.bans.push_front(m),
                StreamKind::Events => q.events.push_front(m),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped because the buffer was full, since start.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Resolves when something was pushed since the last call.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(stream: StreamKind, n: u32) -> Outgoing {
        Outgoing {
            stream,
            payload: n.to_string(),
            active: None,
        }
    }

    fn payloads(v: &[Outgoing]) -> Vec<&str> {
        v.iter().map(|m| m.payload.as_str()).collect()
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_events_and_keeps_bans() {
        let out = Outbox::new(3);
        out.push(msg(StreamKind::Bans, 1));
        for n in 2..=6 {
            out.push(msg(StreamKind::Events, n));
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out.dropped(), 3);
        assert_eq!(payloads(&out.take(10)), ["1", "5", "6"]);
        // Only bans left: the oldest ban goes.
        for n in 7..=10 {
            out.push(msg(StreamKind::Bans, n));
        }
        assert_eq!(payloads(&out.take(10)), ["8", "9", "10"]);
        assert!(out.is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_in_order() {
        let out = Outbox::new(4);
        for n in 1..=3 {
            out.push(msg(StreamKind::Events, n));
        }
        let batch = out.take(2);
        out.push(msg(StreamKind::Events, 4));
        out.push(msg(StreamKind::Events, 5));
        // Room for one of the two: the newer messages stay, the oldest is dropped.
        out.put_back(batch);
        assert_eq!(payloads(&out.take(10)), ["2", "3", "4", "5"]);
        assert_eq!(out.dropped(), 1);
    }
}
