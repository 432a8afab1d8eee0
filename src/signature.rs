//! The SQL-to-Rust contract: every SQL function's signature, declared once.
//!
//! `sql/idempotency.sql` creates the functions; this module says, for each, what the library
//! expects of it: the arguments (name, type, default) in order, the result (a type, or the
//! columns of the OUT parameters in order), volatility, strictness and parallel safety. The
//! argument readers in `api` take a [`Param`] from here (never a bare position), the result
//! rows are built from the generated `Out` structs (whose fields are the columns, in order),
//! `fmgr` refuses a call whose argument count is not the declared one, and a test compares
//! every declaration with `pg_proc` (`tests::signatures_match_pg_proc`), so the SQL file and
//! the library cannot drift apart unnoticed.
//!
//! The library itself reads positions, names and strictness; the rest of each declaration
//! (types, defaults, result columns, flags) exists for that comparison.
#![cfg_attr(not(any(test, feature = "pg_test")), allow(dead_code))]

use std::ffi::CStr;

use pgrx::pg_sys;

/// The SQL types the functions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Text,
    Jsonb,
    Interval,
    Integer,
    Bigint,
    Boolean,
    Bytea,
    Timestamptz,
    Oid,
    Name,
    DoublePrecision,
    Void,
}

impl Type {
    /// The name `format_type` gives the type (what `pg_get_function_arguments` prints).
    pub const fn sql(self) -> &'static str {
        match self {
            Type::Text => "text",
            Type::Jsonb => "jsonb",
            Type::Interval => "interval",
            Type::Integer => "integer",
            Type::Bigint => "bigint",
            Type::Boolean => "boolean",
            Type::Bytea => "bytea",
            Type::Timestamptz => "timestamp with time zone",
            Type::Oid => "oid",
            Type::Name => "name",
            Type::DoublePrecision => "double precision",
            Type::Void => "void",
        }
    }
}

/// One argument: its position (from 0), name, type and the default's SQL text, if any.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub pos: usize,
    pub name: &'static str,
    pub ty: Type,
    pub default: Option<&'static str>,
}

impl Param {
    pub const fn new(name: &'static str, ty: Type, default: Option<&'static str>) -> Self {
        Param {
            pos: 0,
            name,
            ty,
            default,
        }
    }
}

/// Numbers a list of parameters by their place in it.
pub const fn numbered<const N: usize>(mut params: [Param; N]) -> [Param; N] {
    let mut i = 0;
    while i < N {
        params[i].pos = i;
        i += 1;
    }
    params
}

/// One OUT column of a function that returns a record.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: Type,
}

