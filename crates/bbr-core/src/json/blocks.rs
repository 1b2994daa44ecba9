//! The block path: nested content checked 64 bytes at a time.
//!
//! Inside `messages`, `tools` and the like (depth 2 and deeper) nothing is
//! captured, so the body only needs validating. Each 64-byte block is
//! classified into bit masks ([`scan::classify`]); string interiors come
//! from the quote mask by a prefix XOR; and the grammar is checked once per
//! token (a bracket, a colon, a comma, a string's opening quote, a number
//! or literal) instead of once per byte.
//!
//! The block path never reports an error. Whenever a block holds anything
//! it does not handle (non-ASCII text, a control byte, an escape that
//! crosses the block's end, a number that might, a closing bracket back to
//! depth 1, or any grammar error), it leaves the state as it was at the
//! block's start and the byte-level machine takes that block: one code path
//! decides every error and its offset.

use super::{ModelExtractor, State, Str, StrKind};
use crate::scan;

/// How the block path ended.
pub(super) enum Exit {
    /// Fewer than 64 bytes are left.
    Room,
    /// The block at the returned position needs the byte-level machine.
    Anomaly,
}

// The grammar between tokens, compact and split by container type so that
// a transition needs no look at the nesting stack.
const VALUE_OBJ: u8 = 0;
const VALUE_ARR: u8 = 1;
const ARRAY_FIRST: u8 = 2;
const OBJECT_FIRST: u8 = 3;
const KEY: u8 = 4;
const COLON: u8 = 5;
const AFTER_OBJ: u8 = 6;
const AFTER_ARR: u8 = 7;
/// A closing bracket: the next state depends on the enclosing container.
const CLOSE: u8 = 8;
const ERR: u8 = 9;

// Token classes: the three that need nothing but a transition come first.
const C_QUOTE: usize = 0;
const C_COLON: usize = 1;
const C_COMMA: usize = 2;
const C_OPEN_OBJ: usize = 3;
const C_OPEN_ARR: usize = 4;
const C_CLOSE_OBJ: usize = 5;
const C_CLOSE_ARR: usize = 6;
const C_SCALAR: usize = 7;

/// `NEXT[state][class]`, padded to 16 states so that indexing by
/// `state & 15` needs no bounds check.
const NEXT: [[u8; 8]; 16] = {
    let e = ERR;
    let mut t = [[ERR; 8]; 16];
    // quote, :, ,, {, [, }, ], scalar
    t[VALUE_OBJ as usize] = [AFTER_OBJ, e, e, OBJECT_FIRST, ARRAY_FIRST, e, e, AFTER_OBJ];
    t[VALUE_ARR as usize] = [AFTER_ARR, e, e, OBJECT_FIRST, ARRAY_FIRST, e, e, AFTER_ARR];
    t[ARRAY_FIRST as usize] = [
        AFTER_ARR,
        e,
        e,
        OBJECT_FIRST,
        ARRAY_FIRST,
        e,
        CLOSE,
        AFTER_ARR,
    ];
    t[OBJECT_FIRST as usize] = [COLON, e, e, e, e, CLOSE, e, e];
    t[KEY as usize] = [COLON, e, e, e, e, e, e, e];
    t[COLON as usize] = [e, VALUE_OBJ, e, e, e, e, e, e];
    t[AFTER_OBJ as usize] = [e, e, KEY, e, e, CLOSE, e, e];
    t[AFTER_ARR as usize] = [e, e, VALUE_ARR, e, e, e, CLOSE, e];
    t
};

/// The token class of a byte that starts a token.
const CLASS: [u8; 256] = {
    let mut t = [C_SCALAR as u8; 256];
    t[b'"' as usize] = C_QUOTE as u8;
    t[b'{' as usize] = C_OPEN_OBJ as u8;
    t[b'[' as usize] = C_OPEN_ARR as u8;
    t[b'}' as usize] = C_CLOSE_OBJ as u8;
    t[b']' as usize] = C_CLOSE_ARR as u8;
    t[b':' as usize] = C_COLON as u8;
    t[b',' as usize] = C_COMMA as u8;
    t
};

/// Set in a [`STEP`] entry when the token needs more than a transition
/// (a bracket, a number or literal, or a grammar error).
const ATTENTION: u8 = 0x10;

