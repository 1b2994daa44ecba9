//! Byte classification: the hot loops of the extractor.
//!
//! Long strings (message text, base64 images) dominate real bodies, so the
//! extractor spends most of its time looking for the end of a string. These
//! functions find the next byte that needs attention in a string:
//!
//! - [`find_string_special`]: `"`, `\`, a control byte (< 0x20) or a
//!   non-ASCII byte (≥ 0x80, which needs UTF-8 validation);
//! - [`find_string_end`]: `"`, `\` or a control byte (a run of non-ASCII
//!   text is validated as a whole by [`std::str::from_utf8`]).
//!
//! [`for_each_block`] hands out 64-byte blocks with their classification
//! masks, for the structural scan between strings.
//!
//! Each architecture has its own file behind the same small interface,
//! `find::<HIGH>` (the two string searches) and `for_each_block`; a
//! [`Block`] remembers which code classified it, and its columns come from
//! the same code:
//!
//! - `x86.rs`: AVX-512 (F and BW, blocks) or AVX2 when the CPU has them
//!   (detected at run time, no `-C target-cpu` needed), SSE2 (strings, part
//!   of the x86-64 baseline) and the scalar classification otherwise;
//! - `aarch64.rs`: NEON, part of the aarch64 baseline, so chosen at compile
//!   time;
//! - `scalar.rs`: the portable path for every other architecture, and the
//!   reference the SIMD paths are tested against.
//!
//! This module is the only place in the crate with `unsafe` code (with
//! [`utf8`], which skips UTF-8 validation for ASCII text).

#[cfg(target_arch = "aarch64")]
#[cfg_attr(bbr_scan_scalar, allow(dead_code))]
mod aarch64;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
#[cfg_attr(bbr_scan_scalar, allow(dead_code))]
mod x86;

// `RUSTFLAGS="--cfg bbr_scan_scalar"` builds the portable path on every
// architecture: the baseline benches/arm64-instructions.sh counts the SIMD
// paths against.
#[cfg(all(target_arch = "aarch64", not(bbr_scan_scalar)))]
use aarch64 as arch;
#[cfg(any(
    bbr_scan_scalar,
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
use scalar as arch;
#[cfg(all(target_arch = "x86_64", not(bbr_scan_scalar)))]
use x86 as arch;

/// Index of the first `"`, `\`, control (< 0x20) or non-ASCII (≥ 0x80)
/// byte of `s`, or `s.len()` when there is none.
#[inline]
pub(crate) fn find_string_special(s: &[u8]) -> usize {
    arch::find::<true>(s)
}

/// Index of the first `"`, `\` or control (< 0x20) byte of `s`, or
/// `s.len()` when there is none. Non-ASCII bytes are passed over.
#[inline]
pub(crate) fn find_string_end(s: &[u8]) -> usize {
    arch::find::<false>(s)
}

/// `bytes` as a `&str` when they are valid UTF-8.
///
/// Model names are nearly always ASCII: that is checked a word at a time,
/// far faster than full UTF-8 validation of a short string.
#[inline]
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// Bit masks over a 64-byte block: bit `i` describes byte `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Masks {
    /// `"`.
    pub(crate) quote: u64,
    /// `\`.
    pub(crate) backslash: u64,
    /// `{`, `}`, `[`, `]`, `:` and `,` (and a few control bytes, which
    /// callers refuse through [`Masks::ctrl_or_high`] before trusting this mask).
    pub(crate) op: u64,
    /// JSON whitespace: space, tab, line feed, carriage return.
    pub(crate) ws: u64,
    /// Bytes below 0x20 or at or above 0x80.
    pub(crate) ctrl_or_high: u64,
    /// `:`.
    pub(crate) colon: u64,
    /// `,`.
    pub(crate) comma: u64,
}

/// Token classes of the bytes that start a JSON token, as
/// [`Block::columns`] reports them. Other bytes (numbers, literals) are
/// [`token::OTHER`]; `:` and `,` never start a token and get no fixed class.
pub(crate) mod token {
    /// `"`.
    pub(crate) const QUOTE: u8 = 0;
    /// `{`.
    pub(crate) const OPEN_OBJ: u8 = 1;
    /// `[`.
    pub(crate) const OPEN_ARR: u8 = 2;
    /// `}`.
    pub(crate) const CLOSE_OBJ: u8 = 3;
    /// `]`.
    pub(crate) const CLOSE_ARR: u8 = 4;
    /// Any other byte: the start of a number or a literal.
    pub(crate) const OTHER: u8 = 5;
    /// Or-ed into a column when the token follows a comma.
    pub(crate) const AFTER_COMMA: u8 = 8;
    /// Or-ed into a column when the token follows a colon.
    pub(crate) const AFTER_COLON: u8 = 16;

