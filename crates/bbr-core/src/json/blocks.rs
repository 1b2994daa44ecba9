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
    /// The returned position lies inside a string the block path could not
    /// finish (it crosses the chunk's end, or holds an escape, a control or
    /// a non-ASCII byte): the byte-level machine goes on from there, and the
    /// block path may take over again after the string.
    LongString,
}

// The grammar between tokens. Commas and colons are not tokens here: each
// token carries whether a comma or a colon stands before it (found for the
// whole block at once, see `check_block`), so the serial chain of table
// lookups, the block path's critical path, takes only strings, brackets,
// numbers and literals. The states are split by container type so that a
// step needs no look at the nesting stack.
/// After `{`: a key or `}`.
const OBJECT_FIRST: u8 = 0;
/// After `,` in an object, the comma already consumed: a key.
const KEY_READY: u8 = 1;
/// After a key: a value behind a colon.
const KEY_DONE: u8 = 2;
/// After a member's value: `}`, or a key behind a comma.
const AFTER_OBJ: u8 = 3;
/// After the colon, already consumed: a value.
const VALUE_OBJ_READY: u8 = 4;
/// After `[`: a value or `]`.
const ARRAY_FIRST: u8 = 5;
/// After an element: `]`, or a value behind a comma.
const AFTER_ARR: u8 = 6;
/// After `,` in an array, already consumed: a value.
const VALUE_ARR_READY: u8 = 7;

// Token classes, and the two flags that make up a column of `STEP`.
use scan::token::{
    AFTER_COLON, AFTER_COMMA, CLOSE_ARR as C_CLOSE_ARR, CLOSE_OBJ as C_CLOSE_OBJ,
    OPEN_ARR as C_OPEN_ARR, OPEN_OBJ as C_OPEN_OBJ, OTHER as C_SCALAR, QUOTE as C_QUOTE,
};

// A `STEP` entry: the next state in bits 5..8, as the offset of its row
// (state << 5, so that the next lookup needs no arithmetic: the serial chain
// of lookups is the block path's critical path), and in bits 0..5 what else
// the token needs: nothing for most tokens.
const K_PLAIN: u8 = 0;
const K_OPEN_OBJ: u8 = 1;
const K_OPEN_ARR: u8 = 2;
const K_CLOSE: u8 = 3;
const K_ERR: u8 = 4;
const KIND: u8 = 0x1f;

const fn entry(state: u8, kind: u8) -> u8 {
    (state << 5) | kind
}

/// Where the row of `state` starts in [`STEP`].
const fn row(state: u8) -> usize {
    (state as usize) << 5
}

/// The entry after a value that starts with a token of `class`, in an
/// object (`AFTER_OBJ`) or an array (`AFTER_ARR`).
const fn value(class: u8, after: u8) -> u8 {
    match class {
        C_QUOTE | C_SCALAR => entry(after, K_PLAIN),
        C_OPEN_OBJ => entry(OBJECT_FIRST, K_OPEN_OBJ),
        C_OPEN_ARR => entry(ARRAY_FIRST, K_OPEN_ARR),
        _ => K_ERR,
    }
}

/// `STEP[(state << 5) + column]`, column = class | flags, for the eight
/// states: 256 entries, so that a `u8` index needs no bounds check.
static STEP: [u8; 256] = {
    let e = K_ERR;
    let mut t = [e; 256];
    let mut c = 0;
    while c < 8 {
        let (plain, comma, colon) = (c, c | AFTER_COMMA as usize, c | AFTER_COLON as usize);
        let class = c as u8;
        let close = K_CLOSE;
        t[row(OBJECT_FIRST) + plain] = match class {
            C_QUOTE => entry(KEY_DONE, K_PLAIN),
            C_CLOSE_OBJ => close,
            _ => e,
        };
        t[row(KEY_READY) + plain] = if class == C_QUOTE {
            entry(KEY_DONE, K_PLAIN)
        } else {
            e
        };
        t[row(KEY_DONE) + colon] = value(class, AFTER_OBJ);
        t[row(VALUE_OBJ_READY) + plain] = value(class, AFTER_OBJ);
        t[row(AFTER_OBJ) + plain] = if class == C_CLOSE_OBJ { close } else { e };
        t[row(AFTER_OBJ) + comma] = if class == C_QUOTE {
            entry(KEY_DONE, K_PLAIN)
        } else {
            e
        };
        t[row(ARRAY_FIRST) + plain] = if class == C_CLOSE_ARR {
            close
        } else {
            value(class, AFTER_ARR)
        };
        t[row(VALUE_ARR_READY) + plain] = value(class, AFTER_ARR);
        t[row(AFTER_ARR) + plain] = if class == C_CLOSE_ARR { close } else { e };
        t[row(AFTER_ARR) + comma] = value(class, AFTER_ARR);
        c += 1;
    }
    t
};

