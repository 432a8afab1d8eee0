//! The state machine of an idempotency key, with no PostgreSQL in it.
//!
//! Given what is stored for a key (if anything), what the caller asks and the clock, these
//! functions say what happens: the decision table of `idem_begin` (README, "idem_begin"), and
//! the guards that `idem_complete`, `idem_fail` and `idem_checkpoint` apply. The PostgreSQL shell
//! reads the record, asks here, and writes what it is told; it decides nothing itself.
//!
//! Times are PostgreSQL `timestamptz` values: microseconds since 2000-01-01 UTC.

use sha2::{Digest, Sha256};

/// Microseconds since 2000-01-01 UTC, PostgreSQL's `TimestampTz`.
pub type Micros = i64;

/// The stored state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    InProgress,
    Completed,
    Failed { retryable: bool },
}

impl State {
    /// The word the SQL API uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::InProgress => "in_progress",
            State::Completed => "completed",
            State::Failed { .. } => "failed",
        }
    }
}

/// What the decision needs to know about the record that exists for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing {
    pub state: State,
    pub fingerprint: [u8; 32],
    pub attempt: i32,
    /// The key's first use (for the message of a refusal).
    pub created_at: Micros,
    pub expires_at: Micros,
    /// When the current holder's lease runs out; meaningful only while `InProgress`.
    pub lease_expires_at: Option<Micros>,
    /// Whether the caller's role is a member of the role that created the record (the shell
    /// evaluates membership; superusers are members of every role).
    pub caller_is_owner: bool,
}

impl Existing {
    /// An expired record counts as none.
    pub fn is_live(&self, now: Micros) -> bool {
        now < self.expires_at
    }

    fn lease_ran_out(&self, now: Micros) -> bool {
        // A record without a lease cannot be held: treat it as run out so it is never stuck.
        self.lease_expires_at.is_none_or(|at| now >= at)
    }
}

/// PostgreSQL's `END_TIMESTAMP`: the first instant (294277-01-01 00:00 UTC) that a
/// `timestamptz` cannot hold. Values between it and `i64::MAX` (`infinity`) are printed but
/// refused on input, so a record holding one could be dumped and never restored.
pub const END_TIMESTAMP: Micros = 9_223_371_331_200_000_000;

/// `now` plus a positive duration as a valid `timestamptz`: a sum at or past the last
/// representable instant becomes `infinity` (never), never an out-of-range value.
pub fn later(now: Micros, duration: Micros) -> Micros {
    match now.checked_add(duration) {
        Some(t) if t < END_TIMESTAMP => t,
        _ => Micros::MAX,
    }
}

/// An `idem_begin` request as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequest {
    pub fingerprint: [u8; 32],
    pub now: Micros,
    /// How long the key is remembered from its first use (positive).
    pub ttl: Micros,
    /// How long a committed in-progress claim holds (positive).
    pub lease: Micros,
    /// Whether this request holds the key's lock, i.e. no other transaction is working on the
    /// key right now. Without it, nothing that needs a write can be decided.
    pub holds_lock: bool,
}

/// Why the caller now holds the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execute {
    /// No live record: a new claim, attempt 1.
    Claim {
        expires_at: Micros,
        lease_expires_at: Micros,
    },
    /// A committed claim whose lease ran out, or a retryable failure: the next attempt, with
    /// a new lease; the recovery point of the earlier attempt is kept.
    Resume {
        attempt: i32,
        lease_expires_at: Micros,
    },
}

/// The outcome of `idem_begin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    Execute(Execute),
    /// A final outcome is stored: return it.
    Replay,
    /// Another request holds the key.
    InProgress,
}

/// Why a request is refused outright, with what its message tells the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key is live and belongs to a role the caller is not a member of (42501).
    NotOwner,
    /// The key is live and was first used with a different command (IK001).
    CommandMismatch {
        first_used: Micros,
        stored: [u8; 32],
        given: [u8; 32],
    },
    /// complete, fail or checkpoint on a key that is not in progress (IK002).
    NotInProgress(Found),
    /// The attempt given is not the record's attempt: the lease was taken over (IK003).
    LeaseLost { given: i32, current: i32 },
}