#[derive(Clone, Copy, Debug)]
pub enum Returns {
    /// A single value of this type.
    Value(Type),
    /// One row of these OUT columns (the function is declared `RETURNS record`).
    Row(&'static [Column]),
    /// Any number of rows of these OUT columns (`RETURNS SETOF record`).
    Rows(&'static [Column]),
    /// One row of a named composite type (`RETURNS idempotency.<type>`, the type made by
    /// `CREATE TYPE ... AS (<these columns>)`): the executor takes its row descriptor from the
    /// type cache, where for OUT columns it builds one from `pg_proc` on every execution.
    Composite(&'static str, &'static [Column]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Volatile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallel {
    Safe,
    Unsafe,
}

/// What the library expects of one SQL function.
#[derive(Debug)]
pub struct Signature {
    pub name: &'static str,
    /// The name as a C string, for error locations.
    pub c_name: &'static CStr,
    /// The library's C symbol that the SQL declaration names (`AS 'MODULE_PATHNAME', '<symbol>'`):
    /// the function's name, or a versioned one where a release changed what it returns.
    pub symbol: &'static str,
    pub params: &'static [Param],
    pub returns: Returns,
    pub volatility: Volatility,
    pub strict: bool,
    pub parallel: Parallel,
}

/// Declares the SQL functions: for each, a module of the C symbol's name holding `PARAMS`
/// (a struct with one [`Param`] field per argument), for a function returning a row an
/// `Out` struct (one field per column, in order) and `SIGNATURE`. `fn symbol = name(...)`
/// declares a C symbol that serves the SQL function `name` (a versioned entry point);
/// `Composite[type](columns)` a result of the named composite type `type`.
macro_rules! signatures {
    ($(
        fn $name:ident $(= $sql_name:ident)? ($($p:ident: $pty:ident $(= $default:literal)?),* $(,)?)
            -> $ret:ident $([$type_name:literal])? $(($($c:ident: $cty:ident),* $(,)?))?
            $volatility:ident, strict: $strict:literal, parallel: $parallel:ident;
    )*) => {
        $(
            #[allow(dead_code)]
            pub mod $name {
                use super::*;

                /// The arguments, each with its position.
                #[derive(Clone, Copy, Debug)]
                pub struct Params { $(pub $p: Param),* }

                const LIST: [Param; { let names: &[&str] = &[$(stringify!($p)),*]; names.len() }] =
                    numbered([$(Param::new(stringify!($p), Type::$pty, signatures!(@default $($default)?))),*]);

                pub const PARAMS: Params = {
                    let [$($p),*] = LIST;
                    Params { $($p),* }
                };

                signatures!(@out $ret $(($($c: $cty),*))?);

                pub const SIGNATURE: Signature = Signature {
                    name: signatures!(@name $name $($sql_name)?),
                    c_name: match CStr::from_bytes_with_nul(concat!(signatures!(@name $name $($sql_name)?), "\0").as_bytes()) {
                        Ok(name) => name,
                        Err(_) => panic!("a function name holds no NUL"),
                    },
                    symbol: stringify!($name),
                    params: &LIST,
                    returns: signatures!(@returns $ret $([$type_name])? $(($($c: $cty),*))?),
                    volatility: Volatility::$volatility,
                    strict: $strict,
                    parallel: Parallel::$parallel,
                };
            }
        )*

        /// Every C symbol declared here.
        #[allow(dead_code)]
        pub const ALL: &[&Signature] = &[$(&$name::SIGNATURE),*];
    };
    (@name $name:ident) => { stringify!($name) };
    (@name $name:ident $sql_name:ident) => { stringify!($sql_name) };
    (@default) => { None };
    (@default $default:literal) => { Some($default) };
    (@out Rows ($($c:ident: $cty:ident),*)) => { signatures!(@out Row ($($c: $cty),*)); };
    (@out Composite ($($c:ident: $cty:ident),*)) => { signatures!(@out Row ($($c: $cty),*)); };
    (@out Row ($($c:ident: $cty:ident),*)) => {
        /// The result row: one field per OUT column, in the declared order; `None` is NULL.
        pub struct Out { $(pub $c: Option<pg_sys::Datum>),* }

        pub const COLUMNS: &[Column] = &[$(Column { name: stringify!($c), ty: Type::$cty }),*];

        impl Out {
            /// The column values in order.
            pub fn values(self) -> [Option<pg_sys::Datum>; [$(stringify!($c)),*].len()] {
                [$(self.$c),*]
            }
        }
    };
    (@out $ret:ident) => {};
    (@returns Row ($($c:ident: $cty:ident),*)) => { Returns::Row(COLUMNS) };
    (@returns Rows ($($c:ident: $cty:ident),*)) => { Returns::Rows(COLUMNS) };
    (@returns Composite [$type_name:literal] ($($c:ident: $cty:ident),*)) => {
        Returns::Composite($type_name, COLUMNS)
    };
    (@returns $ret:ident) => { Returns::Value(Type::$ret) };
}

signatures! {
    fn idem_begin(scope: Text, key: Text, command: Jsonb,
                  ttl: Interval = "NULL", lease: Interval = "NULL", wait: Interval = "NULL")
        -> Composite["idempotency.begin_result"](
               outcome: Text, state: Text, attempt: Integer, recovery_point: Text,
               recovery_data: Jsonb, http_status: Integer, response: Jsonb, resource: Text,
               fingerprint: Bytea, expires_at: Timestamptz)
        Volatile, strict: false, parallel: Unsafe;

    fn idem_complete(scope: Text, key: Text, response: Jsonb = "NULL", resource: Text = "NULL",
                     http_status: Integer = "200", attempt: Integer = "NULL")
        -> Void
        Volatile, strict: false, parallel: Unsafe;

    fn idem_fail(scope: Text, key: Text, error: Jsonb = "NULL", retryable: Boolean = "true",
                 http_status: Integer = "500", attempt: Integer = "NULL")
        -> Void
        Volatile, strict: false, parallel: Unsafe;

    fn idem_checkpoint(scope: Text, key: Text, recovery_point: Text, data: Jsonb = "NULL",
                       attempt: Integer = "NULL")
        -> Timestamptz
        Volatile, strict: false, parallel: Unsafe;

    // 0.3.0's idem_check (its SQL names the symbol idem_check): ten OUT columns.
    fn idem_check(scope: Text, key: Text, command: Jsonb = "NULL")
        -> Row(state: Text, matches: Boolean, attempt: Integer, recovery_point: Text,
               http_status: Integer, response: Jsonb, resource: Text,
               created_at: Timestamptz, expires_at: Timestamptz, lease_expires_at: Timestamptz)
        Volatile, strict: false, parallel: Safe;

    // 0.4.0's: a composite type, and the stored fingerprint at the end.
    fn idem_check_0_4 = idem_check(scope: Text, key: Text, command: Jsonb = "NULL")
        -> Composite["idempotency.check_result"](
               state: Text, matches: Boolean, attempt: Integer, recovery_point: Text,
               http_status: Integer, response: Jsonb, resource: Text,
               created_at: Timestamptz, expires_at: Timestamptz, lease_expires_at: Timestamptz,
               fingerprint: Bytea)
        Volatile, strict: false, parallel: Safe;

    fn idem_fingerprint(command: Jsonb) -> Bytea
        Immutable, strict: true, parallel: Safe;

    fn idem_canonical(command: Jsonb) -> Text
        Immutable, strict: true, parallel: Safe;

    fn idem_purge(max_rows: Integer = "10000") -> Bigint
        Volatile, strict: false, parallel: Unsafe;

    fn idem_forget(scope: Text, key: Text) -> Boolean
        Volatile, strict: false, parallel: Unsafe;

    fn idem_stats()
        -> Rows(datid: Oid, datname: Name,
                executes_new: Bigint, executes_takeover: Bigint, executes_retry: Bigint,
                replays: Bigint, in_progress: Bigint,
                command_mismatches: Bigint, not_in_progress: Bigint, leases_lost: Bigint,
                permission_denied: Bigint,
                waits: Bigint, wait_time: DoublePrecision,
                completions: Bigint, failures_retryable: Bigint, failures_final: Bigint,
                checkpoints: Bigint, forgets: Bigint,
                purged_rows: Bigint, purge_runs: Bigint, last_purge: Timestamptz,
                stats_reset: Timestamptz)
        Volatile, strict: false, parallel: Safe;

    fn idem_stats_reset() -> Timestamptz
        Volatile, strict: false, parallel: Unsafe;
}

/// The declarations of 0.3.0's SQL (sql/releases/idempotency--0.3.0.sql) that differ from
/// 0.4.0's without a C symbol of their own: its idem_begin returned OUT columns, served by the
/// same symbol (the same arguments and columns).
pub mod v0_3_0 {
    use super::*;

    signatures! {
        fn idem_begin(scope: Text, key: Text, command: Jsonb,
                      ttl: Interval = "NULL", lease: Interval = "NULL", wait: Interval = "NULL")
            -> Row(outcome: Text, state: Text, attempt: Integer, recovery_point: Text,
                   recovery_data: Jsonb, http_status: Integer, response: Jsonb, resource: Text,
                   fingerprint: Bytea, expires_at: Timestamptz)
            Volatile, strict: false, parallel: Unsafe;
    }
}

/// One version of the extension's SQL that this library serves: what each of its C
/// functions is declared as there.
pub struct Version {
    pub version: &'static str,
    pub functions: &'static [&'static Signature],
}

/// Every version of the SQL that this library serves, oldest first; the last is the crate's.
/// A database keeps the SQL of its version until ALTER EXTENSION idempotency UPDATE, and the
/// library serves it meanwhile: a function whose result changed has a C symbol per version
/// (as pg_stat_statements has pg_stat_statements_1_2, _1_3, ...), one body parameterised by
/// the version, and each version's SQL names its own.
pub const VERSIONS: &[Version] = &[
    Version {
        version: "0.3.0",
        functions: &[
            &v0_3_0::idem_begin::SIGNATURE,
            &idem_complete::SIGNATURE,
            &idem_fail::SIGNATURE,
            &idem_checkpoint::SIGNATURE,
            &idem_check::SIGNATURE,
            &idem_fingerprint::SIGNATURE,
            &idem_canonical::SIGNATURE,
            &idem_purge::SIGNATURE,
            &idem_forget::SIGNATURE,
            &idem_stats::SIGNATURE,
            &idem_stats_reset::SIGNATURE,
        ],
    },
    Version {
        version: "0.4.0",
        functions: &[
            &idem_begin::SIGNATURE,
            &idem_complete::SIGNATURE,
            &idem_fail::SIGNATURE,
            &idem_checkpoint::SIGNATURE,
            &idem_check_0_4::SIGNATURE,
            &idem_fingerprint::SIGNATURE,
            &idem_canonical::SIGNATURE,
            &idem_purge::SIGNATURE,
            &idem_forget::SIGNATURE,
            &idem_stats::SIGNATURE,
            &idem_stats_reset::SIGNATURE,
        ],
    },
];

impl Signature {
    /// What `pg_get_function_arguments` prints for this declaration: the arguments with
    /// their defaults, then the OUT columns (a composite type's columns are the type's).
    pub fn arguments_text(&self) -> String {
        let mut parts: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.default {
                None => format!("{} {}", p.name, p.ty.sql()),
                Some("NULL") => format!("{} {} DEFAULT NULL::{}", p.name, p.ty.sql(), p.ty.sql()),
                Some(d) => format!("{} {} DEFAULT {d}", p.name, p.ty.sql()),
            })
            .collect();
        if let Returns::Row(columns) | Returns::Rows(columns) = self.returns {
            parts.extend(
                columns
                    .iter()
                    .map(|c| format!("OUT {} {}", c.name, c.ty.sql())),
            );
        }
        parts.join(", ")
    }

    /// What `pg_get_function_result` prints (a composite type schema-qualified).
    pub fn result_text(&self) -> &'static str {
        match self.returns {
            Returns::Value(t) => t.sql(),
            Returns::Row(_) => "record",
            Returns::Rows(_) => "SETOF record",
            Returns::Composite(name, _) => name,
        }
    }

    /// The columns of the composite result type, as `name type, ...`.
    pub fn composite_text(&self) -> Option<String> {
        match self.returns {
            Returns::Composite(_, columns) => Some(
                columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.ty.sql()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            _ => None,
        }
    }

    /// `pg_proc.provolatile`, `proisstrict` and `proparallel` as one text, e.g. `v f u`.
    pub fn flags_text(&self) -> String {
        format!(
            "{} {} {}",
            match self.volatility {
                Volatility::Immutable => 'i',
                Volatility::Volatile => 'v',
            },
            if self.strict { 't' } else { 'f' },
            match self.parallel {
                Parallel::Safe => 's',
                Parallel::Unsafe => 'u',
            }
        )
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The C functions `condition` selects in `pg_proc` (a condition on `p`) are those of
    /// `version`, each as declared there: argument names, types and defaults, OUT columns,
    /// result type (and a composite type's columns), volatility, strictness, parallel safety
    /// and the library symbol.
    fn check_declarations(version: &super::Version, condition: &str) {
        let in_catalog: Vec<String> = Spi::get_one::<Vec<String>>(&format!(
            "SELECT array_agg(p.proname::text ORDER BY p.proname)
               FROM pg_catalog.pg_proc p
              WHERE p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'c')
                AND {condition}"
        ))
        .unwrap()
        .unwrap_or_default();
        let mut declared: Vec<String> = version
            .functions
            .iter()
            .map(|s| s.name.to_owned())
            .collect();
        declared.sort();
        assert_eq!(
            in_catalog, declared,
            "C functions in pg_proc vs the declarations of {}",
            version.version
        );

        for s in version.functions {
            let found = Spi::get_one_with_args::<String>(
                &format!(
                    "SELECT pg_catalog.concat_ws(E'\\n',
                        pg_catalog.pg_get_function_arguments(p.oid),
                        CASE WHEN t.typtype = 'c'
                             THEN t.typnamespace::regnamespace::text || '.' || t.typname::text
                             ELSE pg_catalog.pg_get_function_result(p.oid) END,
                        (SELECT pg_catalog.string_agg(a.attname::text || ' '
                                    || pg_catalog.format_type(a.atttypid, a.atttypmod), ', '
                                    ORDER BY a.attnum)
                           FROM pg_catalog.pg_attribute a
                          WHERE t.typtype = 'c' AND a.attrelid = t.typrelid
                            AND a.attnum > 0 AND NOT a.attisdropped),
                        p.provolatile::text || ' ' || CASE WHEN p.proisstrict THEN 't' ELSE 'f' END
                            || ' ' || p.proparallel::text,
                        p.prosrc, pg_catalog.count(*) OVER ())
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_type t ON t.oid = p.prorettype
                  WHERE p.proname = $1 AND {condition}"
                ),
                &[s.name.into()],
            )
            .unwrap()
            .unwrap_or_else(|| panic!("{} is not in pg_proc", s.name));
            let mut expected = vec![s.arguments_text(), s.result_text().to_owned()];
            expected.extend(s.composite_text());
            expected.extend([s.flags_text(), s.symbol.to_owned(), "1".to_owned()]);
            assert_eq!(
                found,
                expected.join("\n"),
                "pg_proc vs {}'s declaration of {}",
                version.version,
                s.name
            );
        }
    }

    /// The installed version's SQL (the crate's, in `cargo pgrx test`) agrees with its
    /// declarations, and is the last one the library serves.
    #[pg_test]
    fn signatures_match_pg_proc() {
        let installed = Spi::get_one::<String>(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'idempotency'",
        )
        .unwrap()
        .unwrap();
        let version = super::VERSIONS
            .iter()
            .find(|v| v.version == installed)
            .unwrap_or_else(|| panic!("the library serves no SQL of version {installed}"));
        assert_eq!(
            super::VERSIONS.last().map(|v| v.version),
            Some(env!("CARGO_PKG_VERSION")),
            "the last version served is the crate's"
        );
        for s in super::ALL {
            assert!(
                super::VERSIONS
                    .iter()
                    .any(|v| v.functions.iter().any(|f| f.symbol == s.symbol)),
                "the C symbol {} serves no version's SQL",
                s.symbol
            );
        }
        check_declarations(
            version,
            "p.oid IN (SELECT d.objid FROM pg_catalog.pg_depend d
                         JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                        WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
                          AND e.extname = 'idempotency')
             AND p.pronamespace <> 'tests'::regnamespace",
        );
    }

