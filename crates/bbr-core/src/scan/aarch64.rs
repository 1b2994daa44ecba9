//! aarch64: NEON, part of the aarch64 baseline (Rust's aarch64 targets enable it),
//! so it is chosen at compile time and nothing is detected at run time.
//!
//! NEON has no `movemask`: a 16-byte compare result becomes a bit mask by
//! narrowing (four bits a byte, for a search) or by pairwise additions of
//! one-bit-a-byte values (one bit a byte, for the 64-bit block masks).
//! `tbl` looks up 16-byte tables as `pshufb` does on x86, so the block
//! classification uses the same nibble tables as the x86 paths.

use std::arch::aarch64::*;

/// One bit a byte, repeating every eight bytes: bit `i % 8` at byte `i`.
#[inline]
#[target_feature(enable = "neon")]
fn bit_of_byte() -> uint8x16_t {
    vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201))
}

/// A 16-byte table as a vector.
#[inline]
#[target_feature(enable = "neon")]
fn table(t: [u8; 16]) -> uint8x16_t {
    // SAFETY: `t` is 16 bytes, one unaligned 128-bit load.
    unsafe { vld1q_u8(t.as_ptr()) }
}

/// The four 16-byte vectors of a 64-byte block.
#[inline]
#[target_feature(enable = "neon")]
fn load64(block: &[u8; 64]) -> [uint8x16_t; 4] {
    let ptr = block.as_ptr();
    // SAFETY: `block` is 64 bytes long, so the four 16-byte unaligned
    // loads are in bounds.
    unsafe {
        [
            vld1q_u8(ptr),
            vld1q_u8(ptr.add(16)),
            vld1q_u8(ptr.add(32)),
            vld1q_u8(ptr.add(48)),
        ]
    }
}

/// The mask of special bytes in a 16-byte vector (0xFF where special).
#[inline]
#[target_feature(enable = "neon")]
fn special<const HIGH: bool>(v: uint8x16_t) -> uint8x16_t {
    let quote = vceqq_u8(v, vdupq_n_u8(b'"'));
    let backslash = vceqq_u8(v, vdupq_n_u8(b'\\'));
    let control = if HIGH {
        // Signed compare: 0x00..=0x1F and 0x80..=0xFF are both "< 0x20".
        vcltq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(0x20))
    } else {
        vcltq_u8(v, vdupq_n_u8(0x20))
    };
    vorrq_u8(vorrq_u8(quote, backslash), control)
}

/// A compare result (0 or 0xFF a byte) as four bits a byte: byte `i` is
/// set when bits `4 i .. 4 i + 4` are.
#[inline]
#[target_feature(enable = "neon")]
fn nibble_mask(m: uint8x16_t) -> u64 {
    vget_lane_u64::<0>(vreinterpret_u64_u8(vshrn_n_u16::<4>(vreinterpretq_u16_u8(
        m,
    ))))
}

/// [`super::find_string_special`] (`HIGH`) and [`super::find_string_end`].
#[inline]
pub(super) fn find<const HIGH: bool>(s: &[u8]) -> usize {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { find_neon::<HIGH>(s) }
}

/// NEON search, 64 bytes per iteration, then 16, then the scalar tail.
#[inline]
#[target_feature(enable = "neon")]
fn find_neon<const HIGH: bool>(s: &[u8]) -> usize {
    let len = s.len();
    let ptr = s.as_ptr();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: i + 64 <= len, so the four 16-byte unaligned loads are in bounds.
        let v = unsafe {
            [
                vld1q_u8(ptr.add(i)),
                vld1q_u8(ptr.add(i + 16)),
                vld1q_u8(ptr.add(i + 32)),
                vld1q_u8(ptr.add(i + 48)),
            ]
        };
        let m = v.map(|x| special::<HIGH>(x));
        let any = vorrq_u8(vorrq_u8(m[0], m[1]), vorrq_u8(m[2], m[3]));
        if nibble_mask(any) != 0 {
            return i + first_set(&m);
        }
        i += 64;
    }
    while i + 16 <= len {
        // SAFETY: i + 16 <= len, so the 16-byte unaligned load is in bounds.
        let v = unsafe { vld1q_u8(ptr.add(i)) };
        let bits = nibble_mask(special::<HIGH>(v));
        if bits != 0 {
            return i + (bits.trailing_zeros() / 4) as usize;
        }
        i += 16;
    }
    i + super::scalar::find::<HIGH>(&s[i..])
}

/// The index of the first set byte of four compare results, at least one
/// of which has one.
#[inline]
#[target_feature(enable = "neon")]
fn first_set(m: &[uint8x16_t; 4]) -> usize {
    let mut at = 0;
    for &v in m {
        let bits = nibble_mask(v);
        if bits != 0 {
            return at + (bits.trailing_zeros() / 4) as usize;
        }
        at += 16;
    }
    at
}

