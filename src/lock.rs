//! The per-key lock: a transaction-level heavyweight lock on the key's identity, held by any
//! transaction that writes the key's record, until that transaction ends.
//!
//! It is what makes an uncommitted claim visible to other requests without blocking them: a
//! request that cannot take the lock knows another transaction is working on the key right
//! now, and decides on the committed record it can see (see `decision::begin`). It is an
//! advisory-type lock in a space of its own (`locktag_field4` = [`LOCK_SPACE`]), so it never
//! collides with an application's `pg_advisory_lock` numbers; `pg_locks` shows it as
//! `locktype = 'advisory'` with `objsubid = 7655`.

use idempotency_core::decision::{lock_id, Micros};
use pgrx::pg_sys;

use crate::stats::{self, Counter};

/// The advisory lock space of this extension ("1de7" in hex: idem).
pub const LOCK_SPACE: u16 = 0x1de7;

pub struct KeyLock {
    tag: pg_sys::LOCKTAG,
}

impl KeyLock {
    pub fn new(scope: &str, key: &str) -> Self {
        let id = lock_id(scope.as_bytes(), key.as_bytes());
        KeyLock {
            tag: pg_sys::LOCKTAG {
                // SAFETY: set once at backend start-up, read-only afterwards.
                locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
                locktag_field2: (id >> 32) as u32,
                locktag_field3: id as u32,
                locktag_field4: LOCK_SPACE,
                locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
                locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
            },
        }
    }

    fn acquire_(&self, dont_wait: bool) -> bool {
        // SAFETY: a valid tag; errors (lock table full, deadlock, lock_timeout, cancel) are
        // raised by PostgreSQL and reach the caller as errors.
        let r = unsafe {
            pg_sys::LockAcquire(
                &self.tag,
                pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
                false,
                dont_wait,
            )
        };
        r != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }

    /// Takes the lock if nobody holds it; never blocks.
    pub fn try_acquire(&self) -> bool {
        self.acquire_(true)
    }

    /// Takes the lock, waiting as long as PostgreSQL's own lock waits do (deadlock detection
    /// and `lock_timeout` apply).
    pub fn acquire(&self) {
        self.acquire_(false);
    }

    /// Tries to take the lock until `wait` has passed. PostgreSQL has no timed lock wait, so
    /// this polls, sleeping on the latch from 1 ms growing to 50 ms: a release is noticed
    /// within 50 ms and the wait ends on time; interrupts (cancel, terminate) are served.
    /// Each call counts as one wait, and its length as wait time, in the counters.
    pub fn acquire_within(&self, wait: Micros) -> bool {
        // SAFETY: reading the clock.
        let start = unsafe { pg_sys::GetCurrentTimestamp() };
        let got = self.poll_until(start.saturating_add(wait));
        let waited = unsafe { pg_sys::GetCurrentTimestamp() }.saturating_sub(start);
        stats::count(Counter::Waits);
        stats::add(Counter::WaitMicros, waited.max(0) as u64);
        got
    }

    fn poll_until(&self, deadline: Micros) -> bool {
        if self.try_acquire() {
            return true;
        }
        let mut nap_ms: i64 = 1;
        loop {
            // SAFETY: reading the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            if now >= deadline {
                return false;
            }
            let left_ms = (deadline - now + 999) / 1000;
            let timeout = nap_ms.min(left_ms).max(1);
            // SAFETY: MyLatch is this backend's own latch.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    timeout as _,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            pgrx::check_for_interrupts!();
            if self.try_acquire() {
                return true;
            }
            nap_ms = (nap_ms * 2).min(50);
        }
    }

    /// Gives back one acquisition before the transaction ends: for requests that wrote
    /// nothing. A lock this transaction took earlier for a write stays held.
    pub fn release(&self) {
        // SAFETY: releases one local acquisition of this tag by this transaction.
        unsafe {
            pg_sys::LockRelease(&self.tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false);
        }
    }
}