/// `STEP[state][byte]`: the next state after a token starting with `byte`,
/// with [`ATTENTION`] set where the token needs more than that. One lookup
/// and one branch for the common tokens (quotes, colons, commas).
static STEP: [[u8; 256]; 16] = {
    let mut t = [[ERR | ATTENTION; 256]; 16];
    let mut state = 0;
    while state < 8 {
        let mut byte = 0;
        while byte < 256 {
            let class = CLASS[byte] as usize;
            let next = NEXT[state][class];
            t[state][byte] = if next == ERR || class >= C_OPEN_OBJ {
                next | ATTENTION
            } else {
                next
            };
            byte += 1;
        }
        state += 1;
    }
    t
};

/// The compact state of `state` in a container that is an array or not.
fn compact(state: State, in_array: bool) -> Option<u8> {
    Some(match state {
        State::Value if in_array => VALUE_ARR,
        State::Value => VALUE_OBJ,
        State::ArrayFirst => ARRAY_FIRST,
        State::ObjectFirst => OBJECT_FIRST,
        State::Key => KEY,
        State::Colon => COLON,
        State::AfterValue if in_array => AFTER_ARR,
        State::AfterValue => AFTER_OBJ,
        _ => return None,
    })
}

fn expand(state: u8) -> State {
    match state {
        VALUE_OBJ | VALUE_ARR => State::Value,
        ARRAY_FIRST => State::ArrayFirst,
        OBJECT_FIRST => State::ObjectFirst,
        KEY => State::Key,
        COLON => State::Colon,
        _ => State::AfterValue,
    }
}

/// The state between blocks.
#[derive(Clone, Copy)]
struct Between {
    state: u8,
    depth: u32,
    arrays: u128,
    /// All ones while inside a string at the start of the block.
    in_string: u64,
}

impl ModelExtractor {
    /// Checks the blocks of `buf` from `i` while they hold plain nested
    /// content. Returns where the byte-level machine goes on, and why.
    pub(super) fn blocks(&mut self, buf: &[u8], i: usize) -> (usize, Exit) {
        let in_array = self.arrays & 1 != 0;
        let Some(state) = compact(self.state, in_array) else {
            return (i, Exit::Anomaly);
        };
        let max_depth = self.config.get_max_depth() as u32;
        let mut at = Between {
            state,
            depth: self.depth,
            arrays: self.arrays,
            in_string: 0,
        };
        let rest = &buf[i..];
        let accepted = scan::for_each_block(
            rest,
            #[inline(always)]
            |block, masks| match check_block(block, masks, at, max_depth) {
                Some(next) => {
                    at = next;
                    true
                }
                None => false,
            },
        );
        let end = i + accepted * 64;
        let exit = if rest.len() - accepted * 64 >= 64 {
            Exit::Anomaly
        } else {
            Exit::Room
        };
        self.depth = at.depth;
        self.arrays = at.arrays;
        if at.in_string != 0 {
            // A string crosses the block boundary: it is a key when a colon is
            // expected after it, a value otherwise.
            self.kind = if at.state == COLON {
                StrKind::Key
            } else {
                StrKind::Value
            };
            self.capturing = false;
            self.state = State::Str(Str::Plain);
        } else {
            self.state = expand(at.state);
        }
        (end, exit)
    }
}

