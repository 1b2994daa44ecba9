//! Sets of first bytes of header names, shared by the decider and the rule
//! table (which lists the headers it sets).

/// A set of bytes: the first bytes of the header names a check looks for,
/// so that most headers (`host`, `content-type` …) are passed over after
/// one lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FirstBytes([u64; 4]);

impl FirstBytes {
    /// The (lowercase) first bytes of `names`.
    pub(crate) fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> FirstBytes {
        let mut set = FirstBytes::default();
        for name in names {
            if let Some(&b) = name.as_bytes().first() {
                let b = b.to_ascii_lowercase();
                set.0[usize::from(b >> 6)] |= 1 << (b & 63);
            }
        }
        set
    }

    /// Whether `b` is in the set.
    #[inline]
    pub(crate) fn has(self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}
