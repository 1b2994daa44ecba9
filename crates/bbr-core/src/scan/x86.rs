//! x86-64: AVX-512 (F and BW) or AVX2 when the CPU has them, detected at
//! run time, SSE2 (part of the x86-64 baseline) otherwise.

use std::arch::x86_64::*;

/// [`super::find_string_special`] (`HIGH`) and [`super::find_string_end`]:
/// AVX2 when the CPU has it, SSE2 otherwise.
#[inline]
pub(super) fn find<const HIGH: bool>(s: &[u8]) -> usize {
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { find_avx2::<HIGH>(s) };
    }
    // SAFETY: SSE2 is part of the x86-64 baseline.
    unsafe { find_sse2::<HIGH>(s) }
}

/// [`super::for_each_block`]: AVX-512 or AVX2 (with BMI) when the CPU has
/// them, the scalar classification otherwise.
#[inline]
pub(super) fn for_each_block<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
    {
        // SAFETY: the CPU supports AVX-512 F and BW, BMI1 and BMI2
        // (checked just above).
        return unsafe { for_each_block_avx512(buf, f) };
    }
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
    {
        // SAFETY: the CPU supports AVX2, BMI1 and BMI2 (checked just above).
        return unsafe { for_each_block_avx2(buf, f) };
    }
    super::scalar::for_each_block(buf, f)
}

/// The mask of special bytes in a 16-byte vector.
#[inline]
#[target_feature(enable = "sse2")]
fn special_sse2<const HIGH: bool>(v: __m128i) -> __m128i {
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    let control = if HIGH {
        // Signed compare: 0x00..=0x1F and 0x80..=0xFF are both "< 0x20".
        _mm_cmpgt_epi8(_mm_set1_epi8(0x20), v)
    } else {
        // Unsigned v < 0x20  <=>  min(v, 0x1F) == v.
        _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v)
    };
    _mm_or_si128(_mm_or_si128(quote, backslash), control)
}

/// The mask of special bytes in a 32-byte vector.
#[inline]
#[target_feature(enable = "avx2")]
fn special_avx2<const HIGH: bool>(v: __m256i) -> __m256i {
    let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
    let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
    let control = if HIGH {
        _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v)
    } else {
        _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v)
    };
    _mm256_or_si256(_mm256_or_si256(quote, backslash), control)
}

/// SSE2 search, 64 bytes per iteration, then 16, then the scalar tail.
///
/// # Safety
/// The CPU must support SSE2 (always true on x86-64).
#[target_feature(enable = "sse2")]
pub(super) unsafe fn find_sse2<const HIGH: bool>(s: &[u8]) -> usize {
    let len = s.len();
    let ptr = s.as_ptr();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: i + 64 <= len, so the four 16-byte unaligned loads are in bounds.
        let (a, b, c, d) = unsafe {
            (
                _mm_loadu_si128(ptr.add(i).cast()),
                _mm_loadu_si128(ptr.add(i + 16).cast()),
                _mm_loadu_si128(ptr.add(i + 32).cast()),
                _mm_loadu_si128(ptr.add(i + 48).cast()),
            )
        };
        let (ma, mb, mc, md) = (
            special_sse2::<HIGH>(a),
            special_sse2::<HIGH>(b),
            special_sse2::<HIGH>(c),
            special_sse2::<HIGH>(d),
        );
        let any = _mm_or_si128(_mm_or_si128(ma, mb), _mm_or_si128(mc, md));
        if _mm_movemask_epi8(any) != 0 {
            let bits = (_mm_movemask_epi8(ma) as u64 & 0xffff)
                | ((_mm_movemask_epi8(mb) as u64 & 0xffff) << 16)
                | ((_mm_movemask_epi8(mc) as u64 & 0xffff) << 32)
                | ((_mm_movemask_epi8(md) as u64 & 0xffff) << 48);
            return i + bits.trailing_zeros() as usize;
        }
        i += 64;
    }
    while i + 16 <= len {
        // SAFETY: i + 16 <= len, so the 16-byte unaligned load is in bounds.
        let v = unsafe { _mm_loadu_si128(ptr.add(i).cast()) };
        let bits = _mm_movemask_epi8(special_sse2::<HIGH>(v)) as u32;
        if bits != 0 {
            return i + bits.trailing_zeros() as usize;
        }
        i += 16;
    }
    i + super::scalar::find::<HIGH>(&s[i..])
}

