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
    pub params: &'static [Param],
    pub returns: Returns,
    pub volatility: Volatility,
    pub strict: bool,
    pub parallel: Parallel,
}

/// Declares the SQL functions: for each, a module of the function's name holding `PARAMS`
/// (a struct with one [`Param`] field per argument), for a function returning a record an
/// `Out` struct (one field per OUT column, in order) and `SIGNATURE`.
macro_rules! signatures {
    ($(
        fn $name:ident($($p:ident: $pty:ident $(= $default:literal)?),* $(,)?)
            -> $ret:tt $(($($c:ident: $cty:ident),* $(,)?))?
            $volatility:ident, strict: $strict:literal, parallel: $parallel:ident;
    )*) => {
        $(
            #[allow(dead_code)]
            pub mod $name {
                use super::*;

                /// The arguments, each with its position.
                #[derive(Clone, Copy, Debug)]
                pub struct Params { $(pub $p: Param),* }

                const LIST: [Param; [$(stringify!($p)),*].len()] =
                    numbered([$(Param::new(stringify!($p), Type::$pty, signatures!(@default $($default)?))),*]);

                pub const PARAMS: Params = {
                    let [$($p),*] = LIST;
                    Params { $($p),* }
                };

                signatures!(@out $ret $(($($c: $cty),*))?);

                pub const SIGNATURE: Signature = Signature {
                    name: stringify!($name),
                    c_name: match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                        Ok(name) => name,
                        Err(_) => panic!("a function name holds no NUL"),
                    },
                    params: &LIST,
                    returns: signatures!(@returns $ret $(($($c: $cty),*))?),
                    volatility: Volatility::$volatility,
                    strict: $strict,
                    parallel: Parallel::$parallel,
                };
            }
        )*

        /// Every SQL function of the extension.
        pub const ALL: &[&Signature] = &[$(&$name::SIGNATURE),*];
    };
    (@default) => { None };
    (@default $default:literal) => { Some($default) };
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
    (@returns $ret:ident) => { Returns::Value(Type::$ret) };
}

signatures! {
    fn idem_begin(scope: Text, key: Text, command: Jsonb,
                  ttl: Interval = "NULL", lease: Interval = "NULL", wait: Interval = "NULL")
        -> Row(outcome: Text, state: Text, attempt: Integer, recovery_point: Text,
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

    fn idem_check(scope: Text, key: Text, command: Jsonb = "NULL")
        -> Row(state: Text, matches: Boolean, attempt: Integer, recovery_point: Text,
               http_status: Integer, response: Jsonb, resource: Text,
               created_at: Timestamptz, expires_at: Timestamptz, lease_expires_at: Timestamptz)
        Volatile, strict: false, parallel: Safe;

    fn idem_fingerprint(command: Jsonb) -> Bytea
        Immutable, strict: true, parallel: Safe;

    fn idem_canonical(command: Jsonb) -> Text
        Immutable, strict: true, parallel: Safe;

    fn idem_purge(max_rows: Integer = "10000") -> Bigint
        Volatile, strict: false, parallel: Unsafe;

    fn idem_forget(scope: Text, key: Text) -> Boolean
        Volatile, strict: false, parallel: Unsafe;
}

impl Signature {
    pub fn c_name(&self) -> &'static CStr {
        self.c_name
    }

    /// What `pg_get_function_arguments` prints for this declaration: the arguments with
    /// their defaults, then the OUT columns.
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
        if let Returns::Row(columns) = self.returns {
            parts.extend(
                columns
                    .iter()
                    .map(|c| format!("OUT {} {}", c.name, c.ty.sql())),
            );
        }
        parts.join(", ")
    }

    /// What `pg_get_function_result` prints.
    pub fn result_text(&self) -> &'static str {
        match self.returns {
            Returns::Value(t) => t.sql(),
            Returns::Row(_) => "record",
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

    /// Every C function of the extension is declared in `signature`, and `pg_proc` agrees
    /// with each declaration: argument names, types and defaults, OUT columns, result type,
    /// volatility, strictness, parallel safety and the library symbol.
    #[pg_test]
    fn signatures_match_pg_proc() {
        let in_catalog: Vec<String> = Spi::get_one::<Vec<String>>(
            "SELECT array_agg(p.proname::text ORDER BY p.proname)
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
              WHERE e.extname = 'idempotency'
                AND p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'c')
                AND p.pronamespace <> 'tests'::regnamespace",
        )
        .unwrap()
        .unwrap_or_default();
        let mut declared: Vec<String> = super::ALL.iter().map(|s| s.name.to_owned()).collect();
        declared.sort();
        assert_eq!(
            in_catalog, declared,
            "C functions of the extension vs signature::ALL"
        );

        for s in super::ALL {
            let found = Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.concat_ws(E'\\n',
                        pg_catalog.pg_get_function_arguments(p.oid),
                        pg_catalog.pg_get_function_result(p.oid),
                        p.provolatile::text || ' ' || CASE WHEN p.proisstrict THEN 't' ELSE 'f' END
                            || ' ' || p.proparallel::text,
                        p.prosrc, pg_catalog.count(*) OVER ())
                   FROM pg_catalog.pg_proc p WHERE p.proname = $1",
                &[s.name.into()],
            )
            .unwrap()
            .unwrap_or_else(|| panic!("{} is not in pg_proc", s.name));
            let expected = [
                s.arguments_text(),
                s.result_text().to_owned(),
                s.flags_text(),
                s.name.to_owned(),
                "1".to_owned(),
            ]
            .join("\n");
            assert_eq!(found, expected, "pg_proc vs the declaration of {}", s.name);
        }
    }
}
