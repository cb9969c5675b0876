//! The registry of open flights: join-or-lead on a sharded map.
//!
//! Joining happens under the map shard's lock, so two identical requests that
//! arrive in the same instant make exactly one leader. A flight that takes no
//! more joiners (ended, too large, full, cancelled) is replaced by a new one
//! under the same key; removal only ever removes the flight it was asked to
//! remove, never a successor.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::flight::{Flight, Settings, Subscriber};
use super::key::Key;

/// How a request became part of a flight.
pub enum Joined {
    /// It started a new flight: the caller must start its pump.
    Leader(Arc<Flight>, Subscriber),
    /// It subscribed to a flight already open.
    Follower(Subscriber),
}

/// Open (and lingering) flights by key. Cheap to clone; clones share the map.
#[derive(Clone, Default)]
pub struct Registry {
    flights: Arc<DashMap<Key, Arc<Flight>, BuildHasherDefault<KeyHasher>>>,
}

/// Keys are blake3 hashes already: the map uses the 64 bits a key writes
/// as its hash instead of hashing them again.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; anything else still hashes.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Registry {
    /// Joins the open flight for `key`, or leads a new one.
    pub fn join_or_lead(&self, key: Key, settings: &Arc<Settings>) -> Joined {
        // No guard of the map lives past this function, let alone an await.
        match self.flights.entry(key) {
            Entry::Occupied(mut open) => match open.get().join() {
                // The flight is open: follow it.
                Some(subscriber) => Joined::Follower(subscriber),
                // It takes no more joiners: a new flight takes its place.
                None => {
                    let (flight, leader) = Flight::lead(key, Arc::clone(settings));
                    open.insert(Arc::clone(&flight));
                    Joined::Leader(flight, leader)
                }
            },
            Entry::Vacant(vacant) => {
                let (flight, leader) = Flight::lead(key, Arc::clone(settings));
                vacant.insert(Arc::clone(&flight));
                Joined::Leader(flight, leader)
            }
        }
    }

    /// Removes `flight` if it is still the one registered for its key.
    pub fn remove(&self, flight: &Arc<Flight>) {
        self.flights.remove_if(&flight.key(), |_, registered| {
            Arc::ptr_eq(registered, flight)
        });
    }

    /// Flights registered now, lingering ones included.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// Whether no flight is registered.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}