/// AVX2 search, 64 bytes per iteration, then 32, then the SSE2 tail.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn find_avx2<const HIGH: bool>(s: &[u8]) -> usize {
    let len = s.len();
    let ptr = s.as_ptr();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: i + 64 <= len, so both 32-byte unaligned loads are in bounds.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(ptr.add(i).cast()),
                _mm256_loadu_si256(ptr.add(i + 32).cast()),
            )
        };
        let (ma, mb) = (special_avx2::<HIGH>(a), special_avx2::<HIGH>(b));
        let any = _mm256_or_si256(ma, mb);
        if _mm256_testz_si256(any, any) == 0 {
            let bits = (_mm256_movemask_epi8(ma) as u32 as u64)
                | ((_mm256_movemask_epi8(mb) as u32 as u64) << 32);
            return i + bits.trailing_zeros() as usize;
        }
        i += 64;
    }
    while i + 32 <= len {
        // SAFETY: i + 32 <= len, so the 32-byte unaligned load is in bounds.
        let v = unsafe { _mm256_loadu_si256(ptr.add(i).cast()) };
        let bits = _mm256_movemask_epi8(special_avx2::<HIGH>(v)) as u32;
        if bits != 0 {
            return i + bits.trailing_zeros() as usize;
        }
        i += 32;
    }
    // SAFETY: AVX2 implies SSE2.
    i + unsafe { find_sse2::<HIGH>(&s[i..]) }
}

/// The classification masks of 32 bytes, as `u32` bit masks.
#[inline]
#[target_feature(enable = "avx2")]
fn classify32(v: __m256i) -> [u32; 7] {
    // Byte-table lookups on the low nibble (simdjson's method): a byte is
    // whitespace when the table entry at its low nibble equals the byte.
    let ws_table = _mm256_setr_epi8(
        b' ' as i8,
        100,
        100,
        100,
        17,
        100,
        113,
        2,
        100,
        b'\t' as i8,
        b'\n' as i8,
        112,
        100,
        b'\r' as i8,
        100,
        100,
        b' ' as i8,
        100,
        100,
        100,
        17,
        100,
        113,
        2,
        100,
        b'\t' as i8,
        b'\n' as i8,
        112,
        100,
        b'\r' as i8,
        100,
        100,
    );
    // `[`/`]` become `{`/`}` when 0x20 is or-ed in; `,` and `:` stay.
    let op_table = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b':' as i8, b'{' as i8, b',' as i8, b'}' as i8, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, b':' as i8, b'{' as i8, b',' as i8, b'}' as i8, 0, 0,
    );
    let ws = _mm256_cmpeq_epi8(_mm256_shuffle_epi8(ws_table, v), v);
    let curly = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
    let op = _mm256_cmpeq_epi8(_mm256_shuffle_epi8(op_table, v), curly);
    let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
    let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
    // Signed compare: 0x00..=0x1F and 0x80..=0xFF are both "< 0x20".
    let low_or_high = _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v);
    [
        _mm256_movemask_epi8(quote) as u32,
        _mm256_movemask_epi8(backslash) as u32,
        _mm256_movemask_epi8(op) as u32,
        _mm256_movemask_epi8(ws) as u32,
        _mm256_movemask_epi8(low_or_high) as u32,
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b':' as i8))) as u32,
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b',' as i8))) as u32,
    ]
}

/// [`super::for_each_block`] compiled for AVX2 (and BMI, for the bit
/// scans of the caller's loop, which inlines here).
///
/// # Safety
/// The CPU must support AVX2, BMI1 and BMI2.
#[target_feature(enable = "avx2,bmi1,bmi2")]
pub(super) unsafe fn for_each_block_avx2<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    super::blocks_with(buf, f, |block| classify_avx2(block), super::Isa::Avx2)
}

/// [`super::Block::columns`] with AVX2, for every position at once.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn columns_avx2(block: &[u8; 64], comma: u64, colon: u64) -> [u8; 64] {
    use super::token;
    // A byte's class from two nibble lookups whose AND is one bit for
    // `{` (1), `[` (2), `}` (4) and `]` (8) and zero for every other
    // byte, then that bit mapped to the class; quotes are set apart.
    let lo_table = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 12,
        0, 0,
    );
    let hi_table = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 10, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 5, 0, 0, 0, 0, 0, 0,
        0, 0,
    );
    let (o, a, b, c, d) = (
        token::OTHER as i8,
        token::OPEN_OBJ as i8,
        token::OPEN_ARR as i8,
        token::CLOSE_OBJ as i8,
        token::CLOSE_ARR as i8,
    );
    let class_table = _mm256_setr_epi8(
        o, a, b, o, c, o, o, o, d, o, o, o, o, o, o, o, o, a, b, o, c, o, o, o, d, o, o, o, o, o,
        o, o,
    );
    // Byte `i` of a lane picks the byte of a 32-bit mask holding bit `i`.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let expand = |mask: u32, value: u8| {
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(mask as i32), spread);
        let on = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(on, _mm256_set1_epi8(value as i8))
    };
    let nibble = _mm256_set1_epi8(0x0f);
    let mut out = [0u8; 64];
    for half in 0..2 {
        // SAFETY: `block` and `out` are 64 bytes long and `half` is 0 or
        // 1, so both 32-byte unaligned accesses are in bounds.
        let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * half).cast()) };
        let lo = _mm256_and_si256(v, nibble);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        let onehot = _mm256_and_si256(
            _mm256_shuffle_epi8(lo_table, lo),
            _mm256_shuffle_epi8(hi_table, hi),
        );
        let class = _mm256_shuffle_epi8(class_table, onehot);
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        const _: () = assert!(token::QUOTE == 0);
        let class = _mm256_andnot_si256(quote, class);
        let flags = _mm256_or_si256(
            expand((comma >> (32 * half)) as u32, token::AFTER_COMMA),
            expand((colon >> (32 * half)) as u32, token::AFTER_COLON),
        );
        // SAFETY: as for the load above.
        unsafe {
            _mm256_storeu_si256(
                out.as_mut_ptr().add(32 * half).cast(),
                _mm256_or_si256(class, flags),
            )
        };
    }
    out
}