/// The compact state of `state` in a container that is an array or not.
fn compact(state: State, in_array: bool) -> Option<u8> {
    Some(match state {
        State::Value if in_array => VALUE_ARR_READY,
        State::Value => VALUE_OBJ_READY,
        State::ArrayFirst => ARRAY_FIRST,
        State::ObjectFirst => OBJECT_FIRST,
        State::Key => KEY_READY,
        State::Colon => KEY_DONE,
        State::AfterValue if in_array => AFTER_ARR,
        State::AfterValue => AFTER_OBJ,
        _ => return None,
    })
}

/// The byte-level state of a compact state, with a comma or colon pending
/// (seen, but the token after it lies past the block).
fn expand(state: u8, comma: bool, colon: bool) -> State {
    match state {
        OBJECT_FIRST => State::ObjectFirst,
        KEY_READY => State::Key,
        KEY_DONE if colon => State::Value,
        KEY_DONE => State::Colon,
        AFTER_OBJ if comma => State::Key,
        AFTER_ARR if comma => State::Value,
        AFTER_OBJ | AFTER_ARR => State::AfterValue,
        ARRAY_FIRST => State::ArrayFirst,
        _ => State::Value,
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
    /// A comma or colon whose token lies in a later block.
    comma: u64,
    colon: u64,
}

impl ModelExtractor {
    /// Checks the blocks of `buf` from `i` while they hold plain nested
    /// content. Returns where the byte-level machine goes on, and why.
    pub(super) fn blocks(&mut self, buf: &[u8], i: usize) -> (usize, Exit) {
        let Some(state) = compact(self.state, self.arrays & 1 != 0) else {
            return (i, Exit::Anomaly);
        };
        let max_depth = self.p.config.max_depth() as u32;
        let mut at = Between {
            state,
            depth: self.depth,
            arrays: self.arrays,
            in_string: 0,
            comma: 0,
            colon: 0,
        };
        // Blocks from `i`; a string longer than a block is skipped by one
        // search for its end, and the blocks go on from its closing quote.
        let rest = &buf[i..];
        // Where the byte-level machine takes a long string over, if it does.
        let mut string_from = None;
        let end = scan::for_each_block(
            rest,
            #[inline(always)]
            |block| {
                if at.in_string != 0 && block.masks.quote | block.masks.backslash == 0 {
                    // A block wholly inside a string: plain text up to an
                    // unescaped quote, and the blocks go on from that quote.
                    // A backslash, a control or a non-ASCII byte (or the
                    // chunk's end) stops the search first: the byte-level
                    // machine takes the string from there.
                    let stop = block.offset + string_end(&rest[block.offset..]);
                    if rest.get(stop) == Some(&b'"') {
                        return scan::Next::Jump(stop);
                    }
                    string_from = Some(stop);
                    return scan::Next::Stop;
                }
                match check_block(block, at, max_depth) {
                    Some(next) => {
                        at = next;
                        scan::Next::Accept
                    }
                    None => scan::Next::Stop,
                }
            },
        );
        let (end, exit) = match string_from {
            Some(stop) => (i + stop, Exit::LongString),
            None if rest.len() - end >= 64 => (i + end, Exit::Anomaly),
            None => (i + end, Exit::Room),
        };
        self.depth = at.depth;
        self.arrays = at.arrays;
        if at.in_string != 0 {
            // A string crosses the block boundary: a key when a value is
            // expected after it, a value otherwise.
            self.kind = if at.state == KEY_DONE {
                StrKind::Key
            } else {
                StrKind::Value
            };
            self.capturing = false;
            self.spilled = false;
            self.state = State::Str(Str::Plain);
        } else {
            self.state = expand(at.state, at.comma != 0, at.colon != 0);
        }
        (end, exit)
    }
}

/// Where the plain text of a long string ends (see
/// [`scan::find_string_special`]); kept out of the block loop, which it
/// would otherwise crowd.
#[inline(never)]
fn string_end(s: &[u8]) -> usize {
    scan::find_string_special(s)
}

/// Where the first non-whitespace byte after each separator lies: bit `p`
/// of the result is set when byte `p` follows one. Adding the separators,
/// moved one bit up, to the whitespace mask carries each through the
/// whitespace run after it. Also returns whether one lands past the block.
#[inline(always)]
fn landings(separators: u64, carry_in: u64, ws: u64) -> (u64, u64) {
    let (sum, over) = ((separators << 1) | carry_in).overflowing_add(ws);
    let carry_out = (over as u64) | (separators >> 63);
    (sum & !ws, carry_out)
}

/// Checks one block; `None` when it needs the byte-level machine.
#[inline(always)]
fn check_block(b: &scan::Block<'_>, at: Between, max_depth: u32) -> Option<Between> {
    let (block, m) = (b.bytes, b.masks);
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
    let ws = m.ws & outside;
    let commas = m.comma & outside;
    let colons = m.colon & outside;
    let (after_comma, comma_out) = landings(commas, at.comma, ws);
    let (after_colon, colon_out) = landings(colons, at.colon, ws);
    // A separator must be followed by a token, not by another separator.
    if (after_comma | after_colon) & (commas | colons) != 0 {
        return None;
    }
    let scalar = outside & !(m.op | m.ws | m.quote);
    // A number or literal that reaches the block's end may go on in the next.
    if scalar >> 63 != 0 {
        return None;
    }
    let scalar_starts = scalar & !(scalar << 1);
    // Numbers and literals are checked apart from the grammar's chain.
    let mut rest = scalar_starts;
    while rest != 0 {
        let p = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        let len = (!(scalar >> p)).trailing_zeros() as usize;
        let token = &block[p..p + len];
        if !(small_int(token) || valid_scalar(token)) {
            return None;
        }
    }
    let mut events = (m.op & outside & !(commas | colons)) | (quotes & inside) | scalar_starts;
    let columns = b.columns(events, after_comma, after_colon);
    let Between {
        state,
        mut depth,
        mut arrays,
        ..
    } = at;
    // The state as its row offset in STEP.
    let mut row = state << 5;
    while events != 0 {
        let p = events.trailing_zeros() as usize;
        events &= events - 1;
        let column = columns[p & 63];
        let step = STEP[row.wrapping_add(column) as usize];
        if step & KIND == K_PLAIN {
            row = step;
            continue;
        }
        match step & KIND {
            K_OPEN_OBJ | K_OPEN_ARR => {
                if depth >= max_depth {
                    return None;
                }
                arrays = (arrays << 1) | (step & KIND == K_OPEN_ARR) as u128;
                depth += 1;
                row = step & !KIND;
            }
            K_CLOSE => {
                // Back at depth 1 the keys matter: the byte-level machine takes it.
                if depth <= 2 {
                    return None;
                }
                depth -= 1;
                arrays >>= 1;
                row = if arrays & 1 != 0 {
                    AFTER_ARR
                } else {
                    AFTER_OBJ
                } << 5;
            }
            _ => return None,
        }
    }
    let state = row >> 5;
    // A pending separator must fit the state it leaves.
    if (colon_out != 0 && state != KEY_DONE)
        || (comma_out != 0 && state != AFTER_OBJ && state != AFTER_ARR)
    {
        return None;
    }
    let in_string = if inside >> 63 != 0 { u64::MAX } else { 0 };
    Some(Between {
        state,
        depth,
        arrays,
        in_string,
        comma: comma_out,
        colon: colon_out,
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

/// Whether `token` is a short unsigned integer (`7`, `42`, `1000`): the
/// common number, checked inline.
#[inline(always)]
fn small_int(token: &[u8]) -> bool {
    token.len() <= 8
        && (token.len() == 1 || token[0] != b'0')
        && token.iter().all(u8::is_ascii_digit)
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
        for ok in ["7", "42", "10000000"] {
            assert!(small_int(ok.as_bytes()), "{ok}");
        }
        for not in ["07", "-1", "1.5", "123456789", "1e5", "true"] {
            assert!(!small_int(not.as_bytes()), "{not}");
        }
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
