//! The shard's spare read buffers: a reader whose reads fill its buffer takes a larger
//! one from here, and gives its grown buffer back here when a read leaves it part empty
//! (the burst is over), so that a busy stream's bursts allocate nothing while an idle
//! stream still holds only the smallest buffer ([`READ_BUF`]) in its in-flight read.
//!
//! Buffers are kept by size class (`READ_BUF << k`, up to [`READ_BUF_MAX`]), at most
//! [`PER_CLASS`] each: at most 4 × (1 + 2 + … + 64) KiB = 508 KiB per shard thread.

use std::cell::RefCell;

use super::conn::{READ_BUF, READ_BUF_MAX};

/// Buffers kept per size class.
const PER_CLASS: usize = 4;

/// Size classes: `READ_BUF << k` for `k` in `0..CLASSES`.
const CLASSES: usize = (READ_BUF_MAX / READ_BUF).trailing_zeros() as usize + 1;

thread_local! {
    /// This shard thread's spare buffers, by class.
    static SPARE: RefCell<[Vec<Vec<u8>>; CLASSES]> = RefCell::new(Default::default());
}

/// The class of a buffer of `capacity` bytes, if it is one of the classes.
fn class_of(capacity: usize) -> Option<usize> {
    let ratio = capacity / READ_BUF;
    (capacity % READ_BUF == 0 && ratio.is_power_of_two())
        .then(|| ratio.trailing_zeros() as usize)
        .filter(|k| *k < CLASSES)
}

/// An empty buffer of `capacity` bytes (a power of two times [`READ_BUF`], at most
/// [`READ_BUF_MAX`]; other sizes are allocated): a spare one when there is one.
pub(super) fn take(capacity: usize) -> Vec<u8> {
    class_of(capacity)
        .and_then(|k| SPARE.with(|s| s.borrow_mut()[k].pop()))
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps `buf` (emptied) for [`take`], or drops it when its class is full or it is of
/// no class.
pub(super) fn give(mut buf: Vec<u8>) {
    let Some(k) = class_of(buf.capacity()) else {
        return;
    };
    buf.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s[k].len() < PER_CLASS {
            s[k].push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_the_reader_sizes() {
        assert_eq!(CLASSES, 7);
        assert_eq!(class_of(READ_BUF), Some(0));
        assert_eq!(class_of(READ_BUF_MAX), Some(6));
        assert_eq!(class_of(3 * READ_BUF), None);
        assert_eq!(class_of(2 * READ_BUF_MAX), None);
        assert_eq!(class_of(0), None);
    }

    #[test]
    fn a_given_buffer_is_taken_again_up_to_the_bound() {
        let b = take(4 * READ_BUF);
        let p = b.as_ptr();
        give(b);
        let again = take(4 * READ_BUF);
        assert_eq!(again.as_ptr(), p);
        assert!(again.is_empty() && again.capacity() == 4 * READ_BUF);
        for _ in 0..PER_CLASS + 2 {
            give(Vec::with_capacity(2 * READ_BUF));
        }
        assert_eq!(SPARE.with(|s| s.borrow()[1].len()), PER_CLASS);
    }
}
