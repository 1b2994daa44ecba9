//! The portable path: every architecture without a SIMD path of its own,
//! and the reference the SIMD paths are tested against.

/// Whether `b` ends a run of plain string bytes. With `HIGH`, bytes
/// ≥ 0x80 do too.
#[inline(always)]
pub(crate) const fn is_special<const HIGH: bool>(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20 || (HIGH && b >= 0x80)
}

/// See [`super::classify`].
pub(crate) fn classify(block: &[u8; 64]) -> super::Masks {
    let mut m = super::Masks::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'"' => m.quote |= bit,
            b'\\' => m.backslash |= bit,
            b':' => {
                m.op |= bit;
                m.colon |= bit;
            }
            b',' => {
                m.op |= bit;
                m.comma |= bit;
            }
            b'{' | b'}' | b'[' | b']' => m.op |= bit,
            b' ' => m.ws |= bit,
            b'\t' | b'\n' | b'\r' => {
                m.ws |= bit;
                m.ctrl_or_high |= bit;
            }
            0x00..=0x1f | 0x80..=0xff => m.ctrl_or_high |= bit,
            _ => {}
        }
    }
    m
}

/// See [`super::Block::columns`]: only the positions in `tokens` are filled.
#[inline(always)]
pub(crate) fn columns(block: &[u8; 64], mut tokens: u64, comma: u64, colon: u64) -> [u8; 64] {
    use super::token;
    let mut out = [0u8; 64];
    while tokens != 0 {
        let p = tokens.trailing_zeros() as usize;
        tokens &= tokens - 1;
        let flags = (((comma >> p) & 1) as u8 * token::AFTER_COMMA)
            | (((colon >> p) & 1) as u8 * token::AFTER_COLON);
        out[p] = token::class(block[p]) | flags;
    }
    out
}

/// See [`super::find_string_special`] (`HIGH`) and [`super::find_string_end`].
#[inline]
pub(crate) fn find<const HIGH: bool>(s: &[u8]) -> usize {
    // Eight bytes at a time: a SWAR test for "some byte is special",
    // then the exact position from the byte loop.
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_byte =
        |w: u64, b: u8| (w ^ (LO * b as u64)).wrapping_sub(LO) & !(w ^ (LO * b as u64)) & HI;
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(word);
        // A byte < 0x20 has a borrow when 0x20 is subtracted (or is ≥ 0x80).
        let low = w.wrapping_sub(LO * 0x20) & !w & HI;
        let high = if HIGH { w & HI } else { 0 };
        if has_byte(w, b'"') | has_byte(w, b'\\') | low | high != 0 {
            break;
        }
        i += 8;
    }
    while i < s.len() {
        if is_special::<HIGH>(s[i]) {
            return i;
        }
        i += 1;
    }
    s.len()
}

/// [`super::for_each_block`] with the scalar classification.
// NEON is part of the aarch64 baseline: that path never falls back here.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
pub(super) fn for_each_block<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    super::blocks_with(buf, f, classify, super::Isa::Scalar)
}
