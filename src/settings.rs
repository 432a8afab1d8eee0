//! The extension's settings (GUCs): defaults for the arguments a caller leaves NULL, the
//! limits that protect the database, logging, and the purge worker's schedule. Each is
//! settable per session, role, database and by ALTER SYSTEM (the worker's in the configuration
//! file only). The limits that protect the database from its users (`max_ttl`,
//! `max_command_size`, `max_response_size`) and `log_refusals` are PGC_SUSET: only superusers
//! (and, from PostgreSQL 15, roles granted SET on them) may set them; anyone else's SET is
//! PostgreSQL's own 42501 "permission denied to set parameter".
//!
//! `idempotency.max_ttl` is the ceiling of every ttl, argument or setting. It is checked where
//! a ttl is used (`check_ttl`, from idem_begin), never when `idempotency.ttl` is set: a check
//! hook that compared two settings would depend on the order in which PostgreSQL applies them
//! (at connection, in the configuration file, when a parallel worker restores the leader's),
//! and a value let through in one order and refused in another helps nobody.
//!
//! The durations (`ttl`, `lease`, `wait`, `purge_interval`, `max_ttl`) are string settings
//! read by `idempotency_core::duration`: interval syntax ('2 hours', '1 day', '90 s') and unit
//! syntax ('2h', '500ms'); a bare number is in the unit of the integer settings of earlier
//! releases (seconds for `max_ttl`, which is new).
//!
//! A value PostgreSQL lets through unchecked is never replaced by the default behind the
//! user's back. PostgreSQL stores a value set before the library is loaded (a placeholder:
//! `SET` in a session before its first call, `ALTER ROLE`/`ALTER DATABASE ... SET`,
//! `ALTER SYSTEM`) without checking it, and checks it only when the library defines the
//! setting; there, and when it applies role or database settings at connection or reads the
//! configuration file, a refused value only raises a WARNING (or a LOG line) and the setting
//! keeps its default or old value. So the check hook refuses an invalid value (22023) only
//! where the refusal reaches the user who typed it: `SET`, `set_config`, a client's startup
//! options, `ALTER ROLE/DATABASE ... SET` and `ALTER SYSTEM` (PostgreSQL checks those while
//! the library is loaded). Everywhere else it keeps the value as written, marked invalid, and
//! every call that would use it fails with 22023 naming the setting, its value and where it
//! was set ([`IdemError::InvalidSetting`]), until a valid value is set.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering::Relaxed};

use idempotency_core::decision::Micros;
use idempotency_core::duration::{self, Unit};
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use crate::errors::IdemError;

static MAX_COMMAND_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
static MAX_RESPONSE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
static LOG_REFUSALS: GucSetting<bool> = GucSetting::<bool>::new(false);
/// `idempotency.direct_access`: read and write the records with the heap and index access
/// methods where the table has its expected shape (store/shape.rs); off forces the SQL path.
static DIRECT_ACCESS: GucSetting<bool> = GucSetting::<bool>::new(true);
static PURGE_BATCH: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(100);

/// A duration setting.
pub struct Duration {
    /// The full name, e.g. `idempotency.ttl`.
    pub name: &'static CStr,
    boot: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    context: pg_sys::GucContext::Type,
    /// The unit of a bare number.
    bare: Unit,
    /// The smallest value allowed: 1 µs for "positive", 0 for "not negative".
    min: Micros,
    /// The value in force, in microseconds (when valid).
    micros: AtomicI64,
    /// 0 when the value in force is valid; otherwise 1 + the `GucSource` it came from.
    invalid_from: AtomicU32,
}

impl Duration {
    #[allow(clippy::too_many_arguments)]
    const fn new(
        name: &'static CStr,
        boot: &'static CStr,
        short: &'static CStr,
        long: &'static CStr,
        context: pg_sys::GucContext::Type,
        bare: Unit,
        min: Micros,
        boot_micros: Micros,
    ) -> Self {
        Duration {
            name,
            boot,
            short,
            long,
            context,
            bare,
            min,
            micros: AtomicI64::new(boot_micros),
            invalid_from: AtomicU32::new(0),
        }
    }

    /// The text as written, checked: the duration, or why not (a DETAIL sentence).
    fn parse(&self, text: &str) -> Result<Micros, String> {
        let micros = duration::parse(text, self.bare).map_err(|e| e.to_string())?;
        if micros < self.min {
            return Err(if self.min > 0 {
                "It must be positive.".into()
            } else {
                "It must not be negative.".into()
            });
        }
        Ok(micros)
    }

