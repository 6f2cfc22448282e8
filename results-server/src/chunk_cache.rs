//! Decoded chunks kept in memory. A chunk is written once and never changes (agents put them create-only), so
//! the lines decoded for one page serve the next pages, other readers and live tails without reading,
//! checksumming and gunzipping the object again. Bounded by the bytes of the lines it holds; the least recently
//! used chunk goes first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A chunk's lines.
pub type Lines = Arc<Vec<String>>;

pub struct ChunkCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    used: usize,
    tick: u64,
    entries: HashMap<String, Entry>,
}

struct Entry {
    last_used: u64,
    size: usize,
    lines: Lines,
}

/// What a chunk's lines take in memory, roughly: their bytes and a `String` each.
fn size_of(lines: &[String]) -> usize {
    lines
        .iter()
        .map(|l| l.len() + size_of_val(l))
        .sum::<usize>()
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of lines (0: keeps nothing).
    pub fn new(capacity: usize) -> ChunkCache {
        ChunkCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Lines> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let e = inner.entries.get_mut(key)?;
        e.last_used = tick;
        Some(e.lines.clone())
    }

    /// Keeps `lines` under `key`, dropping the least recently used chunks to make room.
    pub fn put(&self, key: String, lines: Lines) {
        let size = size_of(&lines);
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some(old) = inner.entries.remove(&key) {
            inner.used -= old.size;
        }
        while inner.used + size > self.capacity {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.used -= e.size;
            }
        }
        inner.used += size;
        inner.entries.insert(
            key,
            Entry {
                last_used: tick,
                size,
                lines,
            },
        );
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Lines {
        Arc::new((0..n).map(|i| format!("{i:08}")).collect())
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first_and_the_bound_holds() {
        let one = size_of(&lines(10));
        let cache = ChunkCache::new(2 * one);
        cache.put("a".into(), lines(10));
        cache.put("b".into(), lines(10));
        assert!(cache.get("a").is_some()); // b is now the older
        cache.put("c".into(), lines(10));
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("a").unwrap().len(), 10);
        assert!(cache.get("c").is_some());
        assert_eq!(cache.used(), 2 * one);
        // Too big to keep at all: kept out, nothing else dropped for it.
        cache.put("huge".into(), lines(100));
        assert!(cache.get("huge").is_none());
        assert_eq!(cache.used(), 2 * one);
        // The same key again replaces, not adds.
        cache.put("a".into(), lines(10));
        assert_eq!(cache.used(), 2 * one);
        assert!(ChunkCache::new(0).get("a").is_none());
    }
}