/// What complete, fail or checkpoint found instead of an in-progress record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Absent,
    Expired,
    Completed,
    Failed,
}

/// The decision table of `idem_begin`.
///
/// Order matters and is part of the contract: an expired record counts as none; ownership is
/// checked before anything about the record is revealed; on a live record a different
/// fingerprint is refused whatever the state.
pub fn begin(existing: Option<&Existing>, req: &BeginRequest) -> Result<Begin, Refusal> {
    let live = existing.filter(|s| s.is_live(req.now));
    let Some(s) = live else {
        return Ok(if req.holds_lock {
            Begin::Execute(Execute::Claim {
                expires_at: later(req.now, req.ttl),
                lease_expires_at: later(req.now, req.lease),
            })
        } else {
            // Nothing committed is visible, but another transaction holds the key: its claim
            // is not committed yet.
            Begin::InProgress
        });
    };
    if !s.caller_is_owner {
        return Err(Refusal::NotOwner);
    }
    if s.fingerprint != req.fingerprint {
        return Err(Refusal::CommandMismatch {
            first_used: s.created_at,
            stored: s.fingerprint,
            given: req.fingerprint,
        });
    }
    let resume = || {
        Begin::Execute(Execute::Resume {
            attempt: s.attempt.saturating_add(1),
            lease_expires_at: later(req.now, req.lease),
        })
    };
    Ok(match s.state {
        State::Completed | State::Failed { retryable: false } => Begin::Replay,
        // Someone else is taking the key over or retrying it right now.
        _ if !req.holds_lock => Begin::InProgress,
        State::InProgress if s.lease_ran_out(req.now) => resume(),
        State::InProgress => Begin::InProgress,
        State::Failed { retryable: true } => resume(),
    })
}

/// The decision of [`begin`] when holding the key's lock could not change it: a live record's
/// final outcome (replay) or a refusal (another role's key, another command). None for
/// everything else (no live record, a record in progress, a retryable failure), which only
/// the lock's holder may decide.
///
/// What lets `idem_begin` answer a replay from a read made before it tries the lock: the
/// answer is the one it would give after the lock, whether it then got the lock or not.
pub fn settled(existing: Option<&Existing>, req: &BeginRequest) -> Option<Result<Begin, Refusal>> {
    let free = begin(
        existing,
        &BeginRequest {
            holds_lock: false,
            ..*req
        },
    );
    let held = begin(
        existing,
        &BeginRequest {
            holds_lock: true,
            ..*req
        },
    );
    match free {
        Ok(Begin::Replay) | Err(_) if free == held => Some(free),
        _ => None,
    }
}

/// The guard of `idem_complete`, `idem_fail` and `idem_checkpoint`: they act only on a live,
/// in-progress record of the caller's, and, given an attempt, only while it is the record's.
///
/// A stale holder whose attempt was superseded gets [`Refusal::LeaseLost`] even when the new
/// holder has already finished: what it needs to learn is that it was fenced off.
pub fn settle(
    existing: Option<&Existing>,
    now: Micros,
    attempt: Option<i32>,
) -> Result<(), Refusal> {
    let s = match existing {
        None => return Err(Refusal::NotInProgress(Found::Absent)),
        Some(s) if !s.is_live(now) => return Err(Refusal::NotInProgress(Found::Expired)),
        Some(s) => s,
    };
    if !s.caller_is_owner {
        return Err(Refusal::NotOwner);
    }
    if let Some(given) = attempt.filter(|a| *a != s.attempt) {
        return Err(Refusal::LeaseLost {
            given,
            current: s.attempt,
        });
    }
    match s.state {
        State::InProgress => Ok(()),
        State::Completed => Err(Refusal::NotInProgress(Found::Completed)),
        State::Failed { .. } => Err(Refusal::NotInProgress(Found::Failed)),
    }
}