    fn index(&self) -> usize {
        DURATIONS
            .iter()
            .position(|d| std::ptr::eq(d, self))
            .unwrap_or(0)
    }

    /// The value in force, or the error that says why it cannot be used.
    pub fn get(&self) -> Result<Micros, IdemError> {
        match self.invalid_from.load(Relaxed) {
            0 => Ok(self.micros.load(Relaxed)),
            from => {
                // SAFETY: the setting's current text, owned by the GUC machinery.
                let value = unsafe {
                    let p = TEXTS[self.index()];
                    if p.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                };
                let reason = self.parse(&value).err().unwrap_or_default();
                Err(IdemError::InvalidSetting {
                    name: self.name.to_str().unwrap_or("idempotency"),
                    value,
                    set_where: source_text(from - 1),
                    reason,
                    example: self.example(),
                })
            }
        }
    }

    /// The hint's examples of valid values.
    fn example(&self) -> &'static str {
        match self.bare {
            Unit::Second => "'2 hours', '90 s', '1 day' or '2h' (a bare number is in seconds)",
            _ => "'500ms', '90 s', '2 minutes' or '1min' (a bare number is in milliseconds)",
        }
    }
}

pub const TTL: usize = 0;
pub const LEASE: usize = 1;
pub const WAIT: usize = 2;
pub const PURGE_INTERVAL: usize = 3;
pub const MAX_TTL: usize = 4;

use pg_sys::GucContext::{PGC_SIGHUP, PGC_SUSET, PGC_USERSET};

/// The default ceiling of a ttl: 30 days, one interval month (docs/design.md, "Roles").
const MAX_TTL_DEFAULT_MICROS: Micros = 30 * 86_400_000_000;

pub static DURATIONS: [Duration; 5] = [
    Duration::new(
        c"idempotency.ttl",
        c"1d",
        c"Sets how long a key is remembered from its first use when idem_begin's ttl is NULL.",
        c"An interval ('2 hours', '1 day') or a number with a unit ('24h'); a bare number is in seconds. An expired key counts as never used.",
        PGC_USERSET,
        Unit::Second,
        1,
        86_400_000_000,
    ),
    Duration::new(
        c"idempotency.lease",
        c"1min",
        c"Sets how long a committed in-progress claim holds when idem_begin's lease is NULL.",
        c"An interval ('90 s') or a number with a unit ('1min'); a bare number is in milliseconds. After the lease runs out the next request for the key takes it over (attempt + 1).",
        PGC_USERSET,
        Unit::Millisecond,
        1,
        60_000_000,
    ),
    Duration::new(
        c"idempotency.wait",
        c"0",
        c"Sets how long idem_begin waits for a concurrent holder of the key when its wait is NULL.",
        c"An interval ('2 seconds') or a number with a unit ('500ms'); a bare number is in milliseconds. 0 answers in_progress at once.",
        PGC_USERSET,
        Unit::Millisecond,
        0,
        0,
    ),
    Duration::new(
        c"idempotency.purge_interval",
        c"1min",
        c"Sets how often the purge worker deletes expired records in every database.",
        c"An interval ('10 minutes') or a number with a unit ('1min'); a bare number is in seconds. 0 turns the worker's purging off. Needs idempotency in shared_preload_libraries.",
        PGC_SIGHUP,
        Unit::Second,
        0,
        60_000_000,
    ),
    Duration::new(
        c"idempotency.max_ttl",
        c"30d",
        c"Sets the longest ttl that idem_begin accepts, as its argument or from idempotency.ttl.",
        c"An interval ('30 days') or a number with a unit ('720h'); a bare number is in seconds. A longer ttl is refused with 22023, so that no role can hold a key, its own or one another role will need, for longer. Only superusers can change this setting.",
        PGC_SUSET,
        Unit::Second,
        1,
        MAX_TTL_DEFAULT_MICROS,
    ),
];

/// The GUC machinery's text of each duration setting (its `valueAddr`).
static mut TEXTS: [*mut c_char; 5] = [std::ptr::null_mut(); 5];

/// True while the settings are being defined: PostgreSQL then applies the values that were
/// set before the library was loaded, and would only WARN about an invalid one.
static DEFINING: AtomicBool = AtomicBool::new(false);

