//! The table's columns, declared once (`columns!`: each column's name, type and NOT NULL, in
//! the table's order, as sql/idempotency.sql creates them), from which the rest of the store
//! takes every column list it has: the row decoder's, the SQL path's statements, the direct
//! path's attribute positions and the shape check's expectations.

use std::ffi::CStr;

use pgrx::pg_sys;

/// The columns with their types and NOT NULL, in the order of the table's definition
/// (sql/idempotency.sql): `Col`, `NCOLS` and `COLUMNS` (each column's name, type oid and
/// whether it is NOT NULL), from one list. The store's other column lists come from it: the
/// direct path's attribute positions (`Shape::position`, read against it), the SQL path's
/// SELECT list (`Col::ALL` in this order: `Col::x as usize + 1` is column x's number in a
/// lookup's result), its SET lists and its parameter types (`Col::name`, `Col::type_oid`).
macro_rules! columns {
    ($($col:ident: $ty:ident $($not_null:ident)*),* $(,)?) => {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum Col { $($col),* }

        pub const NCOLS: usize = [$(Col::$col),*].len();

        impl Col {
            /// Every column, in the table's order.
            pub const ALL: [Col; NCOLS] = [$(Col::$col),*];

            /// The column's name in SQL.
            pub fn name(self) -> &'static str {
                [$(stringify!($col)),*][self as usize]
            }

            /// The column's type.
            pub fn type_oid(self) -> pg_sys::Oid {
                pg_sys::Oid::from(COLUMNS[self as usize].2)
            }
        }

        pub(super) const COLUMNS: [(Col, &CStr, u32, bool); NCOLS] = [$((
            Col::$col,
            match CStr::from_bytes_with_nul(concat!(stringify!($col), "\0").as_bytes()) {
                Ok(name) => name,
                Err(_) => panic!("a column name with a NUL"),
            },
            pg_sys::$ty.to_u32(),
            not_null!($($not_null)*),
        )),*];
    };
}
macro_rules! not_null {
    () => {
        false
    };
    (NOT NULL) => {
        true
    };
}
columns!(
    created_at: TIMESTAMPTZOID NOT NULL,
    expires_at: TIMESTAMPTZOID NOT NULL,
    lease_expires_at: TIMESTAMPTZOID,
    lease: INT8OID NOT NULL,
    owner: REGROLEOID NOT NULL,
    attempt: INT4OID NOT NULL,
    http_status: INT2OID,
    state: CHAROID NOT NULL,
    retryable: BOOLOID,
    scope: TEXTOID NOT NULL,
    key: TEXTOID NOT NULL,
    fingerprint: BYTEAOID NOT NULL,
    resource: TEXTOID,
    recovery_point: TEXTOID,
    recovery_data: JSONBOID,
    response: JSONBOID,
);