/// The 64-bit lock identity of a key within its scope: SHA-256 over the scope's length, the
/// scope and the key, truncated. It is fixed by this definition (not by a library's hasher)
/// so that every version of the extension locks a key under the same identity, and the length
/// prefix keeps ("ab", "c") apart from ("a", "bc").
pub fn lock_id(scope: &[u8], key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update((scope.len() as u64).to_be_bytes());
    h.update(scope);
    h.update(key);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];
    const NOW: Micros = 1_000_000_000;
    const TTL: Micros = 86_400_000_000;
    const LEASE: Micros = 60_000_000;

    fn req(holds_lock: bool) -> BeginRequest {
        BeginRequest {
            fingerprint: FP,
            now: NOW,
            ttl: TTL,
            lease: LEASE,
            holds_lock,
        }
    }

    fn existing(state: State) -> Existing {
        Existing {
            state,
            fingerprint: FP,
            attempt: 3,
            created_at: NOW - 1,
            expires_at: NOW + 1,
            lease_expires_at: Some(NOW + 1),
            caller_is_owner: true,
        }
    }

    #[test]
    fn clamps_times_past_the_last_timestamptz_to_infinity() {
        // A ttl or lease that would land between END_TIMESTAMP and i64::MAX gives infinity,
        // not a value PostgreSQL prints but refuses to read back (a dump of it would not
        // restore).
        let huge = END_TIMESTAMP - NOW + 86_400_000_000;
        let r = BeginRequest {
            ttl: huge,
            lease: huge,
            ..req(true)
        };
        assert_eq!(
            begin(None, &r),
            Ok(Begin::Execute(Execute::Claim {
                expires_at: Micros::MAX,
                lease_expires_at: Micros::MAX
            }))
        );
        assert_eq!(later(NOW, Micros::MAX), Micros::MAX);
        assert_eq!(later(NOW, END_TIMESTAMP - NOW), Micros::MAX);
        assert_eq!(later(NOW, END_TIMESTAMP - NOW - 1), END_TIMESTAMP - 1);
        let s = Existing {
            lease_expires_at: Some(NOW - 1),
            ..existing(State::InProgress)
        };
        assert_eq!(
            begin(Some(&s), &r),
            Ok(Begin::Execute(Execute::Resume {
                attempt: 4,
                lease_expires_at: Micros::MAX
            }))
        );
    }

    #[test]
    fn claims_absent_key_with_attempt_one() {
        assert_eq!(
            begin(None, &req(true)),
            Ok(Begin::Execute(Execute::Claim {
                expires_at: NOW + TTL,
                lease_expires_at: NOW + LEASE
            }))
        );
    }

    #[test]
    fn treats_expired_record_as_none_whatever_its_command_owner_or_state() {
        for state in [
            State::InProgress,
            State::Completed,
            State::Failed { retryable: false },
        ] {
            let s = Existing {
                fingerprint: OTHER,
                caller_is_owner: false,
                expires_at: NOW,
                ..existing(state)
            };
            assert!(matches!(
                begin(Some(&s), &req(true)),
                Ok(Begin::Execute(Execute::Claim { .. }))
            ));
        }
    }

    #[test]
    fn answers_in_progress_for_uncommitted_claim_of_another_transaction() {
        assert_eq!(begin(None, &req(false)), Ok(Begin::InProgress));
    }

    #[test]
    fn answers_in_progress_while_committed_lease_holds() {
        let s = existing(State::InProgress);
        assert_eq!(begin(Some(&s), &req(true)), Ok(Begin::InProgress));
    }

    #[test]
    fn takes_over_when_lease_ran_out() {
        let s = Existing {
            lease_expires_at: Some(NOW),
            ..existing(State::InProgress)
        };
        assert_eq!(
            begin(Some(&s), &req(true)),
            Ok(Begin::Execute(Execute::Resume {
                attempt: 4,
                lease_expires_at: NOW + LEASE
            }))
        );
    }

    #[test]
    fn does_not_take_over_while_another_transaction_holds_the_key() {
        let s = Existing {
            lease_expires_at: Some(NOW),
            ..existing(State::InProgress)
        };
        assert_eq!(begin(Some(&s), &req(false)), Ok(Begin::InProgress));
        let f = existing(State::Failed { retryable: true });
        assert_eq!(begin(Some(&f), &req(false)), Ok(Begin::InProgress));
    }

    #[test]
    fn replays_completed_command() {
        for holds in [true, false] {
            assert_eq!(
                begin(Some(&existing(State::Completed)), &req(holds)),
                Ok(Begin::Replay)
            );
        }
    }

    #[test]
    fn retries_retryable_failure_as_next_attempt() {
        let s = existing(State::Failed { retryable: true });
        assert_eq!(
            begin(Some(&s), &req(true)),
            Ok(Begin::Execute(Execute::Resume {
                attempt: 4,
                lease_expires_at: NOW + LEASE
            }))
        );
    }

    #[test]
    fn replays_final_failure() {
        let s = existing(State::Failed { retryable: false });
        assert_eq!(begin(Some(&s), &req(true)), Ok(Begin::Replay));
    }

    #[test]
    fn rejects_same_key_with_other_command_in_every_state() {
        for state in [
            State::InProgress,
            State::Completed,
            State::Failed { retryable: true },
            State::Failed { retryable: false },
        ] {
            let s = Existing {
                fingerprint: OTHER,
                ..existing(state)
            };
            for holds in [true, false] {
                assert_eq!(
                    begin(Some(&s), &req(holds)),
                    Err(Refusal::CommandMismatch {
                        first_used: NOW - 1,
                        stored: OTHER,
                        given: FP
                    })
                );
            }
        }
    }

    #[test]
    fn refuses_other_role_before_revealing_the_command() {
        let s = Existing {
            fingerprint: OTHER,
            caller_is_owner: false,
            ..existing(State::Completed)
        };
        assert_eq!(begin(Some(&s), &req(true)), Err(Refusal::NotOwner));
    }

    #[test]
    fn settles_in_progress_record_with_or_without_attempt() {
        let s = existing(State::InProgress);
        assert_eq!(settle(Some(&s), NOW, None), Ok(()));
        assert_eq!(settle(Some(&s), NOW, Some(3)), Ok(()));
    }

    #[test]
    fn settles_after_own_lease_ran_out_when_nobody_took_over() {
        let s = Existing {
            lease_expires_at: Some(NOW - 1),
            ..existing(State::InProgress)
        };
        assert_eq!(settle(Some(&s), NOW, Some(3)), Ok(()));
    }

    #[test]
    fn refuses_to_settle_absent_expired_or_final_record() {
        assert_eq!(
            settle(None, NOW, None),
            Err(Refusal::NotInProgress(Found::Absent))
        );
        let expired = Existing {
            expires_at: NOW,
            ..existing(State::InProgress)
        };
        assert_eq!(
            settle(Some(&expired), NOW, None),
            Err(Refusal::NotInProgress(Found::Expired))
        );
        for (state, found) in [
            (State::Completed, Found::Completed),
            (State::Failed { retryable: true }, Found::Failed),
            (State::Failed { retryable: false }, Found::Failed),
        ] {
            assert_eq!(
                settle(Some(&existing(state)), NOW, Some(3)),
                Err(Refusal::NotInProgress(found))
            );
        }
    }

    #[test]
    fn fences_stale_attempt_even_after_the_new_holder_finished() {
        for state in [State::InProgress, State::Completed] {
            assert_eq!(
                settle(Some(&existing(state)), NOW, Some(2)),
                Err(Refusal::LeaseLost {
                    given: 2,
                    current: 3
                })
            );
        }
    }

    #[test]
    fn refuses_to_settle_another_roles_record() {
        let s = Existing {
            caller_is_owner: false,
            ..existing(State::InProgress)
        };
        assert_eq!(settle(Some(&s), NOW, None), Err(Refusal::NotOwner));
    }

    #[test]
    fn lock_id_separates_scope_from_key() {
        assert_ne!(lock_id(b"ab", b"c"), lock_id(b"a", b"bc"));
        assert_eq!(
            lock_id(b"tenant:42", b"k-123"),
            lock_id(b"tenant:42", b"k-123")
        );
    }

    #[test]
    fn lock_id_is_frozen() {
        // Every version must lock a key under the same identity: a changed value here means
        // two versions running side by side would not exclude each other. The value was
        // computed independently: SHA-256(be64(len(scope)) || scope || key)[..8].
        assert_eq!(
            lock_id(b"tenant:42 POST /v1/payments", b"k-123"),
            0x9711_52b6_e4b9_ba27
        );
    }

    fn any_state() -> impl Strategy<Value = State> {
        prop_oneof![
            Just(State::InProgress),
            Just(State::Completed),
            any::<bool>().prop_map(|retryable| State::Failed { retryable }),
        ]
    }

    fn any_existing() -> impl Strategy<Value = Existing> {
        (
            any_state(),
            any::<bool>(),
            1..1000i32,
            -10i64..10,
            proptest::option::of(-10i64..10),
            any::<bool>(),
        )
            .prop_map(|(state, same, attempt, exp, lease, owner)| Existing {
                state,
                fingerprint: if same { FP } else { OTHER },
                attempt,
                created_at: NOW - 20,
                expires_at: NOW + exp,
                lease_expires_at: lease.map(|l| NOW + l),
                caller_is_owner: owner,
            })
    }

    proptest! {
        #[test]
        fn settled_is_what_begin_decides_with_or_without_the_lock(
            s in proptest::option::of(any_existing()),
        ) {
            let free = begin(s.as_ref(), &req(false));
            let held = begin(s.as_ref(), &req(true));
            match settled(s.as_ref(), &req(true)) {
                Some(d) => {
                    prop_assert_eq!(d, free);
                    prop_assert_eq!(d, held);
                    prop_assert!(matches!(d, Ok(Begin::Replay) | Err(_)));
                }
                // Exactly the cases the lock decides: no live record, in progress, a
                // retryable failure (each answered in_progress without the lock).
                None => {
                    let live = s.filter(|s| s.is_live(NOW));
                    let lock_decides = live.is_none_or(|s| {
                        s.caller_is_owner
                            && s.fingerprint == FP
                            && matches!(s.state, State::InProgress | State::Failed { retryable: true })
                    });
                    prop_assert!(lock_decides);
                    prop_assert_eq!(free, Ok(Begin::InProgress));
                }
            }
            prop_assert_eq!(settled(s.as_ref(), &req(false)), settled(s.as_ref(), &req(true)));
        }

        #[test]
        fn without_the_lock_begin_never_executes(s in proptest::option::of(any_existing())) {
            let d = begin(s.as_ref(), &req(false));
            prop_assert!(!matches!(d, Ok(Begin::Execute(_))));
        }

        #[test]
        fn live_record_with_other_command_is_always_refused(s in any_existing()) {
            prop_assume!(s.is_live(NOW) && s.fingerprint != FP);
            for holds in [true, false] {
                let d = begin(Some(&s), &req(holds));
                let refused = match d {
                    Err(Refusal::CommandMismatch { stored, given, .. }) => {
                        stored == s.fingerprint && given == FP
                    }
                    Err(Refusal::NotOwner) => true,
                    _ => false,
                };
                prop_assert!(refused);
            }
        }

        #[test]
        fn execute_resumes_with_exactly_the_next_attempt(s in any_existing()) {
            if let Ok(Begin::Execute(Execute::Resume { attempt, lease_expires_at })) =
                begin(Some(&s), &req(true))
            {
                prop_assert_eq!(attempt, s.attempt + 1);
                prop_assert_eq!(lease_expires_at, NOW + LEASE);
                prop_assert!(s.is_live(NOW) && s.caller_is_owner && s.fingerprint == FP);
            }
        }

        #[test]
        fn replay_only_for_final_outcomes(s in any_existing(), holds in any::<bool>()) {
            if begin(Some(&s), &req(holds)) == Ok(Begin::Replay) {
                let final_outcome =
                    matches!(s.state, State::Completed | State::Failed { retryable: false });
                prop_assert!(final_outcome);
            }
        }

        #[test]
        fn settle_succeeds_only_on_live_own_in_progress_same_attempt(
            s in any_existing(), attempt in proptest::option::of(1..1000i32)
        ) {
            let ok = settle(Some(&s), NOW, attempt).is_ok();
            let expected = s.is_live(NOW)
                && s.caller_is_owner
                && s.state == State::InProgress
                && attempt.is_none_or(|a| a == s.attempt);
            prop_assert_eq!(ok, expected);
        }
    }
}