/// 64 compare results (0 or 0xFF a byte, byte `16 k + i` in lane `i` of
/// `m[k]`) as a bit mask: bit `j` for byte `j`.
#[inline]
#[target_feature(enable = "neon")]
fn bit_mask(m: [uint8x16_t; 4]) -> u64 {
    let bit = bit_of_byte();
    let [a, b, c, d] = m.map(|v| vandq_u8(v, bit));
    // Three rounds of pairwise sums join eight one-bit bytes into one.
    let ab = vpaddq_u8(a, b);
    let cd = vpaddq_u8(c, d);
    let abcd = vpaddq_u8(ab, cd);
    vgetq_lane_u64::<0>(vreinterpretq_u64_u8(vpaddq_u8(abcd, abcd)))
}

/// NEON classification of a 64-byte block: the masks of
/// [`super::scalar::classify`] (control bytes may also be in `op`, as on
/// x86; callers refuse those first).
#[inline]
#[target_feature(enable = "neon")]
fn classify_neon(block: &[u8; 64]) -> super::Masks {
    let v = load64(block);
    // The nibble tables of the x86 paths: a byte is whitespace when the
    // entry at its low nibble equals the byte; `[`/`]` become `{`/`}` when
    // 0x20 is or-ed in, `,` and `:` stay. Entries of bytes ≥ 0x80 never
    // match (no entry is ≥ 0x80), as `pshufb` zeroes them.
    let ws_table = table([
        b' ', 100, 100, 100, 17, 100, 113, 2, 100, b'\t', b'\n', 112, 100, b'\r', 100, 100,
    ]);
    let op_table = table([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b':', b'{', b',', b'}', 0, 0]);
    let nibble = vdupq_n_u8(0x0f);
    let eq = |byte: u8| bit_mask(v.map(|x| vceqq_u8(x, vdupq_n_u8(byte))));
    super::Masks {
        quote: eq(b'"'),
        backslash: eq(b'\\'),
        op: bit_mask(v.map(|x| {
            let entry = vqtbl1q_u8(op_table, vandq_u8(x, nibble));
            vceqq_u8(entry, vorrq_u8(x, vdupq_n_u8(0x20)))
        })),
        ws: bit_mask(v.map(|x| vceqq_u8(vqtbl1q_u8(ws_table, vandq_u8(x, nibble)), x))),
        // Signed compare: 0x00..=0x1F and 0x80..=0xFF are both "< 0x20".
        ctrl_or_high: bit_mask(v.map(|x| vcltq_s8(vreinterpretq_s8_u8(x), vdupq_n_s8(0x20)))),
        colon: eq(b':'),
        comma: eq(b','),
    }
}

/// [`super::for_each_block`] with the NEON classification.
#[inline]
pub(super) fn for_each_block<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { for_each_block_neon(buf, f) }
}

/// [`super::for_each_block`] compiled for NEON, so that the
/// classification and `f` inline into one loop.
#[target_feature(enable = "neon")]
fn for_each_block_neon<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    super::blocks_with(buf, f, |block| classify_neon(block), super::Isa::Neon)
}

/// [`super::Block::columns`] of a block that [`for_each_block`] made.
#[inline(always)]
pub(super) fn columns(block: &[u8; 64], comma: u64, colon: u64) -> [u8; 64] {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { columns_neon(block, comma, colon) }
}

