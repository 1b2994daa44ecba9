//! The process's file-descriptor limit, raised at start, and the
//! connection limits derived from it.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The descriptor limit (`RLIMIT_NOFILE`) as a server found and left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit found at start.
    pub was: u64,
    /// The soft limit now in force (the hard limit, when it could be raised).
    pub soft: u64,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// What a soft limit reported as unlimited is taken to be: more than any
/// listener needs.
const UNLIMITED: u64 = 1 << 20;

/// The soft `RLIMIT_NOFILE` in force.
pub fn descriptor_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(UNLIMITED)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (container runtimes
/// often start processes at 1 024 soft with a far higher hard limit) and
/// says what it found. Failing to raise it is not an error: the limits
/// derived from it follow whatever is in force.
pub fn raise_descriptor_limit() -> DescriptorLimit {
    let found = getrlimit(Resource::Nofile);
    let was = found.current.unwrap_or(UNLIMITED);
    let hard = found.maximum;
    let wanted = hard.unwrap_or(UNLIMITED);
    if wanted > was {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: found.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return DescriptorLimit {
                was,
                soft: wanted,
                hard,
            };
        }
    }
    DescriptorLimit {
        was,
        soft: was,
        hard,
    }
}

/// The connections a listener may hold when `reserved` descriptors are
/// kept for everything else (other listeners, upstream connections, files)
/// and each connection takes `per_connection` descriptors (2 for a proxy
/// that opens one upstream connection for each client connection). At
/// least 1.
pub fn connection_budget(soft_limit: u64, reserved: u64, per_connection: u64) -> usize {
    let left = soft_limit.saturating_sub(reserved) / per_connection.max(1);
    usize::try_from(left).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_what_is_left_per_connection() {
        assert_eq!(connection_budget(1024, 192, 1), 832);
        assert_eq!(connection_budget(1024, 128, 2), 448);
        assert_eq!(connection_budget(100, 192, 1), 1);
        assert_eq!(connection_budget(1024, 0, 0), 1024);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_descriptor_limit();
        assert!(limit.soft >= limit.was);
        if let Some(hard) = limit.hard {
            assert_eq!(limit.soft, hard);
        }
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current.unwrap_or(UNLIMITED), limit.soft);
    }
}
