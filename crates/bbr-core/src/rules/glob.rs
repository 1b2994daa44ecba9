//! Shell-style globs over model names, translated to regular expressions so
//! that every glob of a table is matched in one pass of a `RegexSet`.
//!
//! Syntax: `*` any run of characters (including `/`: model names such as
//! `meta-llama/*` are one string, not a path), `?` one character,
//! `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) a character class, `\x` the
//! character `x` literally. The whole model must match.

use std::fmt::Write;

/// The anchored regular expression equivalent to `glob`, or why the glob is invalid.
pub(crate) fn to_regex(glob: &str) -> Result<String, String> {
    let mut out = String::with_capacity(glob.len() * 2 + 8);
    out.push_str("^(?s:");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                // `**` means the same as `*`.
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                out.push_str(".*");
            }
            '?' => out.push('.'),
            '\\' => match chars.next() {
                Some(escaped) => push_literal(&mut out, escaped),
                None => return Err("glob ends with a lone `\\`".to_owned()),
            },
            '[' => {
                out.push('[');
                if matches!(chars.peek(), Some('!' | '^')) {
                    chars.next();
                    out.push('^');
                }
                let mut members = 0usize;
                let mut closed = false;
                while let Some(c) = chars.next() {
                    // A `]` right after the opening bracket is a member.
                    if c == ']' && members > 0 {
                        closed = true;
                        break;
                    }
                    let c = if c == '\\' {
                        chars
                            .next()
                            .ok_or_else(|| "glob ends with a lone `\\`".to_owned())?
                    } else {
                        c
                    };
                    push_class_member(&mut out, c);
                    members += 1;
                    // A range `a-z`, unless the `-` is the last member.
                    if chars.peek() == Some(&'-') {
                        let mut ahead = chars.clone();
                        ahead.next();
                        match ahead.next() {
                            Some(']') | None => {}
                            Some(mut end) => {
                                chars.next();
                                chars.next();
                                if end == '\\' {
                                    end = chars
                                        .next()
                                        .ok_or_else(|| "glob ends with a lone `\\`".to_owned())?;
                                }
                                if end < c {
                                    return Err(format!("range `{c}-{end}` is reversed"));
                                }
                                out.push('-');
                                push_class_member(&mut out, end);
                            }
                        }
                    }
                }
                if !closed {
                    return Err("unclosed `[` in glob".to_owned());
                }
                out.push(']');
            }
            c => push_literal(&mut out, c),
        }
    }
    out.push_str(")$");
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// Inside a class every member is written as a code point escape, so that
/// no character (`-`, `&`, `~`, `[`, …) can take a class-syntax meaning.
fn push_class_member(out: &mut String, c: char) {
    let _ = write!(out, "\\x{{{:x}}}", u32::from(c));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(glob: &str, text: &str) -> bool {
        regex::Regex::new(&to_regex(glob).unwrap())
            .unwrap()
            .is_match(text)
    }

    #[test]
    fn stars_questions_and_classes() {
        assert!(matches("llama-*", "llama-3-8b"));
        assert!(matches("meta-llama/*", "meta-llama/Llama-3.1-8B"));
        assert!(!matches("llama-*", "my-llama-3"));
        assert!(matches("*-lora", "sql-lora"));
        assert!(matches("gpt-?", "gpt-4"));
        assert!(!matches("gpt-?", "gpt-4o"));
        assert!(matches("v[0-9]", "v7"));
        assert!(!matches("v[!0-9]", "v7"));
        assert!(matches("v[!0-9]", "vx"));
        assert!(matches("a[]]b", "a]b"));
        assert!(matches("a[-x]b", "a-b"));
        assert!(matches("a[x-]b", "a-b"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "axb"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axxb"));
        assert!(matches("[&~]", "~"));
    }

    /// The textbook recursive matcher for `*`, `?` and literals.
    fn naive(glob: &[char], text: &[char]) -> bool {
        match glob.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| naive(rest, &text[i..])),
            Some(('?', rest)) => !text.is_empty() && naive(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && naive(rest, &text[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn stars_and_questions_agree_with_a_naive_matcher(
            glob in "[ab*?.()+|-]{0,8}",
            texts in proptest::collection::vec("[ab.()+|-]{0,10}", 1..20),
        ) {
            let regex = regex::Regex::new(&to_regex(&glob).unwrap()).unwrap();
            let pattern: Vec<char> = glob.chars().collect();
            for text in &texts {
                let chars: Vec<char> = text.chars().collect();
                proptest::prop_assert_eq!(regex.is_match(text), naive(&pattern, &chars), "{:?} {:?}", glob, text);
            }
        }
    }

    #[test]
    fn invalid_globs_are_refused() {
        assert!(to_regex("a[bc").is_err());
        assert!(to_regex("a\\").is_err());
        assert!(to_regex("[z-a]").is_err());
        assert!(to_regex("[]").is_err());
    }
}
