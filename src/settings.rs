//! The extension's settings (GUCs): defaults for the arguments a caller leaves NULL, and the
//! size limits. Each is settable per session, role, database and by ALTER SYSTEM. Durations
//! take PostgreSQL's time units ('24h', '30min', '500ms'), like statement_timeout.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use idempotency_core::decision::Micros;

static TTL_S: GucSetting<i32> = GucSetting::<i32>::new(24 * 60 * 60);
static LEASE_MS: GucSetting<i32> = GucSetting::<i32>::new(60 * 1000);
static WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
static MAX_COMMAND_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
static MAX_RESPONSE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);

/// Registers the settings; called once per backend from `_PG_init`.
pub fn register() {
    GucRegistry::define_int_guc(
        c"idempotency.ttl",
        c"Sets how long a key is remembered from its first use when idem_begin's ttl is NULL.",
        c"An expired key counts as never used; idem_purge deletes expired records.",
        &TTL_S,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"idempotency.lease",
        c"Sets how long a committed in-progress claim holds when idem_begin's lease is NULL.",
        c"After the lease runs out the next request for the key takes it over (attempt + 1).",
        &LEASE_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"idempotency.wait",
        c"Sets how long idem_begin waits for a concurrent holder of the key when its wait is NULL.",
        c"0 answers in_progress at once.",
        &WAIT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"idempotency.max_command_size",
        c"Sets the largest command that idem_begin and idem_check accept.",
        c"The size is that of the uncompressed jsonb value; larger commands are refused with 22023.",
        &MAX_COMMAND_KB,
        1,
        i32::MAX / 1024,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"idempotency.max_response_size",
        c"Sets the largest response, error, resource, recovery point or recovery data that can be stored.",
        c"The size is that of the uncompressed value; larger values are refused with 22023.",
        &MAX_RESPONSE_KB,
        1,
        i32::MAX / 1024,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
}

pub fn ttl() -> Micros {
    i64::from(TTL_S.get()) * 1_000_000
}

pub fn lease() -> Micros {
    i64::from(LEASE_MS.get()) * 1_000
}

pub fn wait() -> Micros {
    i64::from(WAIT_MS.get()) * 1_000
}

/// The size limit of a command in bytes, and the setting that sets it (for messages).
pub fn max_command_size() -> (usize, &'static str) {
    (MAX_COMMAND_KB.get() as usize * 1024, "max_command_size")
}

/// The size limit of a stored value in bytes, and the setting that sets it (for messages).
pub fn max_response_size() -> (usize, &'static str) {
    (MAX_RESPONSE_KB.get() as usize * 1024, "max_response_size")
}