    /// 0.3.0's SQL as released (sql/releases/idempotency--0.3.0.sql) agrees with 0.3.0's
    /// declarations: its C functions, created in a scratch schema from that very file (which
    /// also proves that every symbol they name is in this library), are those of
    /// `VERSIONS[0.3.0]`.
    #[pg_test]
    fn released_0_3_0_signatures_match_pg_proc() {
        const RELEASED: &str = include_str!("../sql/releases/idempotency--0.3.0.sql");
        let library = Spi::get_one::<String>(
            "SELECT probin FROM pg_catalog.pg_proc WHERE proname = 'idem_canonical'
               AND pronamespace <> 'tests'::regnamespace",
        )
        .unwrap()
        .unwrap();
        Spi::run("CREATE SCHEMA released_0_3_0").unwrap();
        // The C functions' statements: from CREATE FUNCTION to the end of its LANGUAGE c line.
        let mut statement = String::new();
        let mut created = 0;
        for line in RELEASED.lines() {
            if line.starts_with("CREATE FUNCTION ") {
                statement.clear();
            }
            statement.push_str(line);
            statement.push('\n');
            if line.contains(" LANGUAGE c ") && line.trim_end().ends_with(';') {
                let sql = statement
                    .replacen("CREATE FUNCTION ", "CREATE FUNCTION released_0_3_0.", 1)
                    .replace("'MODULE_PATHNAME'", &format!("'{library}'"));
                Spi::run(&sql).unwrap_or_else(|e| panic!("{e}: {sql}"));
                created += 1;
            }
        }
        let version = super::VERSIONS
            .iter()
            .find(|v| v.version == "0.3.0")
            .unwrap();
        assert_eq!(created, version.functions.len());
        check_declarations(version, "p.pronamespace = 'released_0_3_0'::regnamespace");

        // And they run on this library: 0.3.0's idem_begin claims and replays, its idem_check
        // answers its ten columns, which are the first ten of 0.4.0's, the eleventh being the
        // stored fingerprint (SHA-256 of {"a":1}).
        let claimed = Spi::get_one::<String>(
            "SELECT outcome || ' ' || attempt
               FROM released_0_3_0.idem_begin('signature/0.3.0', 'k', '{\"a\": 1}')",
        )
        .unwrap();
        assert_eq!(claimed.as_deref(), Some("execute 1"));
        Spi::run("SELECT released_0_3_0.idem_complete('signature/0.3.0', 'k', '{\"id\": 1}', 'r/1', 201)")
            .unwrap();
        let replayed = Spi::get_one::<String>(
            "SELECT concat_ws(' ', outcome, state, attempt, http_status, response, resource)
               FROM released_0_3_0.idem_begin('signature/0.3.0', 'k', '{\"a\": 1}')",
        )
        .unwrap();
        assert_eq!(
            replayed.as_deref(),
            Some("replay completed 1 201 {\"id\": 1} r/1")
        );
        let compared = Spi::get_one::<String>(
            "SELECT concat_ws(' ',
                    (SELECT count(*) FROM jsonb_object_keys(to_jsonb(o))),
                    (SELECT count(*) FROM jsonb_object_keys(to_jsonb(n))),
                    to_jsonb(n) - 'fingerprint' = to_jsonb(o),
                    encode(n.fingerprint, 'hex'))
               FROM released_0_3_0.idem_check('signature/0.3.0', 'k', '{\"a\": 1}') o,
                    idem_check('signature/0.3.0', 'k', '{\"a\": 1}') n",
        )
        .unwrap();
        assert_eq!(
            compared.as_deref(),
            Some("10 11 t 015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862")
        );
    }
}
