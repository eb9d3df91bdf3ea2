//! Fail-over grace for sessions (Chubby's "grace period").
//!
//! When a replicated driver changes leader, clients could not reach anyone
//! for a while and so could not send keep-alives. Without a grace, the first
//! command the new leader stamps would expire every session whose TTL ran out
//! during the gap, and with it every hold, all at once. [`Table::grant_grace`]
//! pushes each session's expiry to at least `now + its TTL` — as if every
//! client had sent a keep-alive at `now` — *before* any expiry due at `now` is
//! processed. Leases (lock TTLs) and wait deadlines are not extended: a lease
//! is the holder's promise to finish or extend in time, and a wait deadline is
//! the caller's own limit.

use crate::table::{Due, Table};
use crate::types::Millis;

impl Table {
    /// Extends every session's expiry to at least `now + ttl` (state time is
    /// clamped as everywhere: a `now` below it counts as it). Processes no
    /// expiry and leaves state time unchanged, so a session whose TTL passed
    /// during a leaderless gap is kept. Returns how many sessions were extended.
    pub fn grant_grace(&mut self, now: Millis) -> u64 {
        let now = crate::types::clamp_now(now, self.now);
        let mut extended = 0;
        for (id, session) in self.sessions.iter_mut() {
            let until = now.saturating_add(session.ttl_ms);
            if until > session.expires_at {
                self.deadlines
                    .remove(&(session.expires_at, Due::Session(*id)));
                session.expires_at = until;
                self.deadlines.insert((until, Due::Session(*id)));
                extended += 1;
            }
        }
        extended
    }
}

#[cfg(test)]
mod tests {
    use crate::{Command, Event, LockKey, Mode, Response, Table};

    #[test]
    fn grace_keeps_a_session_whose_ttl_passed_during_the_gap() {
        let mut t = Table::default();
        let mut ev = Vec::new();
        let key = LockKey::new("ns", "k").unwrap();
        let s = t.open_session(0, 1_000, &mut ev).unwrap();
        let acquire = Command::Acquire {
            key: key.clone(),
            session: s,
            mode: Mode::Exclusive,
            timeout_ms: None,
        };
        let Ok(Response::Granted(g)) = t.apply(10, &acquire, &mut ev) else {
            panic!("not granted")
        };
        // The new leader takes office at 5_000: the session's TTL ended at 1_000.
        assert_eq!(t.grant_grace(5_000), 1);
        assert_eq!(t.now(), 10, "grace does not move state time");
        t.tick(5_500, &mut ev);
        assert!(ev.is_empty(), "no expiry within the grace: {ev:?}");
        assert!(t.validate(5_500, &key, g.token).is_ok());
        assert_eq!(t.describe_session(s).unwrap().expires_at, 6_000);
        // Without a keep-alive the session ends one TTL after the grace began.
        t.tick(6_000, &mut ev);
        assert!(matches!(&ev[..], [Event::SessionExpired { session }, ..] if *session == s));
        t.check_invariants().unwrap();
    }

    #[test]
    fn grace_never_shortens_a_session_and_clamps_time() {
        let mut t = Table::default();
        let mut ev = Vec::new();
        let s = t.open_session(100, 10_000, &mut ev).unwrap();
        // A leader with a slow clock (50 < state time 100) extends nothing.
        assert_eq!(t.grant_grace(50), 0);
        assert_eq!(t.describe_session(s).unwrap().expires_at, 10_100);
        assert_eq!(t.grant_grace(200), 1);
        assert_eq!(t.describe_session(s).unwrap().expires_at, 10_200);
        t.check_invariants().unwrap();
        // The snapshot round-trips the extended expiry.
        let back = Table::restore_bytes(&t.snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.describe_session(s).unwrap().expires_at, 10_200);
    }
}
