//! Settings that may change while running (hot reload): one current value, swapped whole, with a
//! generation number so that hot paths keep a cached copy and look again only when it changed.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current value of a reloadable group of settings.
#[derive(Debug)]
pub struct Live<T> {
    value: ArcSwap<T>,
    /// Bumped after every store; readers compare it with their copy's.
    generation: AtomicU64,
}

/// A reader's copy of a [`Live`] value: reading it costs nothing; `refresh` costs one atomic load
/// unless the value changed.
#[derive(Debug)]
pub struct Cached<T> {
    value: Arc<T>,
    generation: u64,
}

impl<T> Live<T> {
    /// A live value starting at `value`.
    pub fn new(value: T) -> Self {
        Live {
            value: ArcSwap::from_pointee(value),
            generation: AtomicU64::new(0),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Replaces the value; readers see it at their next `refresh`.
    pub fn store(&self, value: T) {
        self.value.store(Arc::new(value));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A cached copy for a reader.
    pub fn cached(&self) -> Cached<T> {
        let generation = self.generation.load(Ordering::Acquire);
        Cached {
            value: self.load(),
            generation,
        }
    }
}

impl<T> Cached<T> {
    /// Takes the live value if it changed since this copy was made.
    pub fn refresh(&mut self, live: &Live<T>) {
        let generation = live.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.value = live.load();
            self.generation = generation;
        }
    }
}

impl<T> Deref for Cached<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_copies_follow_stores_on_refresh() {
        let live = Live::new(1);
        let mut copy = live.cached();
        assert_eq!(*copy, 1);
        live.store(2);
        assert_eq!(*copy, 1, "a copy changes only on refresh");
        copy.refresh(&live);
        assert_eq!(*copy, 2);
        copy.refresh(&live);
        assert_eq!(*copy, 2);
    }
}