/// What the check hook hands the assign hook (GUC "extra": PostgreSQL frees it).
#[repr(C)]
struct Checked {
    micros: Micros,
    invalid_from: u32,
}

/// Whether an invalid value from `source` must be kept (marked invalid) rather than refused,
/// because a refusal would only be a WARNING or LOG line and leave the default in force.
fn keep_unchecked(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    if DEFINING.load(Relaxed) {
        return true;
    }
    match source {
        // Role and database settings applied at connection (ALTER ROLE/DATABASE checked them
        // when they were set only if the library was loaded in that session).
        PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER => true,
        // The configuration file as read at start and on SIGHUP, outside a transaction.
        // ALTER SYSTEM checks its value with the same source inside its transaction: refused.
        // SAFETY: reads the transaction state.
        PGC_S_FILE => !unsafe { pg_sys::IsTransactionState() },
        _ => false,
    }
}

unsafe extern "C-unwind" fn check_duration<const I: usize>(
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: a GUC check hook's outermost frame.
    unsafe {
        crate::entry::enter(DURATIONS[I].name, || {
            Ok(check(&DURATIONS[I], newval, extra, source))
        })
    }
}

/// The check hook's work: parses the new value and hands the assign hook what it found.
///
/// # Safety
/// The arguments of a GUC check hook of `setting`.
unsafe fn check(
    setting: &Duration,
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes the new value as a NUL-terminated string (never NULL: the
    // boot value is set).
    let text = unsafe { CStr::from_ptr(*newval) }.to_string_lossy();
    let checked = match setting.parse(&text) {
        Ok(micros) => Checked {
            micros,
            invalid_from: 0,
        },
        Err(_) if keep_unchecked(source) => Checked {
            micros: 0,
            invalid_from: source + 1,
        },
        Err(reason) => {
            // SAFETY: PostgreSQL reports these strings with its "invalid value" error;
            // allocated where its own GUC_check_errdetail puts them.
            unsafe {
                pg_sys::GUC_check_errdetail_string = error_string(&reason);
                pg_sys::GUC_check_errhint_string =
                    error_string(&format!("Use a duration such as {}.", setting.example()));
            }
            return false;
        }
    };
    // SAFETY: a block of the right size, handed to PostgreSQL as the GUC's extra.
    unsafe {
        let p = crate::compat::guc_extra_alloc(std::mem::size_of::<Checked>()).cast::<Checked>();
        if p.is_null() {
            return false;
        }
        p.write(checked);
        *extra = p.cast();
    }
    true
}

unsafe extern "C-unwind" fn assign_duration<const I: usize>(
    _newval: *const c_char,
    extra: *mut c_void,
) {
    // SAFETY: a GUC assign hook's outermost frame; `extra` is what check_duration made for
    // this value.
    unsafe {
        crate::entry::enter(DURATIONS[I].name, || {
            if !extra.is_null() {
                let checked = &*extra.cast::<Checked>();
                let setting = &DURATIONS[I];
                setting.micros.store(checked.micros, Relaxed);
                setting.invalid_from.store(checked.invalid_from, Relaxed);
            }
            Ok(())
        })
    }
}

fn error_string(s: &str) -> *mut c_char {
    let c = std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default();
    // SAFETY: copies into ErrorContext, where PostgreSQL's GUC_check_errdetail puts its text.
    unsafe { pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, c.as_ptr()) }
}

/// Where a value came from, for the message of an invalid setting.
fn source_text(source: u32) -> &'static str {
    use pg_sys::GucSource::*;
    match source {
        PGC_S_FILE => "in the configuration file (postgresql.conf or ALTER SYSTEM)",
        PGC_S_GLOBAL => "by ALTER ROLE ALL ... SET",
        PGC_S_DATABASE => "by ALTER DATABASE ... SET",
        PGC_S_USER => "by ALTER ROLE ... SET",
        PGC_S_DATABASE_USER => "by ALTER ROLE ... IN DATABASE ... SET",
        PGC_S_CLIENT => "in the connection's options",
        PGC_S_SESSION => "in this session",
        PGC_S_ENV_VAR | PGC_S_ARGV => "on the server's command line",
        _ => "before the library was loaded",
    }
}