/// [`super::Block::columns`] with NEON, for every position at once: the
/// nibble lookups of the x86 paths (`tbl` for `pshufb`).
#[inline]
#[target_feature(enable = "neon")]
fn columns_neon(block: &[u8; 64], comma: u64, colon: u64) -> [u8; 64] {
    use super::token;
    let (o, a, b, c, d) = (
        token::OTHER,
        token::OPEN_OBJ,
        token::OPEN_ARR,
        token::CLOSE_OBJ,
        token::CLOSE_ARR,
    );
    // Two nibble lookups whose AND is one bit for `{` (1), `[` (2), `}` (4)
    // and `]` (8) and zero for every other byte, then that bit mapped to
    // the class; quotes are set apart.
    let lo_table = table([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 12, 0, 0]);
    let hi_table = table([0, 0, 0, 0, 0, 10, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    let class_table = table([o, a, b, o, c, o, o, o, d, o, o, o, o, o, o, o]);
    let bit = bit_of_byte();
    // Byte `i` of the result is `value` where bit `i` of the 16-bit `mask` is set.
    let expand = |mask: u64, value: u8| {
        let bytes = vcombine_u8(vdup_n_u8(mask as u8), vdup_n_u8((mask >> 8) as u8));
        vandq_u8(vtstq_u8(bytes, bit), vdupq_n_u8(value))
    };
    let v = load64(block);
    let mut out = [0u8; 64];
    for (k, x) in v.into_iter().enumerate() {
        let onehot = vandq_u8(
            vqtbl1q_u8(lo_table, vandq_u8(x, vdupq_n_u8(0x0f))),
            vqtbl1q_u8(hi_table, vshrq_n_u8::<4>(x)),
        );
        let class = vqtbl1q_u8(class_table, onehot);
        const _: () = assert!(token::QUOTE == 0);
        let class = vbicq_u8(class, vceqq_u8(x, vdupq_n_u8(b'"')));
        let flags = vorrq_u8(
            expand(comma >> (16 * k), token::AFTER_COMMA),
            expand(colon >> (16 * k), token::AFTER_COLON),
        );
        // SAFETY: `out` is 64 bytes long and `k` is below 4, so the 16-byte
        // unaligned store is in bounds.
        unsafe { vst1q_u8(out.as_mut_ptr().add(16 * k), vorrq_u8(class, flags)) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Block, Masks, Next, scalar};

    /// Pseudo-random 64-bit values (xorshift).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn neon_classification_and_columns_agree_with_scalar_on_every_byte() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for first in 0..=255u8 {
            let comma = xorshift(&mut state);
            let colon = comma.rotate_left(29) & !comma;
            for stride in [1u8, 37, 101] {
                let mut block = [0u8; 64];
                for (i, b) in block.iter_mut().enumerate() {
                    *b = first.wrapping_add((i as u8).wrapping_mul(stride));
                }
                // SAFETY: NEON is part of the aarch64 baseline.
                let got = unsafe { classify_neon(&block) };
                let want = scalar::classify(&block);
                // The op mask may hold control bytes in the SIMD path;
                // callers refuse those through `ctrl_or_high` first.
                assert_eq!(got.op & !got.ctrl_or_high, want.op & !want.ctrl_or_high);
                let (got, want) = (Masks { op: 0, ..got }, Masks { op: 0, ..want });
                assert_eq!(got, want, "{block:?}");
                let got = columns(&block, comma, colon);
                let want = scalar::columns(&block, u64::MAX, comma, colon);
                assert_eq!(got, want, "{block:?}");
            }
        }
    }

    #[test]
    fn neon_blocks_agree_with_scalar_blocks_and_jumps() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes = b"{}[]:, \t\n\"\\ab\x01\xc3";
        let buf: Vec<u8> = (0..1000)
            .map(|_| bytes[(xorshift(&mut state) % bytes.len() as u64) as usize])
            .collect();
        // Every block seen, with a jump to an unaligned offset now and then.
        type Walker = fn(&[u8], &mut dyn FnMut(&Block<'_>) -> Next) -> usize;
        let walk = |each: Walker| {
            let mut seen = Vec::new();
            let end = each(&buf, &mut |block| {
                seen.push((block.offset, block.masks));
                if block.offset % 3 == 0 {
                    Next::Jump(block.offset + 61)
                } else {
                    Next::Accept
                }
            });
            (end, seen)
        };
        let (neon_end, neon) = walk(|buf, f| for_each_block(buf, f));
        let (scalar_end, scalar) = walk(|buf, f| scalar::for_each_block(buf, f));
        assert_eq!(neon_end, scalar_end);
        assert_eq!(neon.len(), scalar.len());
        for ((at, got), (_, want)) in neon.into_iter().zip(scalar) {
            assert_eq!(
                got.op & !got.ctrl_or_high,
                want.op & !want.ctrl_or_high,
                "at {at}"
            );
            assert_eq!(Masks { op: 0, ..got }, Masks { op: 0, ..want }, "at {at}");
        }
    }

    fn check(s: &[u8]) {
        let want_special = scalar::find::<true>(s);
        let want_end = scalar::find::<false>(s);
        assert_eq!(
            want_special,
            s.iter()
                .position(|&b| scalar::is_special::<true>(b))
                .unwrap_or(s.len())
        );
        assert_eq!(
            want_end,
            s.iter()
                .position(|&b| scalar::is_special::<false>(b))
                .unwrap_or(s.len())
        );
        assert_eq!(find::<true>(s), want_special, "neon special {s:?}");
        assert_eq!(find::<false>(s), want_end, "neon end {s:?}");
    }

    #[test]
    fn neon_agrees_with_scalar_at_every_position_and_byte() {
        for len in [
            0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 200,
        ] {
            check(&vec![b'a'; len]);
            for pos in 0..len {
                for special in [
                    b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, b'!', b']',
                ] {
                    let mut s = vec![b'a'; len];
                    s[pos] = special;
                    check(&s);
                    // A second special byte later must not hide the first.
                    if pos + 3 < len {
                        s[pos + 3] = b'"';
                        check(&s);
                    }
                }
            }
        }
    }

    #[test]
    fn neon_agrees_with_scalar_on_pseudo_random_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let r = xorshift(&mut state);
            let len = (r % 300) as usize;
            let s: Vec<u8> = (0..len)
                .map(|i| {
                    let x = r.rotate_left(i as u32 % 64) as u8;
                    // Mostly plain ASCII so that the special byte lands anywhere.
                    if x.is_multiple_of(23) {
                        x
                    } else {
                        b'a' + x % 26
                    }
                })
                .collect();
            check(&s);
        }
    }
}
