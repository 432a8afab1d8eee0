//! `#[pg_test]`s: each SQL function inside one backend (one transaction, rolled back).
//!
//! The tests run in parallel, each in its own backend and transaction: every test uses a
//! scope of its own, so that no test sees another's uncommitted claim (whose key lock would
//! turn an `execute` into `in_progress`).
//!
//! SQLSTATEs are asserted through `public.sqlstate_of(sql)`, a PL/pgSQL helper created by
//! [`tests::setup`] that runs the statement in a subtransaction and returns the SQLSTATE it
//! raised (NULL for none), so that a test goes on after an expected error.
use pgrx::prelude::*;

/// The jsonb model of the pure core (its `testing` feature, switched on by `pg_test`), checked
/// here against PostgreSQL's own jsonb bytes.
use idempotency_core::model;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    // ----------------------------------------------------------------------------------
    // Helpers.

    /// Creates `public.sqlstate_of(sql text) RETURNS text`: the SQLSTATE the statement
    /// raises, or NULL. Runs in the test's transaction, so it vanishes with it.
    fn setup() {
        Spi::run(
            r#"CREATE OR REPLACE FUNCTION public.sqlstate_of(sql text) RETURNS text
               LANGUAGE plpgsql AS $f$
               BEGIN
                   EXECUTE sql;
                   RETURN NULL;
               EXCEPTION WHEN OTHERS THEN
                   RETURN SQLSTATE;
               END
               $f$"#,
        )
        .unwrap();
        Spi::run(
            r#"CREATE OR REPLACE FUNCTION public.error_texts_of(sql text) RETURNS text
               LANGUAGE plpgsql AS $f$
               DECLARE
                   m text; d text; h text;
               BEGIN
                   EXECUTE sql;
                   RETURN NULL;
               EXCEPTION WHEN OTHERS THEN
                   GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL,
                                           h = PG_EXCEPTION_HINT;
                   RETURN m || E'\n' || d || E'\n' || h;
               END
               $f$"#,
        )
        .unwrap();
    }

    /// The SQLSTATE that `sql` raises, or None.
    fn sqlstate(sql: &str) -> Option<String> {
        Spi::get_one_with_args::<String>("SELECT public.sqlstate_of($1)", &[sql.into()]).unwrap()
    }

    /// Asserts that `sql` raises exactly `code`.
    #[track_caller]
    fn assert_sqlstate(sql: &str, code: &str) {
        assert_eq!(sqlstate(sql).as_deref(), Some(code), "SQLSTATE of: {sql}");
    }

    /// Asserts that `sql` raises nothing.
    #[track_caller]
    fn assert_ok(sql: &str) {
        assert_eq!(sqlstate(sql), None, "unexpected error from: {sql}");
    }

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The single non-NULL value of a query.
    #[track_caller]
    fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("NULL from {sql}"))
    }

    fn sleep(seconds: f64) {
        run(&format!("SELECT pg_sleep({seconds})"));
    }

    /// idem_begin's columns except fingerprint and expires_at, as
    /// `outcome | state | attempt | recovery_point | recovery_data | http_status | response |
    /// resource`, NULL written as `NULL`.
    const BEGIN_COLUMNS: &str = "concat_ws(' | ', coalesce(outcome, 'NULL'), \
         coalesce(state, 'NULL'), coalesce(attempt::text, 'NULL'), \
         coalesce(recovery_point, 'NULL'), coalesce(recovery_data::text, 'NULL'), \
         coalesce(http_status::text, 'NULL'), coalesce(response::text, 'NULL'), \
         coalesce(resource, 'NULL'))";

    /// `idem_begin(<args>)` as [`BEGIN_COLUMNS`].
    #[track_caller]
    fn begin(args: &str) -> String {
        one(&format!("SELECT {BEGIN_COLUMNS} FROM idem_begin({args})"))
    }

    /// idem_check's columns as `state | matches | attempt | recovery_point | http_status |
    /// response | resource | created_at | expires_at | lease_expires_at`, the timestamps
    /// given as `set` or `NULL`.
    const CHECK_COLUMNS: &str = "concat_ws(' | ', coalesce(state, 'NULL'), \
         coalesce(matches::text, 'NULL'), coalesce(attempt::text, 'NULL'), \
         coalesce(recovery_point, 'NULL'), coalesce(http_status::text, 'NULL'), \
         coalesce(response::text, 'NULL'), coalesce(resource, 'NULL'), \
         CASE WHEN created_at IS NULL THEN 'NULL' ELSE 'set' END, \
         CASE WHEN expires_at IS NULL THEN 'NULL' ELSE 'set' END, \
         CASE WHEN lease_expires_at IS NULL THEN 'NULL' ELSE 'set' END)";

    /// `idem_check(<args>)` as [`CHECK_COLUMNS`].
    #[track_caller]
    fn check(args: &str) -> String {
        one(&format!("SELECT {CHECK_COLUMNS} FROM idem_check({args})"))
    }

    const ABSENT: &str = "absent | NULL | NULL | NULL | NULL | NULL | NULL | NULL | NULL | NULL";

    // ----------------------------------------------------------------------------------
    // The decision table of idem_begin.

    #[pg_test]
    fn claims_new_key_with_attempt_one() {
        assert_eq!(
            begin(r#"'claims_new', 'k', '{"amount": "10.00", "currency": "EUR"}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
        // Every column, fingerprint and expires_at included, on a second key.
        assert!(one::<bool>(
            r#"SELECT outcome = 'execute' AND state = 'in_progress' AND attempt = 1
                      AND recovery_point IS NULL AND recovery_data IS NULL
                      AND http_status IS NULL AND response IS NULL AND resource IS NULL
                      AND fingerprint = idem_fingerprint('{"amount": "10.00", "currency": "EUR"}')
                      AND octet_length(fingerprint) = 32
                      AND expires_at BETWEEN clock_timestamp() + interval '2 hours' - interval '5 seconds'
                                         AND clock_timestamp() + interval '2 hours'
               FROM idem_begin('claims_new', 'k2', '{"amount": "10.00", "currency": "EUR"}',
                               ttl => '2 hours')"#
        ));
        // The record: in progress, attempt 1, the lease of the setting (1 minute).
        assert_eq!(
            check(r#"'claims_new', 'k', '{"currency": "EUR", "amount": "10.00"}'"#),
            "in_progress | true | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
        assert!(one::<bool>(
            "SELECT lease_expires_at BETWEEN clock_timestamp() + interval '55 seconds' \
                                        AND clock_timestamp() + interval '1 minute' \
             FROM idem_check('claims_new', 'k')"
        ));
    }

    #[pg_test]
    fn treats_expired_record_as_none_even_with_other_command() {
        setup();
        // One expired record in each state: in progress (its lease holding), completed,
        // failed for good, failed retryable.
        begin(r#"'expired', 'p', '{"a": 1}', ttl => '300 milliseconds'"#);
        begin(r#"'expired', 'c', '{"a": 1}', ttl => '300 milliseconds'"#);
        begin(r#"'expired', 'f', '{"a": 1}', ttl => '300 milliseconds'"#);
        begin(r#"'expired', 'r', '{"a": 1}', ttl => '300 milliseconds'"#);
        run(r#"SELECT idem_complete('expired', 'c', '{"id": 1}', 'x/1', 201)"#);
        run(r#"SELECT idem_fail('expired', 'f', '{"e": 1}', false, 402)"#);
        run(r#"SELECT idem_fail('expired', 'r', '{"e": 1}', true, 503)"#);
        // And one that expired at once.
        begin(r#"'expired', 'q', '{"a": 1}', ttl => '1 millisecond'"#);
        sleep(0.35);
        for (scope, key) in [
            ("expired", "p"),
            ("expired", "c"),
            ("expired", "f"),
            ("expired", "r"),
            ("expired", "q"),
        ] {
            assert_eq!(check(&format!("'{scope}', '{key}'")), ABSENT);
            assert_eq!(
                begin(&format!(r#"'{scope}', '{key}', '{{"b": 2}}'"#)),
                "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL",
                "{scope}/{key}"
            );
            assert_eq!(
                check(&format!(r#"'{scope}', '{key}', '{{"b": 2}}'"#)),
                "in_progress | true | 1 | NULL | NULL | NULL | NULL | set | set | set",
                "{scope}/{key}"
            );
        }
        // The new claim has a new expiry (the default ttl, one day).
        assert!(one::<bool>(
            "SELECT expires_at > clock_timestamp() + interval '23 hours' \
             FROM idem_check('expired', 'c')"
        ));
    }

    #[pg_test]
    fn treats_expired_checkpointed_record_as_none_without_recovery_point() {
        begin(r#"'expired_cp', 'k', '{"a": 1}', ttl => '300 milliseconds'"#);
        run(r#"SELECT idem_checkpoint('expired_cp', 'k', 'charged', '{"charge": "ch_1"}')"#);
        sleep(0.35);
        assert_eq!(
            begin(r#"'expired_cp', 'k', '{"a": 1}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
    }

    #[pg_test]
    fn answers_in_progress_with_409_while_lease_holds() {
        begin(r#"'lease_holds', 'k', '{"a": 1}'"#);
        assert_eq!(
            begin(r#"'lease_holds', 'k', '{"a": 1}'"#),
            "in_progress | in_progress | 1 | NULL | NULL | 409 | NULL | NULL"
        );
        // The record is untouched: still attempt 1, same expiry and lease.
        let before: String =
            one("SELECT (expires_at, lease_expires_at)::text FROM idem_check('lease_holds', 'k')");
        assert!(one::<bool>(
            r#"SELECT fingerprint = idem_fingerprint('{"a": 1}')
                      AND expires_at = (SELECT expires_at FROM idem_check('lease_holds', 'k'))
               FROM idem_begin('lease_holds', 'k', '{"a": 1}')"#
        ));
        let after: String =
            one("SELECT (expires_at, lease_expires_at)::text FROM idem_check('lease_holds', 'k')");
        assert_eq!(before, after);
        assert_eq!(
            check("'lease_holds', 'k'"),
            "in_progress | NULL | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
    }

    #[pg_test]
    fn takes_over_after_lease_ran_out_keeping_recovery_point() {
        begin(r#"'takeover', 'k', '{"a": 1}', lease => '10 milliseconds'"#);
        run(r#"SELECT idem_checkpoint('takeover', 'k', 'charged', '{"charge": "ch_1"}')"#);
        let expires_at: String = one("SELECT expires_at::text FROM idem_check('takeover', 'k')");
        sleep(0.02);
        assert!(one::<bool>(
            r#"SELECT outcome = 'execute' AND state = 'in_progress' AND attempt = 2
                      AND recovery_point = 'charged'
                      AND recovery_data = '{"charge": "ch_1"}'
                      AND http_status IS NULL AND response IS NULL AND resource IS NULL
                      AND fingerprint = idem_fingerprint('{"a": 1}')
                      AND expires_at = (SELECT expires_at FROM idem_check('takeover', 'k'))
               FROM idem_begin('takeover', 'k', '{"a": 1}')"#
        ));
        // The expiry is that of the first use; the new holder has a new lease (1 minute).
        assert_eq!(
            one::<String>("SELECT expires_at::text FROM idem_check('takeover', 'k')"),
            expires_at
        );
        assert_eq!(
            check("'takeover', 'k'"),
            "in_progress | NULL | 2 | charged | NULL | NULL | NULL | set | set | set"
        );
        assert!(one::<bool>(
            "SELECT lease_expires_at > clock_timestamp() + interval '50 seconds' \
             FROM idem_check('takeover', 'k')"
        ));
        // The new holder holds it now.
        assert_eq!(
            begin(r#"'takeover', 'k', '{"a": 1}'"#),
            "in_progress | in_progress | 2 | NULL | NULL | 409 | NULL | NULL"
        );
    }

    #[pg_test]
    fn replays_completed_command() {
        begin(r#"'replay', 'k', '{"amount": "10.00", "currency": "EUR"}'"#);
        run(
            r#"SELECT idem_complete('replay', 'k', '{"id": 981, "status": "paid"}',
                                     resource => 'payments/981', http_status => 201)"#,
        );
        assert_eq!(
            begin(r#"'replay', 'k', '{"currency": "EUR", "amount": "10.00"}'"#),
            r#"replay | completed | 1 | NULL | NULL | 201 | {"id": 981, "status": "paid"} | payments/981"#
        );
        assert!(one::<bool>(
            r#"SELECT fingerprint = idem_fingerprint('{"amount": "10.00", "currency": "EUR"}')
                      AND expires_at = (SELECT expires_at FROM idem_check('replay', 'k'))
               FROM idem_begin('replay', 'k', '{"amount": "10.00", "currency": "EUR"}')"#
        ));
        // A replay changes nothing: it can be repeated.
        assert_eq!(
            begin(r#"'replay', 'k', '{"amount": "10.00", "currency": "EUR"}'"#),
            r#"replay | completed | 1 | NULL | NULL | 201 | {"id": 981, "status": "paid"} | payments/981"#
        );
    }

    #[pg_test]
    fn retries_retryable_failure_as_next_attempt() {
        begin(r#"'retryable', 'k', '{"a": 1}'"#);
        run(r#"SELECT idem_checkpoint('retryable', 'k', 'authorized', '{"auth": "a_1"}')"#);
        run(
            r#"SELECT idem_fail('retryable', 'k', '{"error": "timeout"}', retryable => true,
                                 http_status => 503)"#,
        );
        assert_eq!(
            check("'retryable', 'k'"),
            r#"failed | NULL | 1 | authorized | 503 | {"error": "timeout"} | NULL | set | set | NULL"#
        );
        assert_eq!(
            begin(r#"'retryable', 'k', '{"a": 1}'"#),
            r#"execute | in_progress | 2 | authorized | {"auth": "a_1"} | NULL | NULL | NULL"#
        );
        assert_eq!(
            check("'retryable', 'k'"),
            "in_progress | NULL | 2 | authorized | NULL | NULL | NULL | set | set | set"
        );
        // Fails again, retried again: attempt 3.
        run("SELECT idem_fail('retryable', 'k', attempt => 2)");
        assert_eq!(
            begin(r#"'retryable', 'k', '{"a": 1}'"#),
            r#"execute | in_progress | 3 | authorized | {"auth": "a_1"} | NULL | NULL | NULL"#
        );
    }

    #[pg_test]
    fn replays_final_failure_with_error_as_response() {
        begin(r#"'final_failure', 'k', '{"a": 1}'"#);
        run(
            r#"SELECT idem_fail('final_failure', 'k', '{"code": "card_declined"}',
                                 retryable => false, http_status => 402)"#,
        );
        assert_eq!(
            begin(r#"'final_failure', 'k', '{"a": 1}'"#),
            r#"replay | failed | 1 | NULL | NULL | 402 | {"code": "card_declined"} | NULL"#
        );
        assert!(one::<bool>(
            r#"SELECT fingerprint = idem_fingerprint('{"a": 1}')
                      AND expires_at = (SELECT expires_at FROM idem_check('final_failure', 'k'))
               FROM idem_begin('final_failure', 'k', '{"a": 1}')"#
        ));
        assert_eq!(
            check("'final_failure', 'k'"),
            r#"failed | NULL | 1 | NULL | 402 | {"code": "card_declined"} | NULL | set | set | NULL"#
        );
    }

    #[pg_test]
    fn rejects_same_key_with_other_command_in_every_state() {
        setup();
        // in progress, lease holding
        begin(r#"'mismatch', 'p', '{"amount": 10}'"#);
        // in progress, lease run out
        begin(r#"'mismatch', 'o', '{"amount": 10}', lease => '1 millisecond'"#);
        // completed
        begin(r#"'mismatch', 'c', '{"amount": 10}'"#);
        run("SELECT idem_complete('mismatch', 'c')");
        // failed, retryable
        begin(r#"'mismatch', 'r', '{"amount": 10}'"#);
        run("SELECT idem_fail('mismatch', 'r')");
        // failed, not retryable
        begin(r#"'mismatch', 'f', '{"amount": 10}'"#);
        run("SELECT idem_fail('mismatch', 'f', retryable => false)");
        sleep(0.01);
        for key in ["p", "o", "c", "r", "f"] {
            assert_sqlstate(
                &format!(r#"SELECT idem_begin('mismatch', '{key}', '{{"amount": 11}}')"#),
                "IK001",
            );
            assert_sqlstate(
                &format!(
                    r#"SELECT idem_begin('mismatch', '{key}', '{{"amount": 10, "x": null}}')"#
                ),
                "IK001",
            );
        }
        // Nothing changed: the records are as before.
        assert_eq!(
            one::<String>(
                "SELECT string_agg(k || ':' || c.state || ':' || c.attempt, ',' ORDER BY k) \
                 FROM unnest(array['c', 'f', 'o', 'p', 'r']) k, \
                      LATERAL idem_check('mismatch', k) c"
            ),
            "c:completed:1,f:failed:1,o:in_progress:1,p:in_progress:1,r:failed:1"
        );
    }

    #[pg_test]
    fn reports_command_mismatch_with_detail_and_hint() {
        setup();
        begin(r#"'mismatch_texts', 'k-123', '{"amount": "10.00"}'"#);
        let texts: String = one(
            r#"SELECT public.error_texts_of($q$SELECT idem_begin('mismatch_texts', 'k-123', '{"amount": "11.00"}')$q$)"#,
        );
        let stored: String = one(
            r#"SELECT encode(substring(idem_fingerprint('{"amount": "10.00"}') for 4), 'hex')"#,
        );
        let given: String = one(
            r#"SELECT encode(substring(idem_fingerprint('{"amount": "11.00"}') for 4), 'hex')"#,
        );
        let created: String =
            one("SELECT created_at::text FROM idem_check('mismatch_texts', 'k-123')");
        let mut lines = texts.lines();
        let (message, detail, hint) = (
            lines.next().unwrap(),
            lines.next().unwrap(),
            lines.next().unwrap(),
        );
        assert!(message.contains("k-123"), "{message}");
        for part in ["mismatch_texts", "k-123", &stored, &given, &created] {
            assert!(detail.contains(part), "{part} not in {detail}");
        }
        assert!(!hint.is_empty() && hint.contains("new"), "{hint}");
    }

    // ----------------------------------------------------------------------------------
    // Each function.

    #[pg_test]
    fn complete_defaults_to_http_200_and_nulls() {
        begin(r#"'complete_defaults', 'k', '{"a": 1}'"#);
        run("SELECT idem_complete('complete_defaults', 'k')");
        assert_eq!(
            check("'complete_defaults', 'k'"),
            "completed | NULL | 1 | NULL | 200 | NULL | NULL | set | set | NULL"
        );
        assert_eq!(
            begin(r#"'complete_defaults', 'k', '{"a": 1}'"#),
            "replay | completed | 1 | NULL | NULL | 200 | NULL | NULL"
        );
        // void
        assert!(one::<bool>(
            "SELECT pg_typeof(idem_complete('complete_defaults', 'k2')) = 'void'::regtype \
             FROM idem_begin('complete_defaults', 'k2', '{}')"
        ));
    }

    #[pg_test]
    fn complete_accepts_status_bounds_and_drops_recovery_point() {
        begin(r#"'complete_bounds', 'a', '{}'"#);
        begin(r#"'complete_bounds', 'b', '{}'"#);
        run(r#"SELECT idem_checkpoint('complete_bounds', 'a', 'step1', '{"s": 1}')"#);
        run("SELECT idem_complete('complete_bounds', 'a', http_status => 100, attempt => 1)");
        run(r#"SELECT idem_complete('complete_bounds', 'b', '[1, "two"]', 'r/2', 599)"#);
        assert_eq!(
            check("'complete_bounds', 'a'"),
            "completed | NULL | 1 | NULL | 100 | NULL | NULL | set | set | NULL"
        );
        assert_eq!(
            check("'complete_bounds', 'b'"),
            r#"completed | NULL | 1 | NULL | 599 | [1, "two"] | r/2 | set | set | NULL"#
        );
    }

    #[pg_test]
    fn fail_defaults_to_retryable_500() {
        begin(r#"'fail_defaults', 'k', '{"a": 1}'"#);
        run("SELECT idem_fail('fail_defaults', 'k')");
        assert_eq!(
            check("'fail_defaults', 'k'"),
            "failed | NULL | 1 | NULL | 500 | NULL | NULL | set | set | NULL"
        );
        assert_eq!(
            begin(r#"'fail_defaults', 'k', '{"a": 1}'"#),
            "execute | in_progress | 2 | NULL | NULL | NULL | NULL | NULL"
        );
        assert!(one::<bool>(
            "SELECT pg_typeof(idem_fail('fail_defaults', 'k2')) = 'void'::regtype \
             FROM idem_begin('fail_defaults', 'k2', '{}')"
        ));
    }

    #[pg_test]
    fn checkpoint_returns_and_renews_lease() {
        begin(r#"'checkpoint_lease', 'k', '{"a": 1}', lease => '2 seconds'"#);
        let before: String =
            one("SELECT lease_expires_at::text FROM idem_check('checkpoint_lease', 'k')");
        sleep(0.05);
        // Returns the new lease end, renewed by the claim's lease from now.
        assert!(one::<bool>(
            "SELECT l BETWEEN clock_timestamp() + interval '1.9 seconds' \
                          AND clock_timestamp() + interval '2 seconds' \
             FROM idem_checkpoint('checkpoint_lease', 'k', 'step1') l"
        ));
        assert!(one::<bool>(&format!(
            "SELECT lease_expires_at > '{before}'::timestamptz \
             FROM idem_check('checkpoint_lease', 'k')"
        )));
        // The value returned is the lease end that is stored (read in a statement of its
        // own: a sub-select would read under the snapshot from before the checkpoint).
        let returned: String =
            one("SELECT idem_checkpoint('checkpoint_lease', 'k', 'step2', attempt => 1)::text");
        assert_eq!(
            one::<String>("SELECT lease_expires_at::text FROM idem_check('checkpoint_lease', 'k')"),
            returned
        );
        assert!(one::<bool>(
            "SELECT pg_typeof(idem_checkpoint('checkpoint_lease', 'k', 'step3')) \
                    = 'timestamptz'::regtype"
        ));
    }

    #[pg_test]
    fn checkpoint_renewal_keeps_holder_past_first_lease() {
        begin(r#"'checkpoint_renews', 'k', '{"a": 1}', lease => '1 second'"#);
        sleep(0.6);
        run("SELECT idem_checkpoint('checkpoint_renews', 'k', 'step1')");
        sleep(0.6);
        // 1.2 s after the claim, 0.6 s after the checkpoint: the lease holds.
        assert_eq!(
            begin(r#"'checkpoint_renews', 'k', '{"a": 1}'"#),
            "in_progress | in_progress | 1 | NULL | NULL | 409 | NULL | NULL"
        );
    }

    #[pg_test]
    fn checkpoint_keeps_a_lease_that_ran_out_alive() {
        // Nobody took over: the holder may still checkpoint, and holds the key again.
        begin(r#"'checkpoint_late', 'k', '{"a": 1}', lease => '10 milliseconds'"#);
        sleep(0.02);
        run("SELECT idem_checkpoint('checkpoint_late', 'k', 'step1', attempt => 1)");
        // The renewed lease is 10 ms: a takeover is possible again soon, but the record
        // shows the holder's attempt and point.
        assert_eq!(
            check("'checkpoint_late', 'k'"),
            "in_progress | NULL | 1 | step1 | NULL | NULL | NULL | set | set | set"
        );
        run("SELECT idem_complete('checkpoint_late', 'k', attempt => 1)");
        assert_eq!(
            check("'checkpoint_late', 'k'"),
            "completed | NULL | 1 | NULL | 200 | NULL | NULL | set | set | NULL"
        );
    }

    #[pg_test]
    fn checkpoint_stores_recovery_point_for_check_and_next_attempt() {
        begin(r#"'checkpoint_data', 'k', '{"a": 1}', lease => '10 milliseconds'"#);
        run(r#"SELECT idem_checkpoint('checkpoint_data', 'k', 'authorized', '{"auth": "a_1"}')"#);
        assert_eq!(
            check("'checkpoint_data', 'k'"),
            "in_progress | NULL | 1 | authorized | NULL | NULL | NULL | set | set | set"
        );
        // The last checkpoint wins; data may be NULL.
        run(
            r#"SELECT idem_checkpoint('checkpoint_data', 'k', 'captured', '{"capture": "c_1"}', 1)"#,
        );
        assert_eq!(
            check("'checkpoint_data', 'k'"),
            "in_progress | NULL | 1 | captured | NULL | NULL | NULL | set | set | set"
        );
        assert_eq!(
            one::<String>("SELECT recovery_data::text FROM idempotency.records WHERE scope = 'checkpoint_data'"),
            r#"{"capture": "c_1"}"#
        );
        sleep(0.02);
        assert_eq!(
            begin(r#"'checkpoint_data', 'k', '{"a": 1}'"#),
            r#"execute | in_progress | 2 | captured | {"capture": "c_1"} | NULL | NULL | NULL"#
        );
        run("SELECT idem_checkpoint('checkpoint_data', 'k', 'refunded', attempt => 2)");
        assert_eq!(
            check("'checkpoint_data', 'k'"),
            "in_progress | NULL | 2 | refunded | NULL | NULL | NULL | set | set | set"
        );
    }

    #[pg_test]
    fn check_reports_absent_for_missing_and_expired_keys() {
        assert_eq!(check("'check_absent', 'none'"), ABSENT);
        assert_eq!(check(r#"'check_absent', 'none', '{"a": 1}'"#), ABSENT);
        begin(r#"'check_absent', 'k', '{"a": 1}', ttl => '1 millisecond'"#);
        sleep(0.01);
        assert_eq!(check("'check_absent', 'k'"), ABSENT);
        assert_eq!(check(r#"'check_absent', 'k', '{"a": 1}'"#), ABSENT);
        // Exactly one row.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM idem_check('check_absent', 'none')"),
            1
        );
    }

    #[pg_test]
    fn check_matches_given_command() {
        begin(r#"'check_matches', 'k', '{"b": 1, "a": 2.0}'"#);
        assert_eq!(
            one::<bool>(
                r#"SELECT matches FROM idem_check('check_matches', 'k', '{ "a": 2, "b": 1.00 }')"#
            ),
            true
        );
        assert_eq!(
            one::<bool>(
                r#"SELECT matches FROM idem_check('check_matches', 'k', '{"a": 2, "b": 1.5}')"#
            ),
            false
        );
        assert!(one::<bool>(
            "SELECT matches IS NULL FROM idem_check('check_matches', 'k')"
        ));
        assert!(one::<bool>(
            "SELECT matches IS NULL FROM idem_check('check_matches', 'k', NULL)"
        ));
        // Timestamps: created now, expires a day later.
        assert!(one::<bool>(
            "SELECT created_at BETWEEN clock_timestamp() - interval '5 seconds' AND clock_timestamp() \
                    AND expires_at = created_at + interval '24 hours' \
             FROM idem_check('check_matches', 'k')"
        ));
    }

    #[pg_test]
    fn check_shows_lease_only_while_in_progress() {
        for key in ["c", "f", "r"] {
            begin(&format!(
                r#"'check_lease', '{key}', '{{}}', lease => '30 seconds'"#
            ));
        }
        assert!(one::<bool>(
            "SELECT bool_and(c.lease_expires_at BETWEEN clock_timestamp() + interval '25 seconds' \
                                                  AND clock_timestamp() + interval '30 seconds') \
             FROM unnest(array['c', 'f', 'r']) k, LATERAL idem_check('check_lease', k) c"
        ));
        run("SELECT idem_complete('check_lease', 'c')");
        run("SELECT idem_fail('check_lease', 'f', retryable => false)");
        run("SELECT idem_fail('check_lease', 'r', retryable => true)");
        assert!(one::<bool>(
            "SELECT bool_and(c.lease_expires_at IS NULL) AND count(*) = 3 \
             FROM unnest(array['c', 'f', 'r']) k, LATERAL idem_check('check_lease', k) c"
        ));
        begin(r#"'check_lease', 'r', '{}'"#);
        assert!(one::<bool>(
            "SELECT lease_expires_at IS NOT NULL FROM idem_check('check_lease', 'r')"
        ));
    }

    #[pg_test]
    fn check_takes_no_lock_and_only_execute_keeps_one() {
        // The key lock shows in pg_locks as an advisory lock with objsubid 7655.
        const LOCKS: &str = "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 7655 AND pid = pg_backend_pid()";
        assert_eq!(check("'locks', 'k'"), ABSENT);
        assert_eq!(one::<i64>(LOCKS), 0);
        begin(r#"'locks', 'k', '{}'"#);
        assert_eq!(one::<i64>(LOCKS), 1);
        check("'locks', 'k'");
        begin(r#"'locks', 'k', '{}'"#);
        assert_eq!(one::<i64>(LOCKS), 1);
        run("SELECT idem_complete('locks', 'k')");
        assert_eq!(one::<i64>(LOCKS), 1);
        assert_eq!(
            begin(r#"'locks', 'k', '{}'"#),
            "replay | completed | 1 | NULL | NULL | 200 | NULL | NULL"
        );
        // A second key: its own lock.
        begin(r#"'locks', 'k2', '{}'"#);
        assert_eq!(one::<i64>(LOCKS), 2);
    }

    #[pg_test]
    fn fingerprints_equal_commands_alike() {
        let a = Spi::get_one::<Vec<u8>>("SELECT idem_fingerprint('{\"b\":1,\"a\":2.0}')").unwrap();
        let b = Spi::get_one::<Vec<u8>>("SELECT idem_fingerprint('{ \"a\": 2, \"b\": 1.00 }')")
            .unwrap();
        assert_eq!(a, b);
    }

    #[pg_test]
    fn fingerprint_is_sha256_of_canonical_text() {
        assert_eq!(
            one::<i32>(r#"SELECT octet_length(idem_fingerprint('{"b":1,"a":2.0}'))"#),
            32
        );
        assert!(one::<bool>(
            r#"SELECT idem_fingerprint(c) = sha256(convert_to(idem_canonical(c), 'UTF8'))
               FROM (VALUES ('{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}'::jsonb),
                            ('"é€😀"'), ('12345678901234567891'), ('[]')) v(c)"#
        ));
        assert_eq!(
            one::<String>(r#"SELECT encode(idem_fingerprint('{"b":1,"a":2.0}'), 'hex')"#),
            one::<String>(r#"SELECT encode(sha256('{"a":2,"b":1}'::bytea), 'hex')"#)
        );
    }

    #[pg_test]
    fn fingerprint_tells_apart_neighbouring_large_integers() {
        assert!(one::<bool>(
            "SELECT idem_fingerprint('12345678901234567891') \
                    <> idem_fingerprint('12345678901234567890')"
        ));
        assert!(one::<bool>(
            r#"SELECT idem_fingerprint('{"amount": 12345678901234567891}')
                      <> idem_fingerprint('{"amount": 12345678901234567890}')"#
        ));
        // Equal values, different spellings: one fingerprint.
        assert!(one::<bool>(
            "SELECT idem_fingerprint('1.50') = idem_fingerprint('15e-1') \
                    AND idem_fingerprint('-0') = idem_fingerprint('0.000')"
        ));
    }

    /// The frozen vectors (core/tests/vectors/fingerprints-v1.tsv, made by an independent
    /// ECMAScript implementation): every row's command, cast to jsonb by this server, must
    /// give the frozen canonical text and fingerprint byte for byte. scripts/vectors.sh
    /// checks the same file over a client connection on any PostgreSQL version.
    #[pg_test]
    fn reproduces_frozen_fingerprint_vectors() {
        const VECTORS: &str = include_str!("../core/tests/vectors/fingerprints-v1.tsv");
        let mut rows = 0;
        let mut failures = Vec::new();
        for line in VECTORS.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [command, canonical, sha256] = cols[..] else {
                panic!("expected three tab-separated columns: {line}");
            };
            let got_canonical = Spi::get_one_with_args::<String>(
                "SELECT idem_canonical($1::jsonb)",
                &[command.into()],
            )
            .unwrap();
            let got_sha256 = Spi::get_one_with_args::<String>(
                "SELECT encode(idem_fingerprint($1::jsonb), 'hex')",
                &[command.into()],
            )
            .unwrap();
            if got_canonical.as_deref() != Some(canonical) || got_sha256.as_deref() != Some(sha256)
            {
                failures.push(format!(
                    "{command}: canonical {got_canonical:?} (frozen {canonical}), \
                     fingerprint {got_sha256:?} (frozen {sha256})"
                ));
            }
            rows += 1;
        }
        assert!(rows >= 400, "only {rows} vectors");
        assert!(
            failures.is_empty(),
            "{} of {rows} vectors differ:\n{}",
            failures.len(),
            failures[..failures.len().min(10)].join("\n")
        );
    }

    #[pg_test]
    fn fingerprint_and_canonical_are_strict() {
        assert!(one::<bool>(
            "SELECT idem_fingerprint(NULL) IS NULL AND idem_canonical(NULL) IS NULL"
        ));
        assert!(one::<bool>(
            "SELECT bool_and(p.provolatile = 'i' AND p.proisstrict AND p.proparallel = 's') \
             FROM pg_proc p WHERE p.oid IN ('idem_fingerprint(jsonb)'::regprocedure, \
                                            'idem_canonical(jsonb)'::regprocedure)"
        ));
    }

    #[pg_test]
    fn canonical_text_is_exact() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}"#,
                r#"{"a":[2,1e+21,0,"x\ny"],"b":1,"c":null}"#,
            ),
            (r#"{ "a": 2, "b": 1.00 }"#, r#"{"a":2,"b":1}"#),
            // numbers: exact value, ECMAScript layout
            ("1.50", "1.5"),
            ("10.0", "10"),
            ("-0", "0"),
            ("-0.000e5", "0"),
            ("0.1", "0.1"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("999999999999999999999", "999999999999999999999"),
            ("1000000000000000000000", "1e+21"),
            ("0.000001", "0.000001"),
            ("1e-6", "0.000001"),
            ("0.0000001", "1e-7"),
            ("123e-9", "1.23e-7"),
            ("-1.5E+300", "-1.5e+300"),
            ("1E400", "1e+400"),
            ("5e-324", "5e-324"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("12345678901234567891", "12345678901234567891"),
            (
                "123456789012345678901234",
                "1.23456789012345678901234e+23",
            ),
            ("-123.4500", "-123.45"),
            ("1.5e1", "15"),
            ("12e-1", "1.2"),
            // literals and empty containers
            ("null", "null"),
            ("true", "true"),
            ("false", "false"),
            ("[]", "[]"),
            ("{}", "{}"),
            (r#"[ [ ] , { } ]"#, "[[],{}]"),
            // strings: RFC 8785 escaping
            (
                r#""\u0001\u001f\b\f\t\r\n\"\\\/""#,
                r#""\u0001\u001f\b\f\t\r\n\"\\/""#,
            ),
            (r#""\u007f\u0080\u00e9\u20ac\ud83d\ude00""#, "\"\u{7f}\u{80}é€😀\""),
            (r#""\u2028\u2029<>&'""#, "\"\u{2028}\u{2029}<>&'\""),
            // members sorted by UTF-16 code units, recursively; the last duplicate wins
            (
                r#"{"\u20ac":1,"\r":2,"\ufb33":3,"1":4,"\ud83d\ude00":5,"\u0080":6,"\u00f6":7}"#,
                "{\"\\r\":2,\"1\":4,\"\u{80}\":6,\"\u{f6}\":7,\"\u{20ac}\":1,\"\u{1f600}\":5,\"\u{fb33}\":3}",
            ),
            (
                r#"{"z":{"b":[],"a":{}},"a":[{"y":true,"x":false}],"aa":1,"B":0}"#,
                r#"{"B":0,"a":[{"x":false,"y":true}],"aa":1,"z":{"a":{},"b":[]}}"#,
            ),
            (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
            (r#"["b","a",3,2,1]"#, r#"["b","a",3,2,1]"#),
        ];
        for (input, expected) in cases {
            let got: String = Spi::get_one_with_args::<String>(
                "SELECT idem_canonical($1::jsonb)",
                &[(*input).into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(&got, expected, "idem_canonical('{input}')");
        }
    }

    #[pg_test]
    fn purge_deletes_only_expired_records_within_max_rows() {
        setup();
        // Expired records committed by others (there should be none) are cleared first.
        run("SELECT idem_purge(1000000)");
        for key in ["e1", "e2", "e3"] {
            begin(&format!(
                r#"'purge', '{key}', '{{}}', ttl => '1 millisecond'"#
            ));
        }
        begin(r#"'purge', 'live', '{}'"#);
        begin(r#"'purge', 'done', '{}'"#);
        run("SELECT idem_complete('purge', 'done')");
        sleep(0.01);
        assert_eq!(one::<i64>("SELECT idem_purge(2)"), 2);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM idempotency.records WHERE scope = 'purge'"),
            3
        );
        assert_eq!(one::<i64>("SELECT idem_purge()"), 1);
        assert_eq!(one::<i64>("SELECT idem_purge()"), 0);
        assert_eq!(
            one::<String>(
                "SELECT string_agg(key, ',' ORDER BY key) FROM idempotency.records \
                 WHERE scope = 'purge'"
            ),
            "done,live"
        );
        assert!(one::<bool>(
            "SELECT pg_typeof(idem_purge()) = 'bigint'::regtype"
        ));
        assert_sqlstate("SELECT idem_purge(0)", "22023");
        assert_sqlstate("SELECT idem_purge(-1)", "22023");
        assert_sqlstate("SELECT idem_purge(NULL)", "22004");
    }

    #[pg_test]
    fn forget_evicts_live_record_only() {
        begin(r#"'forget', 'live', '{"a": 1}'"#);
        begin(r#"'forget', 'done', '{"a": 1}'"#);
        run("SELECT idem_complete('forget', 'done')");
        begin(r#"'forget', 'old', '{"a": 1}', ttl => '1 millisecond'"#);
        sleep(0.01);
        assert!(one::<bool>("SELECT idem_forget('forget', 'live')"));
        assert!(one::<bool>("SELECT idem_forget('forget', 'done')"));
        assert!(!one::<bool>("SELECT idem_forget('forget', 'live')"));
        assert!(!one::<bool>("SELECT idem_forget('forget', 'absent')"));
        assert!(!one::<bool>("SELECT idem_forget('forget', 'old')"));
        assert_eq!(check("'forget', 'live'"), ABSENT);
        assert_eq!(check("'forget', 'done'"), ABSENT);
        // A forgotten key starts afresh, with any command.
        assert_eq!(
            begin(r#"'forget', 'done', '{"b": 2}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
    }

    // ----------------------------------------------------------------------------------
    // SQLSTATEs.

    #[pg_test]
    fn settling_key_not_in_progress_is_ik002() {
        setup();
        begin(r#"'ik002', 'expired', '{}', ttl => '1 millisecond'"#);
        begin(r#"'ik002', 'completed', '{}'"#);
        run("SELECT idem_complete('ik002', 'completed')");
        begin(r#"'ik002', 'failed', '{}'"#);
        run("SELECT idem_fail('ik002', 'failed', retryable => true)");
        begin(r#"'ik002', 'final', '{}'"#);
        run("SELECT idem_fail('ik002', 'final', retryable => false)");
        sleep(0.01);
        for key in ["absent", "expired", "completed", "failed", "final"] {
            for call in [
                format!("idem_complete('ik002', '{key}')"),
                format!("idem_fail('ik002', '{key}')"),
                format!("idem_checkpoint('ik002', '{key}', 'p')"),
                format!("idem_complete('ik002', '{key}', attempt => 1)"),
                format!("idem_fail('ik002', '{key}', attempt => 1)"),
                format!("idem_checkpoint('ik002', '{key}', 'p', attempt => 1)"),
            ] {
                assert_sqlstate(&format!("SELECT {call}"), "IK002");
            }
        }
        // The refused calls changed nothing.
        assert_eq!(
            check("'ik002', 'completed'"),
            "completed | NULL | 1 | NULL | 200 | NULL | NULL | set | set | NULL"
        );
        assert_eq!(
            check("'ik002', 'final'"),
            "failed | NULL | 1 | NULL | 500 | NULL | NULL | set | set | NULL"
        );
        assert_eq!(check("'ik002', 'absent'"), ABSENT);
    }

    #[pg_test]
    fn stale_attempt_after_takeover_is_ik003() {
        setup();
        begin(r#"'ik003', 'k', '{}', lease => '10 milliseconds'"#);
        sleep(0.02);
        assert_eq!(
            begin(r#"'ik003', 'k', '{}'"#),
            "execute | in_progress | 2 | NULL | NULL | NULL | NULL | NULL"
        );
        assert_sqlstate("SELECT idem_complete('ik003', 'k', attempt => 1)", "IK003");
        assert_sqlstate("SELECT idem_fail('ik003', 'k', attempt => 1)", "IK003");
        assert_sqlstate(
            "SELECT idem_checkpoint('ik003', 'k', 'p', attempt => 1)",
            "IK003",
        );
        assert_sqlstate("SELECT idem_complete('ik003', 'k', attempt => 3)", "IK003");
        // The current holder settles.
        assert_ok("SELECT idem_checkpoint('ik003', 'k', 'p', attempt => 2)");
        assert_ok("SELECT idem_complete('ik003', 'k', attempt => 2)");
        // The stale holder still learns that it was fenced off.
        assert_sqlstate("SELECT idem_complete('ik003', 'k', attempt => 1)", "IK003");
        assert_eq!(
            check("'ik003', 'k'"),
            "completed | NULL | 2 | NULL | 200 | NULL | NULL | set | set | NULL"
        );
    }

    #[pg_test]
    fn null_arguments_are_22004() {
        setup();
        begin(r#"'null_args', 'k', '{}'"#);
        for sql in [
            "SELECT idem_begin(NULL, 'k', '{}')",
            "SELECT idem_begin('null_args', NULL, '{}')",
            "SELECT idem_begin('null_args', 'k', NULL)",
            "SELECT idem_begin('null_args', 'new', NULL)",
            "SELECT idem_complete(NULL, 'k')",
            "SELECT idem_complete('null_args', NULL)",
            "SELECT idem_complete('null_args', 'k', http_status => NULL)",
            "SELECT idem_fail(NULL, 'k')",
            "SELECT idem_fail('null_args', NULL)",
            "SELECT idem_fail('null_args', 'k', retryable => NULL)",
            "SELECT idem_fail('null_args', 'k', http_status => NULL)",
            "SELECT idem_checkpoint(NULL, 'k', 'p')",
            "SELECT idem_checkpoint('null_args', NULL, 'p')",
            "SELECT idem_checkpoint('null_args', 'k', NULL)",
            "SELECT idem_check(NULL, 'k')",
            "SELECT idem_check('null_args', NULL)",
            "SELECT idem_forget(NULL, 'k')",
            "SELECT idem_forget('null_args', NULL)",
            "SELECT idem_purge(NULL)",
        ] {
            assert_sqlstate(sql, "22004");
        }
        // NULL for the optional arguments means the default.
        assert_ok("SELECT idem_begin('null_args', 'k2', '{}', NULL, NULL, NULL)");
        assert_ok("SELECT idem_checkpoint('null_args', 'k2', 'p', NULL, NULL)");
        assert_ok("SELECT idem_complete('null_args', 'k2', NULL, NULL, 201, NULL)");
        assert_eq!(
            check("'null_args', 'k'"),
            "in_progress | NULL | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
    }

    #[pg_test]
    fn empty_or_control_character_scope_or_key_is_22023() {
        setup();
        for bad in [
            "''",
            "E'k\\n1'",
            "E'k\\t1'",
            "E'\\r'",
            "E'k\\x01'",
            "'k' || chr(127)",
            "'k' || chr(133)",
            "chr(31) || 'k'",
        ] {
            for sql in [
                format!("SELECT idem_begin({bad}, 'k', '{{}}')"),
                format!("SELECT idem_begin('ctl', {bad}, '{{}}')"),
                format!("SELECT idem_complete({bad}, 'k')"),
                format!("SELECT idem_complete('ctl', {bad})"),
                format!("SELECT idem_fail('ctl', {bad})"),
                format!("SELECT idem_checkpoint('ctl', {bad}, 'p')"),
                format!("SELECT idem_check('ctl', {bad})"),
                format!("SELECT idem_check({bad}, 'k')"),
                format!("SELECT idem_forget('ctl', {bad})"),
            ] {
                assert_sqlstate(&sql, "22023");
            }
        }
        // Printable Unicode, spaces and punctuation are fine.
        assert_eq!(
            begin(r#"'tenant:42 POST /v1/payments', 'ключ €😀 "x"', '{}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
    }

    #[pg_test]
    fn scope_and_key_limit_is_255_bytes() {
        setup();
        // 255 bytes: accepted; 256: refused.
        assert_ok("SELECT idem_begin('len', repeat('a', 255), '{}')");
        assert_ok("SELECT idem_begin(repeat('s', 255), 'k', '{}')");
        assert_sqlstate("SELECT idem_begin('len', repeat('a', 256), '{}')", "22023");
        assert_sqlstate("SELECT idem_begin(repeat('s', 256), 'k', '{}')", "22023");
        assert_sqlstate("SELECT idem_check('len', repeat('a', 256))", "22023");
        assert_sqlstate("SELECT idem_complete('len', repeat('a', 256))", "22023");
        assert_sqlstate("SELECT idem_forget('len', repeat('a', 256))", "22023");
        // Bytes, not characters: 127 two-byte characters and one byte make 255 bytes...
        assert_ok("SELECT idem_begin('len', repeat('é', 127) || 'a', '{}')");
        // ...254 one-byte and one two-byte character are 255 characters but 256 bytes...
        assert_sqlstate(
            "SELECT idem_begin('len', repeat('a', 254) || 'é', '{}')",
            "22023",
        );
        // ...and 128 two-byte characters are 256 bytes; a 4-byte character across the limit.
        assert_sqlstate("SELECT idem_begin('len', repeat('é', 128), '{}')", "22023");
        assert_sqlstate(
            "SELECT idem_begin('len', repeat('a', 252) || '😀', '{}')",
            "22023",
        );
        assert_ok("SELECT idem_begin('len', repeat('a', 251) || '😀', '{}')");
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM idempotency.records \
                 WHERE scope = 'len' OR scope = repeat('s', 255)"
            ),
            4
        );
    }

    #[pg_test]
    fn http_status_outside_100_to_599_is_22023() {
        setup();
        begin(r#"'status', 'k', '{}'"#);
        for status in ["99", "600", "0", "-200", "2147483647"] {
            assert_sqlstate(
                &format!("SELECT idem_complete('status', 'k', http_status => {status})"),
                "22023",
            );
            assert_sqlstate(
                &format!("SELECT idem_fail('status', 'k', http_status => {status})"),
                "22023",
            );
        }
        // Still in progress, and the bounds themselves are accepted.
        assert_ok("SELECT idem_fail('status', 'k', http_status => 599)");
        begin(r#"'status', 'k', '{}'"#);
        assert_ok("SELECT idem_complete('status', 'k', http_status => 100)");
        assert_eq!(
            check("'status', 'k'"),
            "completed | NULL | 2 | NULL | 100 | NULL | NULL | set | set | NULL"
        );
    }

    #[pg_test]
    fn ttl_and_lease_not_positive_and_negative_wait_are_22023() {
        setup();
        for bad in [
            "ttl => '0'",
            "ttl => '-1 second'",
            "ttl => '-1 day'",
            "ttl => '-1 microsecond'",
            "lease => '0 seconds'",
            "lease => '-5 minutes'",
            "lease => '-1 mon'",
            "wait => '-1 millisecond'",
            "wait => '-1 day'",
        ] {
            assert_sqlstate(
                &format!("SELECT idem_begin('durations', 'k', '{{}}', {bad})"),
                "22023",
            );
        }
        assert_eq!(check("'durations', 'k'"), ABSENT);
        assert_ok(
            "SELECT idem_begin('durations', 'k', '{}', ttl => '1 microsecond', \
                               lease => '1 microsecond', wait => '0')",
        );
    }

    #[pg_test]
    fn command_over_max_command_size_is_22023() {
        setup();
        assert_eq!(
            one::<String>("SELECT current_setting('idempotency.max_command_size')"),
            "1MB"
        );
        // Over the default 1 MB.
        assert_sqlstate(
            "SELECT idem_begin('cmd_size', 'big', jsonb_build_object('pad', repeat('x', 1100000)))",
            "22023",
        );
        run("SET idempotency.max_command_size = '1kB'");
        assert_sqlstate(
            "SELECT idem_begin('cmd_size', 'k', jsonb_build_object('pad', repeat('x', 2000)))",
            "22023",
        );
        assert_sqlstate(
            "SELECT idem_check('cmd_size', 'k', jsonb_build_object('pad', repeat('x', 2000)))",
            "22023",
        );
        assert_ok(
            "SELECT idem_begin('cmd_size', 'k', jsonb_build_object('pad', repeat('x', 900)))",
        );
        // idem_fingerprint and idem_canonical have no limit.
        assert_ok("SELECT idem_fingerprint(jsonb_build_object('pad', repeat('x', 2000)))");
    }

    #[pg_test]
    fn response_over_max_response_size_is_22023() {
        setup();
        assert_eq!(
            one::<String>("SELECT current_setting('idempotency.max_response_size')"),
            "1MB"
        );
        begin(r#"'resp_size', 'k', '{}'"#);
        run("SET idempotency.max_response_size = '1kB'");
        let big = "jsonb_build_object('pad', repeat('x', 2000))";
        for sql in [
            format!("SELECT idem_complete('resp_size', 'k', {big})"),
            "SELECT idem_complete('resp_size', 'k', resource => repeat('r', 2000))".to_owned(),
            format!("SELECT idem_fail('resp_size', 'k', {big})"),
            format!("SELECT idem_checkpoint('resp_size', 'k', 'p', {big})"),
            "SELECT idem_checkpoint('resp_size', 'k', repeat('p', 2000))".to_owned(),
        ] {
            assert_sqlstate(&sql, "22023");
        }
        assert_eq!(
            check("'resp_size', 'k'"),
            "in_progress | NULL | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
        assert_ok(
            "SELECT idem_complete('resp_size', 'k', jsonb_build_object('pad', repeat('x', 900)))",
        );
    }

    #[pg_test]
    fn other_role_gets_42501_from_every_function() {
        setup();
        run("CREATE ROLE idem_test_owner_a");
        run("CREATE ROLE idem_test_other_b");
        run("SET ROLE idem_test_owner_a");
        assert_eq!(
            begin(r#"'roles', 'k', '{"a": 1}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
        begin(r#"'roles', 'done', '{"a": 1}'"#);
        run("SELECT idem_complete('roles', 'done', '{\"id\": 1}', 'r/1', 201)");
        // The owner cannot read the table directly either.
        assert_sqlstate("SELECT * FROM idempotency.records", "42501");
        run("SET ROLE idem_test_other_b");
        for key in ["k", "done"] {
            for sql in [
                format!(r#"SELECT idem_begin('roles', '{key}', '{{"a": 1}}')"#),
                // A different command is 42501 too: nothing about the record is revealed.
                format!(r#"SELECT idem_begin('roles', '{key}', '{{"a": 2}}')"#),
                format!("SELECT idem_complete('roles', '{key}')"),
                format!("SELECT idem_fail('roles', '{key}')"),
                format!("SELECT idem_checkpoint('roles', '{key}', 'p')"),
                format!("SELECT idem_check('roles', '{key}')"),
                format!(r#"SELECT idem_check('roles', '{key}', '{{"a": 1}}')"#),
                format!("SELECT idem_forget('roles', '{key}')"),
            ] {
                assert_sqlstate(&sql, "42501");
            }
        }
        assert_sqlstate("SELECT * FROM idempotency.records", "42501");
        assert_sqlstate("SELECT count(*) FROM idempotency.records", "42501");
        assert_sqlstate("DELETE FROM idempotency.records", "42501");
        // A key of its own works as usual.
        assert_eq!(
            begin(r#"'roles', 'mine', '{"a": 1}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
        run("RESET ROLE");
        // The owner's records are untouched; a superuser sees them.
        assert_eq!(
            check("'roles', 'k'"),
            "in_progress | NULL | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
        assert_eq!(
            check("'roles', 'done'"),
            r#"completed | NULL | 1 | NULL | 201 | {"id": 1} | r/1 | set | set | NULL"#
        );
        assert_eq!(
            one::<String>(
                "SELECT string_agg(key || ':' || owner::text, ',' ORDER BY key) \
                 FROM idempotency.records WHERE scope = 'roles'"
            ),
            "done:idem_test_owner_a,k:idem_test_owner_a,mine:idem_test_other_b"
        );
    }

    #[pg_test]
    fn other_role_may_reuse_expired_key() {
        setup();
        run("CREATE ROLE idem_test_old_owner");
        run("CREATE ROLE idem_test_new_owner");
        run("SET ROLE idem_test_old_owner");
        begin(r#"'reuse', 'k', '{"a": 1}', ttl => '1 millisecond'"#);
        sleep(0.01);
        run("SET ROLE idem_test_new_owner");
        // Expired counts as none, for every role: no 42501.
        assert_eq!(check("'reuse', 'k'"), ABSENT);
        assert!(!one::<bool>("SELECT idem_forget('reuse', 'k')"));
        assert_eq!(
            begin(r#"'reuse', 'k', '{"b": 2}'"#),
            "execute | in_progress | 1 | NULL | NULL | NULL | NULL | NULL"
        );
        run("SET ROLE idem_test_old_owner");
        assert_sqlstate("SELECT idem_check('reuse', 'k')", "42501");
        run("RESET ROLE");
        assert_eq!(
            one::<String>("SELECT owner::text FROM idempotency.records WHERE scope = 'reuse'"),
            "idem_test_new_owner"
        );
    }

    #[pg_test]
    fn member_of_owner_role_may_use_record() {
        setup();
        run("CREATE ROLE idem_test_team");
        run("CREATE ROLE idem_test_member");
        run("GRANT idem_test_team TO idem_test_member");
        run("SET ROLE idem_test_team");
        begin(r#"'members', 'k', '{"a": 1}'"#);
        run("SET ROLE idem_test_member");
        assert_eq!(
            begin(r#"'members', 'k', '{"a": 1}'"#),
            "in_progress | in_progress | 1 | NULL | NULL | 409 | NULL | NULL"
        );
        assert_sqlstate(r#"SELECT idem_begin('members', 'k', '{"a": 2}')"#, "IK001");
        assert_ok("SELECT idem_checkpoint('members', 'k', 'p')");
        assert_ok("SELECT idem_complete('members', 'k', resource => 'r/1')");
        assert_eq!(
            check(r#"'members', 'k', '{"a": 1}'"#),
            "completed | true | 1 | NULL | 200 | NULL | r/1 | set | set | NULL"
        );
        assert!(one::<bool>("SELECT idem_forget('members', 'k')"));
        run("RESET ROLE");
    }

    #[pg_test]
    fn writes_in_read_only_transaction_are_25006() {
        setup();
        begin(r#"'read_only', 'k', '{"a": 1}'"#);
        run("SET transaction_read_only = on");
        assert_eq!(one::<String>("SHOW transaction_read_only"), "on");
        for sql in [
            r#"SELECT idem_begin('read_only', 'new', '{"a": 1}')"#,
            r#"SELECT idem_begin('read_only', 'k', '{"a": 1}')"#,
            "SELECT idem_complete('read_only', 'k')",
            "SELECT idem_fail('read_only', 'k')",
            "SELECT idem_checkpoint('read_only', 'k', 'p')",
            "SELECT idem_purge()",
            "SELECT idem_forget('read_only', 'k')",
        ] {
            assert_sqlstate(sql, "25006");
        }
        // Reading works.
        assert_eq!(
            check(r#"'read_only', 'k', '{"a": 1}'"#),
            "in_progress | true | 1 | NULL | NULL | NULL | NULL | set | set | set"
        );
        assert_eq!(check("'read_only', 'new'"), ABSENT);
    }

    // ----------------------------------------------------------------------------------
    // Settings.

    #[pg_test]
    fn settings_exist_with_documented_defaults() {
        for (name, default) in [
            ("idempotency.ttl", "1d"),
            ("idempotency.lease", "1min"),
            ("idempotency.wait", "0"),
            ("idempotency.max_command_size", "1MB"),
            ("idempotency.max_response_size", "1MB"),
        ] {
            assert_eq!(
                one::<String>(&format!("SELECT current_setting('{name}')")),
                default,
                "{name}"
            );
            assert_eq!(
                one::<String>(&format!("SHOW {name}")),
                default,
                "SHOW {name}"
            );
            assert_eq!(
                one::<String>(&format!(
                    "SELECT context FROM pg_settings WHERE name = '{name}'"
                )),
                "user",
                "{name}"
            );
        }
    }

    #[pg_test]
    fn settings_accept_units_and_feed_null_arguments() {
        setup();
        run("SET idempotency.ttl = '1h'");
        assert_eq!(one::<String>("SHOW idempotency.ttl"), "1h");
        run("SET idempotency.lease = '5min'");
        assert_eq!(one::<String>("SHOW idempotency.lease"), "5min");
        run("SET idempotency.wait = '250ms'");
        assert_eq!(one::<String>("SHOW idempotency.wait"), "250ms");
        run("SET idempotency.max_command_size = '64kB'");
        assert_eq!(one::<String>("SHOW idempotency.max_command_size"), "64kB");
        run("SET idempotency.max_response_size = '2MB'");
        assert_eq!(one::<String>("SHOW idempotency.max_response_size"), "2MB");
        run("SET idempotency.wait = 0");
        assert!(one::<bool>(
            "SELECT expires_at BETWEEN clock_timestamp() + interval '1 hour' - interval '5 seconds' \
                                   AND clock_timestamp() + interval '1 hour' \
             FROM idem_begin('settings', 'k', '{}')"
        ));
        assert!(one::<bool>(
            "SELECT expires_at = created_at + interval '1 hour' \
                    AND lease_expires_at BETWEEN clock_timestamp() + interval '295 seconds' \
                                             AND clock_timestamp() + interval '5 minutes' \
             FROM idem_check('settings', 'k')"
        ));
        // An explicit argument wins over the setting.
        assert!(one::<bool>(
            "SELECT expires_at BETWEEN clock_timestamp() + interval '48 hours' - interval '5 seconds' \
                                   AND clock_timestamp() + interval '48 hours' \
             FROM idem_begin('settings', 'k2', '{}', ttl => '48 hours')"
        ));
        // Out of range.
        assert_sqlstate("SET idempotency.ttl = 0", "22023");
        assert_sqlstate("SET idempotency.lease = '-1s'", "22023");
        assert_sqlstate("SET idempotency.wait = '-1ms'", "22023");
        assert_sqlstate("SET idempotency.max_command_size = 0", "22023");
        // Per role.
        run("CREATE ROLE idem_test_settings");
        run("ALTER ROLE idem_test_settings SET idempotency.ttl = '2h'");
        assert_eq!(
            one::<String>(
                "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting \
                 WHERE setrole = 'idem_test_settings'::regrole"
            ),
            "idempotency.ttl=2h"
        );
    }

    // ----------------------------------------------------------------------------------
    // The table.

    #[pg_test]
    fn records_table_grants_nothing_to_public() {
        assert!(one::<bool>(
            "SELECT NOT EXISTS ( \
                 SELECT 1 FROM aclexplode(relacl) WHERE grantee = 0) \
             FROM pg_class WHERE oid = 'idempotency.records'::regclass"
        ));
        assert!(one::<bool>(
            "SELECT NOT EXISTS ( \
                 SELECT 1 FROM aclexplode(nspacl) WHERE grantee = 0) \
             FROM pg_namespace WHERE nspname = 'idempotency'"
        ));
        run("CREATE ROLE idem_test_nobody");
        assert!(one::<bool>(
            "SELECT NOT has_table_privilege('idem_test_nobody', 'idempotency.records', \
                        'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') \
                    AND NOT has_schema_privilege('idem_test_nobody', 'idempotency', 'USAGE, CREATE')"
        ));
    }

    #[pg_test]
    fn records_table_is_dumped_as_extension_config() {
        assert!(one::<bool>(
            "SELECT 'idempotency.records'::regclass = ANY (extconfig) \
             FROM pg_extension WHERE extname = 'idempotency'"
        ));
    }

    #[pg_test]
    fn completion_is_hot_update() {
        begin(r#"'hot', 'k', '{"a": 1}'"#);
        run(r#"SELECT idem_checkpoint('hot', 'k', 'p', '{"x": 1}')"#);
        run(r#"SELECT idem_complete('hot', 'k', '{"id": 1}', 'r/1', 201)"#);
        assert_eq!(
            one::<i64>("SELECT pg_stat_get_xact_tuples_inserted('idempotency.records'::regclass)"),
            1
        );
        assert_eq!(
            one::<i64>("SELECT pg_stat_get_xact_tuples_updated('idempotency.records'::regclass)"),
            2
        );
        assert_eq!(
            one::<i64>(
                "SELECT pg_stat_get_xact_tuples_hot_updated('idempotency.records'::regclass)"
            ),
            2
        );
        // A retry after a failure and a takeover are HOT too.
        begin(r#"'hot', 'f', '{"a": 1}', lease => '1 millisecond'"#);
        sleep(0.01);
        begin(r#"'hot', 'f', '{"a": 1}'"#);
        run("SELECT idem_fail('hot', 'f')");
        begin(r#"'hot', 'f', '{"a": 1}'"#);
        assert_eq!(
            one::<i64>(
                "SELECT pg_stat_get_xact_tuples_hot_updated('idempotency.records'::regclass)"
            ),
            5
        );
    }

    // ----------------------------------------------------------------------------------
    // Number precision.

    #[pg_test]
    fn rejects_same_key_with_neighbouring_large_integer() {
        setup();
        begin(r#"'precision', 'int', '{"amount": 12345678901234567891}'"#);
        assert_sqlstate(
            r#"SELECT idem_begin('precision', 'int', '{"amount": 12345678901234567890}')"#,
            "IK001",
        );
        run("SELECT idem_complete('precision', 'int')");
        assert_sqlstate(
            r#"SELECT idem_begin('precision', 'int', '{"amount": 12345678901234567890}')"#,
            "IK001",
        );
        assert_eq!(
            begin(r#"'precision', 'int', '{"amount": 12345678901234567891}'"#),
            "replay | completed | 1 | NULL | NULL | 200 | NULL | NULL"
        );
        // Also past double precision at the far end of the digits.
        begin(r#"'precision', 'frac', '{"amount": 0.1000000000000000000001}'"#);
        assert_sqlstate(
            r#"SELECT idem_begin('precision', 'frac', '{"amount": 0.1}')"#,
            "IK001",
        );
    }

    #[pg_test]
    fn rejects_numeric_strings_that_differ() {
        setup();
        begin(r#"'precision_str', 'k', '{"amount": "10.00"}'"#);
        run("SELECT idem_complete('precision_str', 'k')");
        assert_sqlstate(
            r#"SELECT idem_begin('precision_str', 'k', '{"amount": "10.0"}')"#,
            "IK001",
        );
        assert_sqlstate(
            r#"SELECT idem_begin('precision_str', 'k', '{"amount": 10.00}')"#,
            "IK001",
        );
    }

    #[pg_test]
    fn replays_numbers_equal_in_value() {
        begin(r#"'precision_num', 'k', '{"amount": 10.00, "fee": 1.5e0}'"#);
        run(r#"SELECT idem_complete('precision_num', 'k', '{"id": 7}', http_status => 201)"#);
        for command in [
            r#"{"amount": 10, "fee": 1.5}"#,
            r#"{"fee": 15e-1, "amount": 1e1}"#,
            r#"{"amount": 10.000000, "fee": 1.50}"#,
        ] {
            assert_eq!(
                begin(&format!("'precision_num', 'k', '{command}'")),
                r#"replay | completed | 1 | NULL | NULL | 201 | {"id": 7} | NULL"#,
                "{command}"
            );
        }
    }

    // ----------------------------------------------------------------------------------
    // The core's jsonb model against PostgreSQL's jsonb_in.

    /// The bytes of `jsonb_in(text)` after the varlena header.
    fn postgres_jsonb(text: &str) -> Vec<u8> {
        let cstring = std::ffi::CString::new(text).unwrap();
        // SAFETY: jsonb_in on a NUL-terminated string returns a jsonb varlena in the current
        // memory context; it is read, not kept.
        unsafe {
            let datum = pgrx::direct_function_call_as_datum(
                pg_sys::jsonb_in,
                &[cstring.as_c_str().into_datum()],
            )
            .expect("jsonb_in returned NULL");
            let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            let len = pgrx::varlena::varsize_any_exhdr(v);
            let data = pgrx::varlena::vardata_any(v).cast::<u8>();
            std::slice::from_raw_parts(data, len).to_vec()
        }
    }

    fn json_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "5",
            "-0",
            "0.00",
            "-0.00",
            "1.50",
            "1e1",
            "1E+2",
            "1.5e-3",
            "1e300",
            "-1e-64",
            "1e-400",
            "-9.99e999",
            "12345678901234567891",
            "0.000001",
            "123456789.123456789e-20",
            "3.14159265358979323846264338327950288419716939937510",
            "100000000",
            "0.0001",
            "99990000.00001",
            "null",
            "true",
            "false",
            "\"\"",
            "\"x\"",
            "[]",
            "{}",
            "[[],{}]",
            "[\"x\",1,[]]",
            r#"{"bb":null,"a":true,"bb":false}"#,
            r#""héllo wörld €😀 דּ""#,
            r#""esc \" \\ \/ \b \f \n \r \t \u0001 \u001f \u007f \u00e9 \ud83d\ude00""#,
            r#"{"\u20ac":1,"\r":2,"\ufb33":3,"1":4,"\ud83d\ude00":5,"\u0080":6,"\u00f6":7}"#,
            r#"[1,"ab",2.5,"abc",{"k":[true,null]},-7e-3,"é"]"#,
            r#"{"amount": "10.00", "currency": "EUR", "nested": {"z": [1, {"y": "w"}], "a": 0.5}}"#,
            r#"{"b":1,"a":[2.0,1e21,-0,"x\ny"],"c":null}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Containers with more than JB_OFFSET_STRIDE (32) children, keys of mixed lengths.
        let array: Vec<String> = (0..70)
            .map(|i| match i % 5 {
                0 => format!("{i}"),
                1 => format!("\"s{}\"", "x".repeat(i)),
                2 => format!("{i}.{i}e-{i}"),
                3 => "[true,false,null]".to_owned(),
                _ => format!("{{\"k{i}\":{i}}}"),
            })
            .collect();
        texts.push(format!("[{}]", array.join(",")));
        let object: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "\"{}\":{}",
                    "k".repeat(1 + i % 7) + &i.to_string(),
                    array[i % array.len()]
                )
            })
            .collect();
        texts.push(format!("{{{}}}", object.join(",")));
        let nested: Vec<String> = (0..33)
            .map(|i| {
                let inner: Vec<String> = (0..35).map(|j| format!("{}", i * 1000 + j)).collect();
                format!("\"key{i}\":[{}]", inner.join(","))
            })
            .collect();
        texts.push(format!("{{{}}}", nested.join(",")));
        // Long strings push the offsets past a byte.
        texts.push(format!(
            "[\"{}\",\"{}\",1.5]",
            "long".repeat(100),
            "é😀".repeat(300)
        ));
        let big_object: Vec<String> = (0..100)
            .map(|i| format!("\"{}\":\"{}\"", i, "v".repeat(i)))
            .collect();
        texts.push(format!("{{{}}}", big_object.join(",")));
        texts
    }

    #[pg_test]
    fn jsonb_model_matches_postgres_bytes() {
        let texts = json_texts();
        assert!(texts.len() >= 36);
        for text in &texts {
            let expected = postgres_jsonb(text);
            let model = crate::tests::model::to_jsonb(&crate::tests::model::parse(text));
            assert_eq!(model, expected, "jsonb bytes of {text}");
        }
    }
}
