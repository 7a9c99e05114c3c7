//! Block contents the native-runtime tests write and check: every block
//! names its LBA and the write that produced it.

/// A write's identity; every block it writes says which write and which LBA
/// it is. 0 stands for zeros (never written, write_zeroes or unmap).
pub type Tag = u64;

fn word(lba: u64, tag: Tag, i: usize) -> u64 {
    (tag ^ lba.rotate_left(29) ^ (i as u64).rotate_left(47))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(23)
        .wrapping_add(i as u64)
}

/// The content a write tagged `tag` gives block `lba`: the LBA and the tag,
/// then words derived from both, so a torn, shifted or misplaced block is
/// never mistaken for a good one.
pub fn fill(block: &mut [u8], lba: u64, tag: Tag) {
    if tag == 0 {
        block.fill(0);
        return;
    }
    for (i, w) in block.chunks_exact_mut(8).enumerate() {
        let v = match i {
            0 => lba,
            1 => tag,
            _ => word(lba, tag, i),
        };
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// What a block read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Tag(Tag),
    /// Neither zeros nor any write's content for this LBA: what its first
    /// two words claim (LBA, tag) and the first word that disagrees.
    Garbage {
        lba: u64,
        tag: Tag,
        bad_word: usize,
    },
}

pub fn decode(block: &[u8], lba: u64) -> Seen {
    let w = |i: usize| u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    if block.iter().all(|&b| b == 0) {
        return Seen::Tag(0);
    }
    let tag = w(1);
    let bad = (0..block.len() / 8).find(|&i| match i {
        0 => w(0) != lba,
        1 => tag == 0,
        _ => w(i) != word(lba, tag, i),
    });
    match bad {
        Some(bad_word) => Seen::Garbage { lba: w(0), tag, bad_word },
        None => Seen::Tag(tag),
    }
}

/// Tags carry their writer's thread in the top byte.
pub fn tag_of(thread: usize, n: u64) -> Tag {
    ((thread as u64 + 1) << 56) | n
}