/// AVX2 classification of a 64-byte block.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn classify_avx2(block: &[u8; 64]) -> super::Masks {
    let ptr = block.as_ptr();
    // SAFETY: `block` is 64 bytes long, so both 32-byte unaligned loads are in bounds.
    let (a, b) = unsafe {
        (
            _mm256_loadu_si256(ptr.cast()),
            _mm256_loadu_si256(ptr.add(32).cast()),
        )
    };
    let (lo, hi) = (classify32(a), classify32(b));
    let join = |k: usize| lo[k] as u64 | ((hi[k] as u64) << 32);
    super::Masks {
        quote: join(0),
        backslash: join(1),
        op: join(2),
        ws: join(3),
        ctrl_or_high: join(4),
        colon: join(5),
        comma: join(6),
    }
}

/// [`super::for_each_block`] compiled for AVX-512 (and BMI).
///
/// # Safety
/// The CPU must support AVX-512 F and BW, BMI1 and BMI2.
#[target_feature(enable = "avx512f,avx512bw,bmi1,bmi2")]
pub(super) unsafe fn for_each_block_avx512<F>(buf: &[u8], f: F) -> usize
where
    F: FnMut(&super::Block<'_>) -> super::Next,
{
    super::blocks_with(buf, f, |block| classify_avx512(block), super::Isa::Avx512)
}

/// A 128-bit table repeated in the four lanes of a 512-bit vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn table512(t: [u8; 16]) -> __m512i {
    // SAFETY: `t` is 16 bytes, one unaligned 128-bit load.
    let lane = unsafe { _mm_loadu_si128(t.as_ptr().cast()) };
    _mm512_broadcast_i32x4(lane)
}

/// AVX-512 classification of a 64-byte block: the same masks as
/// [`classify_avx2`], straight from mask compares.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn classify_avx512(block: &[u8; 64]) -> super::Masks {
    // SAFETY: `block` is 64 bytes long, one unaligned 512-bit load.
    let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    // The tables of `classify32`.
    let ws_table = table512([
        b' ', 100, 100, 100, 17, 100, 113, 2, 100, b'\t', b'\n', 112, 100, b'\r', 100, 100,
    ]);
    let op_table = table512([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b':', b'{', b',', b'}', 0, 0]);
    let curly = _mm512_or_si512(v, _mm512_set1_epi8(0x20));
    super::Masks {
        quote: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8)),
        backslash: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\\' as i8)),
        op: _mm512_cmpeq_epi8_mask(_mm512_shuffle_epi8(op_table, v), curly),
        ws: _mm512_cmpeq_epi8_mask(_mm512_shuffle_epi8(ws_table, v), v),
        // Signed compare: 0x00..=0x1F and 0x80..=0xFF are both "< 0x20".
        ctrl_or_high: _mm512_cmplt_epi8_mask(v, _mm512_set1_epi8(0x20)),
        colon: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b':' as i8)),
        comma: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b',' as i8)),
    }
}

