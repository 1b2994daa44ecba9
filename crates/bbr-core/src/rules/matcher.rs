//! The compiled matcher: exact → longest prefix → glob → regex.

use regex::RegexSet;

/// Longest-prefix lookup in `O(log n + d)`, where `d` is the number of
/// configured prefixes that are themselves prefixes of one another (small),
/// without a trie's per-byte nodes.
///
/// The prefixes are sorted; each remembers the longest other prefix that is
/// a prefix of it (its parent). For a model `m`, let `c` be the greatest
/// prefix `<= m`. Every configured prefix `p` of `m` satisfies
/// `p <= c <= m`, so `c` starts with `p`: the answer is on `c`'s parent
/// chain, and it is the first entry on it no longer than the common prefix
/// of `c` and `m`.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    keys: Vec<Box<str>>,
    rules: Vec<u32>,
    parents: Vec<Option<u32>>,
}

impl PrefixIndex {
    /// Builds the index from distinct, non-empty `(prefix, rule)` pairs.
    pub(crate) fn new(mut entries: Vec<(Box<str>, u32)>) -> PrefixIndex {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut parents = Vec::with_capacity(entries.len());
        // The chain of entries that are prefixes of the current one.
        let mut stack: Vec<u32> = Vec::new();
        for (i, (key, _)) in entries.iter().enumerate() {
            while let Some(&top) = stack.last() {
                if key.starts_with(&*entries[top as usize].0) {
                    break;
                }
                stack.pop();
            }
            parents.push(stack.last().copied());
            stack.push(i as u32);
        }
        let (keys, rules) = entries.into_iter().unzip();
        PrefixIndex {
            keys,
            rules,
            parents,
        }
    }

    /// The rule of the longest prefix of `model`, if any.
    pub(crate) fn longest(&self, model: &str) -> Option<u32> {
        // Index of the greatest key <= model.
        let after = self.keys.partition_point(|k| &**k <= model);
        let mut at = after.checked_sub(1)?;
        let common = common_prefix_len(&self.keys[at], model);
        loop {
            if self.keys[at].len() <= common {
                return Some(self.rules[at]);
            }
            at = self.parents[at]? as usize;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Rules matched in file order by a `RegexSet`: the lowest matching index wins.
#[derive(Debug)]
pub(crate) struct PatternSet {
    set: RegexSet,
    rules: Vec<u32>,
}

impl PatternSet {
    pub(crate) fn new(patterns: Vec<(String, u32)>) -> Result<PatternSet, regex::Error> {
        let (patterns, rules): (Vec<String>, Vec<u32>) = patterns.into_iter().unzip();
        let set = regex::RegexSetBuilder::new(&patterns)
            .size_limit(256 << 20)
            .dfa_size_limit(64 << 20)
            .build()?;
        Ok(PatternSet { set, rules })
    }

    pub(crate) fn first(&self, model: &str) -> Option<u32> {
        if self.rules.is_empty() {
            return None;
        }
        let first = self.set.matches(model).into_iter().next()?;
        Some(self.rules[first])
    }

    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }
}

/// Which kind of match selected a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatchKind {
    Exact,
    Prefix,
    Glob,
    Regex,
}

/// Every match of a table, by kind, in precedence order.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    pub(crate) exact: super::ModelMap<u32>,
    pub(crate) prefix: PrefixIndex,
    pub(crate) glob: Option<PatternSet>,
    pub(crate) regex: Option<PatternSet>,
}

impl Matcher {
    /// The index of the rule `model` selects, and how.
    pub(crate) fn find(&self, model: &str) -> Option<(u32, MatchKind)> {
        if let Some(&rule) = self.exact.get(model) {
            return Some((rule, MatchKind::Exact));
        }
        if let Some(rule) = self.prefix.longest(model) {
            return Some((rule, MatchKind::Prefix));
        }
        if let Some(rule) = self.glob.as_ref().and_then(|g| g.first(model)) {
            return Some((rule, MatchKind::Glob));
        }
        if let Some(rule) = self.regex.as_ref().and_then(|r| r.first(model)) {
            return Some((rule, MatchKind::Regex));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(prefixes: &[&str]) -> PrefixIndex {
        PrefixIndex::new(
            prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| (Box::from(*p), i as u32))
                .collect(),
        )
    }

    /// The obvious linear scan the index must agree with.
    fn naive(prefixes: &[&str], model: &str) -> Option<u32> {
        prefixes
            .iter()
            .enumerate()
            .filter(|(_, p)| model.starts_with(**p))
            .max_by_key(|(_, p)| p.len())
            .map(|(i, _)| i as u32)
    }

    #[test]
    fn longest_prefix_agrees_with_a_linear_scan() {
        let prefixes = [
            "a",
            "ab",
            "abc-",
            "abd",
            "b",
            "llama-",
            "llama-3",
            "llama-3.1-",
            "m",
            "ma",
            "mb",
            "z",
        ];
        let idx = index(&prefixes);
        let models = [
            "",
            "a",
            "aa",
            "ab",
            "abc",
            "abc-",
            "abc-x",
            "abd",
            "abe",
            "ac",
            "b",
            "bz",
            "c",
            "llama",
            "llama-",
            "llama-2",
            "llama-3",
            "llama-3.0",
            "llama-3.1-8b",
            "m",
            "mab",
            "mbx",
            "mc",
            "y",
            "z",
            "zz",
            "\u{10ffff}",
        ];
        for model in models {
            assert_eq!(idx.longest(model), naive(&prefixes, model), "{model:?}");
        }
    }

    #[test]
    fn deep_chains_and_siblings() {
        let prefixes = ["q", "qw", "qwe", "qwer", "qwerty", "qwes", "qx"];
        let idx = index(&prefixes);
        for model in [
            "qwert", "qwerz", "qwesa", "qweq", "qwz", "qxa", "qa", "qwerty!",
        ] {
            assert_eq!(idx.longest(model), naive(&prefixes, model), "{model:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn longest_prefix_agrees_with_a_linear_scan_on_random_sets(
            prefixes in proptest::collection::btree_set("[ab.-]{1,5}", 0..40),
            models in proptest::collection::vec("[ab.-]{0,7}", 1..40),
        ) {
            let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            let idx = index(&prefixes);
            for model in &models {
                proptest::prop_assert_eq!(idx.longest(model), naive(&prefixes, model), "{:?}", model);
            }
        }
    }

    #[test]
    fn empty_index_matches_nothing() {
        assert_eq!(index(&[]).longest("anything"), None);
    }
}
