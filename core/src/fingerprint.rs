//! The fingerprint of a command: SHA-256 over its canonical text.
//!
//! The text streams from the canonical writer into the hasher through a small buffer, so
//! fingerprinting a large command never materialises its text, and the many tiny writes
//! (a quote, a comma) cost a copy instead of a hasher call each.

use sha2::{Digest, Sha256};

use crate::canonical::{write_canonical, Sink};
use crate::jsonb::FormatError;

/// Small enough that making a sink costs little (its buffer is zeroed each time: at 4 KiB
/// that was 4,000 instructions, as much as hashing a short command), large enough that a
/// hasher call covers several of SHA-256's 64-byte blocks.
const BUFFER: usize = 256;

/// A [`Sink`] that hashes what it is given.
pub struct Sha256Sink {
    hasher: Sha256,
    buf: [u8; BUFFER],
    len: usize,
}

impl Sha256Sink {
    pub fn new() -> Self {
        Sha256Sink {
            hasher: Sha256::new(),
            buf: [0; BUFFER],
            len: 0,
        }
    }

    /// The digest of everything written. Takes `&mut self` so the sink, buffer and all, is
    /// never copied.
    pub fn finish(&mut self) -> [u8; 32] {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
        self.hasher.finalize_reset().into()
    }
}

impl Default for Sha256Sink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for Sha256Sink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
        if bytes.len() >= BUFFER {
            self.hasher.update(bytes);
        } else {
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }

    #[inline]
    fn write_byte(&mut self, byte: u8) {
        if self.len == BUFFER {
            self.hasher.update(self.buf);
            self.len = 0;
        }
        self.buf[self.len] = byte;
        self.len += 1;
    }
}

/// SHA-256 of the canonical text of a jsonb datum (given without its varlena header).
pub fn fingerprint(jsonb: &[u8]) -> Result<[u8; 32], FormatError> {
    let mut sink = Sha256Sink::new();
    write_canonical(jsonb, &mut sink)?;
    Ok(sink.finish())
}

/// SHA-256 of canonical text that is already at hand; equals [`fingerprint`] of the jsonb
/// it came from.
pub fn fingerprint_of_text(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the sizes of the writes (single bytes, pieces across the buffer's end,
        /// pieces longer than the buffer), the sink hashes exactly the bytes given, in order.
        #[test]
        fn sink_hashes_what_it_is_given(
            pieces in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..3 * BUFFER), any::<bool>()), 0..12),
        ) {
            let mut sink = Sha256Sink::new();
            let mut all = Vec::new();
            for (piece, bytewise) in &pieces {
                if *bytewise {
                    piece.iter().for_each(|b| sink.write_byte(*b));
                } else {
                    sink.write(piece);
                }
                all.extend_from_slice(piece);
            }
            prop_assert_eq!(sink.finish(), fingerprint_of_text(&all));
        }
    }
}