/// Registers the settings; called once per backend (and in the postmaster when preloaded)
/// from `_PG_init`.
pub fn register() {
    DEFINING.store(true, Relaxed);
    define_duration::<TTL>();
    define_duration::<LEASE>();
    define_duration::<WAIT>();
    define_duration::<PURGE_INTERVAL>();
    define_duration::<MAX_TTL>();
    DEFINING.store(false, Relaxed);

    GucRegistry::define_int_guc(
        c"idempotency.max_command_size",
        c"Sets the largest command that idem_begin and idem_check accept.",
        c"The size is that of the uncompressed jsonb value; larger commands are refused with 22023. Only superusers can change this setting.",
        &MAX_COMMAND_KB,
        1,
        i32::MAX / 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"idempotency.max_response_size",
        c"Sets the largest response, error, resource, recovery point or recovery data that can be stored.",
        c"The size is that of the uncompressed value; larger values are refused with 22023. Only superusers can change this setting.",
        &MAX_RESPONSE_KB,
        1,
        i32::MAX / 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_bool_guc(
        c"idempotency.log_refusals",
        c"Logs each IK001 and IK003 refusal and each takeover of a key.",
        c"One LOG line each, with scope, key and fingerprints; never the command or a response.",
        &LOG_REFUSALS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"idempotency.direct_access",
        c"Reads and writes the records without the SQL executor where the table has its expected shape.",
        c"Off, every call runs the extension's SQL statements (the reference path): same results, more instructions.",
        &DIRECT_ACCESS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"idempotency.purge_batch",
        c"Sets how many expired records the purge worker deletes per transaction.",
        c"Each batch is one short transaction; the worker repeats until a batch finds fewer.",
        &PURGE_BATCH,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // PostgreSQL refuses PGC_POSTMASTER settings defined after startup (FATAL): only when
    // preloaded, as pg_stat_statements does with its own.
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        define_max_databases();
    }
    crate::compat::reserve_guc_prefix(c"idempotency");
}

fn define_max_databases() {
    GucRegistry::define_int_guc(
        c"idempotency.max_databases",
        c"Sets how many databases the shared-memory counters (idem_stats) keep apart.",
        c"Databases beyond this share one row of idem_stats whose datid is NULL.",
        &MAX_DATABASES,
        1,
        100_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_duration<const I: usize>() {
    let d = &DURATIONS[I];
    // SAFETY: the address of this setting's text lives as long as the backend; the hooks
    // are this setting's.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            d.name.as_ptr(),
            d.short.as_ptr(),
            d.long.as_ptr(),
            &raw mut TEXTS[I],
            d.boot.as_ptr(),
            d.context,
            0,
            Some(check_duration::<I>),
            Some(assign_duration::<I>),
            None,
        );
    }
}

pub fn ttl() -> Result<Micros, IdemError> {
    DURATIONS[TTL].get()
}

pub fn lease() -> Result<Micros, IdemError> {
    DURATIONS[LEASE].get()
}

pub fn wait() -> Result<Micros, IdemError> {
    DURATIONS[WAIT].get()
}

pub fn purge_interval() -> Result<Micros, IdemError> {
    DURATIONS[PURGE_INTERVAL].get()
}

pub fn max_ttl() -> Result<Micros, IdemError> {
    DURATIONS[MAX_TTL].get()
}

/// 22023 unless `ttl` is within `idempotency.max_ttl`. `from_setting`: the ttl is
/// `idempotency.ttl`'s (the argument was NULL), for the message. A ttl of exactly the ceiling
/// is accepted (`ttl => '1 mon'` is 30 days, the default ceiling).
pub fn check_ttl(ttl: Micros, from_setting: bool) -> Result<(), IdemError> {
    let max = max_ttl()?;
    if ttl <= max {
        Ok(())
    } else {
        Err(IdemError::TtlTooLong {
            ttl,
            max,
            from_setting,
        })
    }
}

pub fn purge_batch() -> i32 {
    PURGE_BATCH.get()
}

pub fn max_databases() -> usize {
    MAX_DATABASES.get() as usize
}

pub fn direct_access() -> bool {
    DIRECT_ACCESS.get()
}

pub fn log_refusals() -> bool {
    LOG_REFUSALS.get()
}

/// The size limit of a command in bytes, and the setting that sets it (for messages).
pub fn max_command_size() -> (usize, &'static str) {
    (MAX_COMMAND_KB.get() as usize * 1024, "max_command_size")
}

/// The size limit of a stored value in bytes, and the setting that sets it (for messages).
pub fn max_response_size() -> (usize, &'static str) {
    (MAX_RESPONSE_KB.get() as usize * 1024, "max_response_size")
}
