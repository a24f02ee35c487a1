//! Byte deltas between two JSON texts: how history stores a superseded version as the few bytes
//! that turn its successor's text back into its own.
//!
//! Invariant: `apply(&encode(target, base), base)` returns `target` byte for byte, for any two
//! byte strings; `apply` never returns anything else: a delta that does not fit its base (wrong
//! length, out-of-range copy, truncated, or a result whose checksum differs from the one recorded
//! at encoding) is an error, never a guess. Encoding is linear in the two lengths.
//!
//! Format (version 1), all integers LEB128 varints:
//! `FORMAT_VERSION`, target length, base length, target checksum (8 bytes, little-endian), then
//! operations until the end: `(len << 1) | 0` followed by an offset copies `len` bytes of the
//! base from `offset`; `(len << 1) | 1` followed by `len` bytes inserts them.
//!
//! Why bytes and not a JSON patch: both texts are already serialized when a version is
//! superseded (the writer holds the stored text and the new one), so a byte delta needs no JSON
//! parse, costs a few microseconds for an 8 KiB profile, and restores the stored text exactly, not
//! just an equal value.

use std::collections::HashMap;

/// The first byte of every delta.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of the base hashed as one block. A common run of at least `2 * BLOCK_BYTES - 1` bytes
/// between the texts is always found; shorter ones may be sent as literals.
pub const BLOCK_BYTES: usize = 16;

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta is truncated or malformed ({0})")]
    Malformed(&'static str),
    #[error("the delta has format {0}, this hoard knows format {FORMAT_VERSION}")]
    UnknownFormat(u8),
    #[error("the delta applies to a base of {expected} bytes, not {found}")]
    WrongBase { expected: u64, found: u64 },
    #[error("the delta rebuilt a text whose checksum differs from the one it was made for")]
    ChecksumMismatch,
}

/// A 64-bit checksum of `bytes`, eight bytes at a time (integrity, not security: it tells a
/// wrong rebuild from the right one).
pub fn checksum(bytes: &[u8]) -> u64 {
    const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = 0xCBF2_9CE4_8422_2325u64 ^ (bytes.len() as u64).wrapping_mul(MULTIPLIER);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(MULTIPLIER).rotate_left(29);
    }
    for (index, byte) in chunks.remainder().iter().enumerate() {
        hash = (hash ^ (u64::from(*byte) << (8 * index))).wrapping_mul(MULTIPLIER).rotate_left(29);
    }
    hash ^ (hash >> 32)
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &[u8], position: &mut usize) -> Result<u64, DeltaError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *input.get(*position).ok_or(DeltaError::Malformed("varint runs past the end"))?;
        *position += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DeltaError::Malformed("varint longer than 64 bits"))
}

/// Collects operations, merging a copy that continues the previous one.
struct Ops {
    out: Vec<u8>,
    /// The copy not yet written: (offset, len).
    pending_copy: Option<(usize, usize)>,
}

impl Ops {
    fn copy(&mut self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        match &mut self.pending_copy {
            Some((pending_offset, pending_len)) if *pending_offset + *pending_len == offset => *pending_len += len,
            _ => {
                self.flush_copy();
                self.pending_copy = Some((offset, len));
            }
        }
    }

    fn insert(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.flush_copy();
        push_varint(&mut self.out, ((bytes.len() as u64) << 1) | 1);
        self.out.extend_from_slice(bytes);
    }

    fn flush_copy(&mut self) {
        if let Some((offset, len)) = self.pending_copy.take() {
            push_varint(&mut self.out, (len as u64) << 1);
            push_varint(&mut self.out, offset as u64);
        }
    }
}

/// Rolling-hash base; any odd constant spreads bytes well enough for block matching.
const ROLL_BASE: u64 = 0x100_0000_01B3;

fn block_hash(block: &[u8]) -> u64 {
    block.iter().fold(0u64, |hash, byte| hash.wrapping_mul(ROLL_BASE).wrapping_add(u64::from(*byte)))
}

