//! A small bounded cache that keeps the values of the last few keys put in it (oldest out
//! first): the marks a watermark sized per image size, the pipelines an image child prepared,
//! the logos a worker fetched. A handful of entries, so a list beats a map.

/// At most `capacity` entries; putting one more drops the oldest.
#[derive(Debug)]
pub struct Recent<K, V> {
    capacity: usize,
    entries: Vec<(K, V)>,
}

impl<K: PartialEq, V: Clone> Recent<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Vec::new(),
        }
    }

    /// The value kept for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `value` for `key`, dropping the oldest entry when full.
    pub fn put(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_goes_first() {
        let mut recent = Recent::new(2);
        recent.put("a", 1);
        recent.put("b", 2);
        assert_eq!((recent.get(&"a"), recent.get(&"b")), (Some(1), Some(2)));
        recent.put("c", 3);
        assert_eq!(recent.get(&"a"), None);
        assert_eq!((recent.get(&"b"), recent.get(&"c")), (Some(2), Some(3)));
    }
}
