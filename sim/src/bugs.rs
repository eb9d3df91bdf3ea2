//! The planted bugs: switched on only by the simulator's `--plant` flag and
//! its planted-bug tests, to prove the checkers catch real mistakes.

use std::fmt;
use std::str::FromStr;

/// A bug the simulator can plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// Followers (and deposed leaders) answer `validate` from their own,
    /// possibly stale, state.
    StaleRead,
    /// The wait long-poll never reports a grant (a lost wake-up).
    LostWakeup,
    /// `steal` answers with the old holder's token instead of a new one.
    StealKeepsToken,
    /// Replicas apply entries at their own clock instead of the leader's stamp.
    LocalClockApply,
    /// The log acknowledges appends before they are fsynced.
    AckBeforeFsync,
    /// A queued acquire jumps ahead of the waiters already queued.
    NewestWaiterFirst,
}

impl Bug {
    pub const ALL: [Bug; 6] = [
        Bug::StaleRead,
        Bug::LostWakeup,
        Bug::StealKeepsToken,
        Bug::LocalClockApply,
        Bug::AckBeforeFsync,
        Bug::NewestWaiterFirst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleRead => "stale-read",
            Bug::LostWakeup => "lost-wakeup",
            Bug::StealKeepsToken => "steal-keeps-token",
            Bug::LocalClockApply => "local-clock-apply",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::NewestWaiterFirst => "newest-waiter-first",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown `--plant` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `--plant` value {0:?}: expected one of stale-read, lost-wakeup, steal-keeps-token, local-clock-apply, ack-before-fsync, newest-waiter-first")]
pub struct UnknownBug(pub String);

impl FromStr for Bug {
    type Err = UnknownBug;

    fn from_str(s: &str) -> Result<Bug, UnknownBug> {
        Bug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBug(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for b in Bug::ALL {
            assert_eq!(b.name().parse::<Bug>(), Ok(b));
        }
        let e = "nope".parse::<Bug>().unwrap_err().to_string();
        assert!(e.contains("--plant") && e.contains("stale-read"), "{e}");
    }
}