/// A delta that rebuilds `target` from `base`.
pub fn encode(target: &[u8], base: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    push_varint(&mut out, target.len() as u64);
    push_varint(&mut out, base.len() as u64);
    out.extend_from_slice(&checksum(target).to_le_bytes());
    let mut ops = Ops { out, pending_copy: None };

    // A typical edit changes a few fields: most of both texts is one common prefix and suffix.
    let common_max = target.len().min(base.len());
    let prefix = target.iter().zip(base).take_while(|(a, b)| a == b).count().min(common_max);
    let suffix = target[prefix..].iter().rev().zip(base[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    ops.copy(0, prefix);
    let target_middle_end = target.len() - suffix;
    let base_middle_end = base.len() - suffix;
    encode_middle(&mut ops, target, prefix, target_middle_end, base, prefix, base_middle_end);
    ops.copy(base.len() - suffix, suffix);
    ops.flush_copy();
    ops.out
}

/// Encodes `target[target_start..target_end]` with copies from anywhere in `base`, finding them
/// through a hash of each aligned block of `base[base_start..base_end]`.
fn encode_middle(
    ops: &mut Ops,
    target: &[u8],
    target_start: usize,
    target_end: usize,
    base: &[u8],
    base_start: usize,
    base_end: usize,
) {
    let middle = &target[target_start..target_end];
    if middle.len() < BLOCK_BYTES || base_end.saturating_sub(base_start) < BLOCK_BYTES {
        ops.insert(middle);
        return;
    }
    let mut blocks: HashMap<u64, usize> = HashMap::with_capacity((base_end - base_start) / BLOCK_BYTES);
    let mut offset = base_start;
    while offset + BLOCK_BYTES <= base_end {
        blocks.entry(block_hash(&base[offset..offset + BLOCK_BYTES])).or_insert(offset);
        offset += BLOCK_BYTES;
    }
    // ROLL_BASE^(BLOCK_BYTES - 1): the weight of the byte that leaves the window.
    let leaving_weight = (1..BLOCK_BYTES).fold(1u64, |weight, _| weight.wrapping_mul(ROLL_BASE));
    let mut literal_start = target_start;
    let mut position = target_start;
    let mut hash = block_hash(&target[position..position + BLOCK_BYTES]);
    loop {
        let found = blocks.get(&hash).copied().filter(|base_offset| {
            base[*base_offset..*base_offset + BLOCK_BYTES] == target[position..position + BLOCK_BYTES]
        });
        if let Some(base_offset) = found {
            // Grow the match backwards over the pending literal and forwards as far as it goes.
            let mut back = 0;
            while position - back > literal_start
                && base_offset > back
                && target[position - back - 1] == base[base_offset - back - 1]
            {
                back += 1;
            }
            let mut len = BLOCK_BYTES;
            while position + len < target_end
                && base_offset + len < base.len()
                && target[position + len] == base[base_offset + len]
            {
                len += 1;
            }
            ops.insert(&target[literal_start..position - back]);
            ops.copy(base_offset - back, back + len);
            position += len;
            literal_start = position;
            if position + BLOCK_BYTES > target_end {
                break;
            }
            hash = block_hash(&target[position..position + BLOCK_BYTES]);
            continue;
        }
        if position + BLOCK_BYTES >= target_end {
            break;
        }
        let leaving = u64::from(target[position]);
        let entering = u64::from(target[position + BLOCK_BYTES]);
        hash = hash.wrapping_sub(leaving.wrapping_mul(leaving_weight)).wrapping_mul(ROLL_BASE).wrapping_add(entering);
        position += 1;
    }
    ops.insert(&target[literal_start..target_end]);
}

/// The length of the text `delta` rebuilds, read from its header.
pub fn target_len(delta: &[u8]) -> Result<u64, DeltaError> {
    let format = *delta.first().ok_or(DeltaError::Malformed("empty delta"))?;
    if format != FORMAT_VERSION {
        return Err(DeltaError::UnknownFormat(format));
    }
    let mut position = 1;
    read_varint(delta, &mut position)
}

/// Rebuilds the text `delta` was made for from `base`.
pub fn apply(delta: &[u8], base: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let target_len = target_len(delta)?;
    let mut position = 1;
    read_varint(delta, &mut position)?;
    let base_len = read_varint(delta, &mut position)?;
    if base_len != base.len() as u64 {
        return Err(DeltaError::WrongBase { expected: base_len, found: base.len() as u64 });
    }
    let checksum_bytes: [u8; 8] = delta
        .get(position..position + 8)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DeltaError::Malformed("no checksum"))?;
    position += 8;
    // The header's length is only trusted as far as the delta can back it (a corrupt header must
    // not make us reserve gigabytes).
    let capacity = usize::try_from(target_len).unwrap_or(usize::MAX).min(base.len() + delta.len());
    let mut out = Vec::with_capacity(capacity);
    while position < delta.len() {
        let op = read_varint(delta, &mut position)?;
        let len = usize::try_from(op >> 1).map_err(|_| DeltaError::Malformed("length too large"))?;
        if op & 1 == 1 {
            let end = position.checked_add(len).ok_or(DeltaError::Malformed("insert length overflows"))?;
            out.extend_from_slice(delta.get(position..end).ok_or(DeltaError::Malformed("insert past the end"))?);
            position = end;
        } else {
            let offset = usize::try_from(read_varint(delta, &mut position)?)
                .map_err(|_| DeltaError::Malformed("offset too large"))?;
            let end = offset.checked_add(len).ok_or(DeltaError::Malformed("copy length overflows"))?;
            out.extend_from_slice(base.get(offset..end).ok_or(DeltaError::Malformed("copy past the base"))?);
        }
        if out.len() as u64 > target_len {
            return Err(DeltaError::Malformed("rebuilds more bytes than its header says"));
        }
    }
    if out.len() as u64 != target_len {
        return Err(DeltaError::Malformed("rebuilds fewer bytes than its header says"));
    }
    if checksum(&out).to_le_bytes() != checksum_bytes {
        return Err(DeltaError::ChecksumMismatch);
    }
    Ok(out)
}