    /// The class of `b`.
    pub(crate) const fn class(b: u8) -> u8 {
        match b {
            b'"' => QUOTE,
            b'{' => OPEN_OBJ,
            b'[' => OPEN_ARR,
            b'}' => CLOSE_OBJ,
            b']' => CLOSE_ARR,
            _ => OTHER,
        }
    }
}

/// Which classification code made a [`Block`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(bbr_scan_scalar, allow(dead_code))]
enum Isa {
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// What [`for_each_block`] does after a block.
pub(crate) enum Next {
    /// The block is done: go on with the one after it.
    Accept,
    /// Stop at this block.
    Stop,
    /// Go on with the block that starts at this offset of the buffer (after
    /// the block; blocks need not be 64-byte aligned).
    Jump(usize),
}

/// A 64-byte block handed out by [`for_each_block`], with its masks.
pub(crate) struct Block<'a> {
    /// Where the block starts in the buffer.
    pub(crate) offset: usize,
    pub(crate) bytes: &'a [u8; 64],
    pub(crate) masks: Masks,
    isa: Isa,
}

impl Block<'_> {
    /// The column of each token of the block: at every position set in
    /// `tokens`, the byte's [`token`] class, or-ed with
    /// [`token::AFTER_COMMA`] where `comma` has the bit and
    /// [`token::AFTER_COLON`] where `colon` has it. Other positions hold
    /// unspecified values.
    #[inline(always)]
    pub(crate) fn columns(&self, tokens: u64, comma: u64, colon: u64) -> [u8; 64] {
        match self.isa {
            Isa::Scalar => scalar::columns(self.bytes, tokens, comma, colon),
            // SAFETY: only `x86::for_each_block_avx2` makes AVX2 blocks, and
            // it runs only once AVX2 has been detected.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::columns_avx2(self.bytes, comma, colon) },
            // SAFETY: only `x86::for_each_block_avx512` makes AVX-512 blocks,
            // and it runs only once AVX-512 F and BW have been detected.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::columns_avx512(self.bytes, comma, colon) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::columns(self.bytes, comma, colon),
        }
    }
}

/// Calls `f` with successive 64-byte blocks of `buf` and their masks, from
/// offset 0, while `f` accepts them (or jumps ahead); returns the offset of
/// the block where `f` stopped, or of the first byte of a last, shorter
/// piece.
///
/// With AVX-512 (F and BW) or AVX2 the whole loop, `f` included, is
/// compiled for that instruction set and BMI, so that the classification
/// and `f` inline into one loop; NEON is always there on aarch64.
#[inline]
pub(crate) fn for_each_block<F: FnMut(&Block<'_>) -> Next>(buf: &[u8], f: F) -> usize {
    arch::for_each_block(buf, f)
}

#[inline(always)]
fn blocks_with<F, C>(buf: &[u8], mut f: F, classify: C, isa: Isa) -> usize
where
    F: FnMut(&Block<'_>) -> Next,
    C: Fn(&[u8; 64]) -> Masks,
{
    let mut offset = 0;
    while let Some(Ok(bytes)) = buf.get(offset..offset + 64).map(<&[u8; 64]>::try_from) {
        let block = Block {
            offset,
            bytes,
            masks: classify(bytes),
            isa,
        };
        match f(&block) {
            Next::Accept => offset += 64,
            Next::Stop => break,
            Next::Jump(to) => offset = to.max(offset + 1),
        }
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::{Isa, Next, for_each_block};

    /// The path [`for_each_block`] takes on this machine.
    fn block_path() -> Isa {
        let mut isa = None;
        for_each_block(&[b' '; 64], |block| {
            isa = Some(block.isa);
            Next::Stop
        });
        isa.expect("a 64-byte buffer is one block")
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn neon_is_the_path_taken_on_aarch64() {
        assert_eq!(block_path(), Isa::Neon);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_widest_detected_path_is_taken_on_x86_64() {
        let has = |features: &[&str]| {
            features.iter().all(|f| match *f {
                "avx512f" => std::is_x86_feature_detected!("avx512f"),
                "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
                "avx2" => std::is_x86_feature_detected!("avx2"),
                "bmi1" => std::is_x86_feature_detected!("bmi1"),
                "bmi2" => std::is_x86_feature_detected!("bmi2"),
                _ => unreachable!("{f}"),
            })
        };
        let want = if has(&["avx512f", "avx512bw", "bmi1", "bmi2"]) {
            Isa::Avx512
        } else if has(&["avx2", "bmi1", "bmi2"]) {
            Isa::Avx2
        } else {
            Isa::Scalar
        };
        assert_eq!(block_path(), want);
    }
}