/// Checks one block; `None` when it needs the byte-level machine.
#[inline(always)]
fn check_block(block: &[u8; 64], m: scan::Masks, at: Between, max_depth: u32) -> Option<Between> {
    // Escaped bytes. A backslash in the last byte escapes into the next block.
    let mut escaped = 0u64;
    let mut bits = m.backslash;
    while bits != 0 {
        let p = bits.trailing_zeros();
        if p == 63 {
            return None;
        }
        bits &= bits - 1;
        escaped |= 1u64 << (p + 1);
        // An escaped backslash escapes nothing.
        bits &= !(1u64 << (p + 1));
    }
    let quotes = m.quote & !escaped;
    let inside = prefix_xor(quotes) ^ at.in_string;
    let outside = !inside;
    // Control and non-ASCII bytes: none inside strings (non-ASCII text
    // needs UTF-8 validation: the byte-level machine does it), only
    // whitespace outside. Backslashes: only inside strings.
    if m.ctrl_or_high & (inside | !m.ws) != 0 || m.backslash & outside != 0 {
        return None;
    }
    if escaped != 0 && !escapes_are_valid(block, escaped) {
        return None;
    }
    let scalar = outside & !(m.op | m.ws | m.quote);
    // A number or literal that reaches the block's end may go on in the next.
    if scalar >> 63 != 0 {
        return None;
    }
    let scalar_starts = scalar & !(scalar << 1);
    let mut events = (m.op & outside) | (quotes & inside) | scalar_starts;
    let Between {
        mut state,
        mut depth,
        mut arrays,
        ..
    } = at;
    while events != 0 {
        let p = events.trailing_zeros() as usize;
        events &= events - 1;
        let byte = block[p];
        let step = STEP[state as usize & 15][byte as usize];
        state = step & 0x0f;
        if step & ATTENTION == 0 {
            continue;
        }
        if state == ERR {
            return None;
        }
        match CLASS[byte as usize] as usize {
            C_OPEN_OBJ | C_OPEN_ARR => {
                if depth >= max_depth {
                    return None;
                }
                arrays = (arrays << 1) | (byte == b'[') as u128;
                depth += 1;
            }
            C_CLOSE_OBJ | C_CLOSE_ARR => {
                // Back at depth 1 the keys matter: the byte-level machine takes it.
                if depth <= 2 {
                    return None;
                }
                depth -= 1;
                arrays >>= 1;
                state = if arrays & 1 != 0 {
                    AFTER_ARR
                } else {
                    AFTER_OBJ
                };
            }
            _ => {
                let len = (!(scalar >> p)).trailing_zeros() as usize;
                if !valid_scalar(&block[p..p + len]) {
                    return None;
                }
            }
        }
    }
    let in_string = if inside >> 63 != 0 { u64::MAX } else { 0 };
    Some(Between {
        state,
        depth,
        arrays,
        in_string,
    })
}

/// Bit `i` is the parity of the set bits at positions `0..=i`.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Every escape lies in the block and is valid, surrogates paired.
fn escapes_are_valid(block: &[u8; 64], mut escaped: u64) -> bool {
    while escaped != 0 {
        let q = escaped.trailing_zeros() as usize;
        escaped &= escaped - 1;
        match block[q] {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
            b'u' => {
                let Some(value) = hex4(block, q + 1) else {
                    return false;
                };
                if (0xd800..0xdc00).contains(&value) {
                    // The trailing surrogate must follow, inside the block.
                    if q + 11 > 64 || block[q + 5] != b'\\' || block[q + 6] != b'u' {
                        return false;
                    }
                    match hex4(block, q + 7) {
                        Some(low) if (0xdc00..0xe000).contains(&low) => {}
                        _ => return false,
                    }
                    // The trailing half's `u` is not a escape of its own.
                    escaped &= !(1u64 << (q + 6));
                } else if (0xdc00..0xe000).contains(&value) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// The four hex digits at `block[at..at + 4]`, if they lie in the block.
fn hex4(block: &[u8; 64], at: usize) -> Option<u16> {
    let digits = block.get(at..at + 4)?;
    let mut value = 0u16;
    for &d in digits {
        value = (value << 4) | super::hex(d)?;
    }
    Some(value)
}

/// Whether `token` is a JSON number or literal.
fn valid_scalar(token: &[u8]) -> bool {
    match token {
        b"true" | b"false" | b"null" => return true,
        _ => {}
    }
    let mut rest = token.strip_prefix(b"-").unwrap_or(token);
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let int = digits(rest);
    if int == 0 || (int > 1 && rest[0] == b'0') {
        return false;
    }
    rest = &rest[int..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = digits(frac);
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exp = exp
            .strip_prefix(b"+")
            .or_else(|| exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        let n = digits(exp);
        if n == 0 {
            return false;
        }
        rest = &exp[n..];
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        for ok in [
            "0", "-0", "1", "-12", "0.5", "1e5", "1E+5", "1.5e-07", "true", "false", "null",
        ] {
            assert!(valid_scalar(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "tru", "nul", "0x1", "1.2.3", "--1",
        ] {
            assert!(!valid_scalar(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn prefix_xor_marks_string_interiors() {
        let quotes = 0b1000_0100u64;
        assert_eq!(prefix_xor(quotes), 0b0111_1100);
    }
}