/// [`super::Block::columns`] with AVX-512, for every position at once;
/// the same method as [`columns_avx2`], the flags straight from the masks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn columns_avx512(block: &[u8; 64], comma: u64, colon: u64) -> [u8; 64] {
    use super::token;
    let (o, a, b, c, d) = (
        token::OTHER,
        token::OPEN_OBJ,
        token::OPEN_ARR,
        token::CLOSE_OBJ,
        token::CLOSE_ARR,
    );
    let lo_table = table512([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 12, 0, 0]);
    let hi_table = table512([0, 0, 0, 0, 0, 10, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    let class_table = table512([o, a, b, o, c, o, o, o, d, o, o, o, o, o, o, o]);
    // SAFETY: `block` is 64 bytes long, one unaligned 512-bit load.
    let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    let nibble = _mm512_set1_epi8(0x0f);
    let lo = _mm512_and_si512(v, nibble);
    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
    let onehot = _mm512_and_si512(
        _mm512_shuffle_epi8(lo_table, lo),
        _mm512_shuffle_epi8(hi_table, hi),
    );
    let class = _mm512_shuffle_epi8(class_table, onehot);
    let quote = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8));
    let class = _mm512_mask_mov_epi8(class, quote, _mm512_set1_epi8(token::QUOTE as i8));
    let flags = _mm512_or_si512(
        _mm512_maskz_mov_epi8(comma, _mm512_set1_epi8(token::AFTER_COMMA as i8)),
        _mm512_maskz_mov_epi8(colon, _mm512_set1_epi8(token::AFTER_COLON as i8)),
    );
    let mut out = [0u8; 64];
    // SAFETY: `out` is 64 bytes long, one unaligned 512-bit store.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_or_si512(class, flags)) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Masks, scalar};

    #[test]
    fn avx2_classification_agrees_with_scalar_on_every_byte() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for first in 0..=255u8 {
            let mut block = [0u8; 64];
            for (i, b) in block.iter_mut().enumerate() {
                *b = first.wrapping_add((i as u8).wrapping_mul(37));
            }
            // SAFETY: AVX2 detected above.
            let got = unsafe { classify_avx2(&block) };
            let want = scalar::classify(&block);
            // The op mask may hold control bytes in the SIMD path; callers
            // refuse those through `ctrl` first.
            assert_eq!(
                got.op & !got.ctrl_or_high,
                want.op & !want.ctrl_or_high,
                "{block:?}"
            );
            assert_eq!(
                (
                    got.quote,
                    got.backslash,
                    got.ws,
                    got.ctrl_or_high,
                    got.colon,
                    got.comma
                ),
                (
                    want.quote,
                    want.backslash,
                    want.ws,
                    want.ctrl_or_high,
                    want.colon,
                    want.comma
                ),
                "{block:?}"
            );
        }
    }

    #[test]
    fn avx2_columns_agree_with_scalar_on_every_byte() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for first in 0..=255u8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (comma, colon) = (state, state.rotate_left(29) & !state);
            let mut block = [0u8; 64];
            for (i, b) in block.iter_mut().enumerate() {
                *b = first.wrapping_add((i as u8).wrapping_mul(101));
            }
            // SAFETY: AVX2 detected above.
            let got = unsafe { columns_avx2(&block, comma, colon) };
            let want = scalar::columns(&block, u64::MAX, comma, colon);
            assert_eq!(got, want, "{block:?}");
        }
    }

    #[test]
    fn avx512_classification_and_columns_agree_with_scalar_on_every_byte() {
        if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw"))
        {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for first in 0..=255u8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (comma, colon) = (state, state.rotate_left(29) & !state);
            for stride in [37u8, 101] {
                let mut block = [0u8; 64];
                for (i, b) in block.iter_mut().enumerate() {
                    *b = first.wrapping_add((i as u8).wrapping_mul(stride));
                }
                // SAFETY: AVX-512 F and BW detected above.
                let got = unsafe { classify_avx512(&block) };
                let want = scalar::classify(&block);
                assert_eq!(got.op & !got.ctrl_or_high, want.op & !want.ctrl_or_high);
                let (got, want) = (Masks { op: 0, ..got }, Masks { op: 0, ..want });
                assert_eq!(got, want, "{block:?}");
                // SAFETY: as above.
                let got = unsafe { columns_avx512(&block, comma, colon) };
                let want = scalar::columns(&block, u64::MAX, comma, colon);
                assert_eq!(got, want, "{block:?}");
            }
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
        // SAFETY: SSE2 is part of the x86-64 baseline.
        unsafe {
            assert_eq!(find_sse2::<true>(s), want_special, "sse2 special {s:?}");
            assert_eq!(find_sse2::<false>(s), want_end, "sse2 end {s:?}");
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected just above.
            unsafe {
                assert_eq!(find_avx2::<true>(s), want_special, "avx2 special {s:?}");
                assert_eq!(find_avx2::<false>(s), want_end, "avx2 end {s:?}");
            }
        }
    }

    #[test]
    fn simd_agrees_with_scalar_at_every_position_and_byte() {
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
    fn simd_agrees_with_scalar_on_pseudo_random_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 300) as usize;
            let s: Vec<u8> = (0..len)
                .map(|i| {
                    let x = state.rotate_left(i as u32 % 64) as u8;
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
