//! `#[pg_test]`s: each SQL function inside one backend (one transaction, rolled back).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn fingerprints_equal_commands_alike() {
        let a = Spi::get_one::<Vec<u8>>("SELECT idem_fingerprint('{\"b\":1,\"a\":2.0}')").unwrap();
        let b = Spi::get_one::<Vec<u8>>("SELECT idem_fingerprint('{ \"a\": 2, \"b\": 1.00 }')")
            .unwrap();
        assert_eq!(a, b);
    }
}
