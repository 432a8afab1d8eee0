-- settings: the extension's GUCs, their defaults, units, and how they feed NULL arguments.
-- Pins: idempotency.ttl (1d), idempotency.lease (1min), idempotency.wait (0),
-- idempotency.max_command_size (1MB) and idempotency.max_response_size (1MB) exist with
-- these defaults; the durations are settable by any user (context `user`), the size limits
-- by superusers only (context `superuser`: roles pins the refusal); SET takes units and SHOW
-- prints them back; idem_begin without ttl and lease uses the session's settings, and an
-- explicit argument wins; a per-role setting is stored (ALTER ROLE ... SET).
-- Values out of range (22023) are hostile_ranges'; the size limits applied are
-- hostile_ranges' and hostile_memory's; idempotency.wait in action is the isolation specs'.
\set VERBOSITY sqlstate
\pset null (null)
-- the settings exist once the library is loaded, which the first call of a function does
SELECT state FROM idem_check('settings', 'load');

-- settings_exist_with_documented_defaults
SELECT v.name, current_setting(v.name), s.context
  FROM (VALUES (1, 'idempotency.ttl'), (2, 'idempotency.lease'), (3, 'idempotency.wait'),
               (4, 'idempotency.max_command_size'), (5, 'idempotency.max_response_size')) AS v(n, name)
  LEFT JOIN pg_settings s ON s.name = v.name
 ORDER BY v.n;
SHOW idempotency.ttl;
SHOW idempotency.lease;
SHOW idempotency.wait;
SHOW idempotency.max_command_size;
SHOW idempotency.max_response_size;

-- settings_accept_units_and_feed_null_arguments
SET idempotency.ttl = '1h';
SHOW idempotency.ttl;
SET idempotency.lease = '5min';
SHOW idempotency.lease;
SET idempotency.wait = '250ms';
SHOW idempotency.wait;
SET idempotency.max_command_size = '64kB';
SHOW idempotency.max_command_size;
SET idempotency.max_response_size = '2MB';
SHOW idempotency.max_response_size;
SET idempotency.wait = 0;
-- ttl and lease from the session: 1 hour, 5 minutes
SELECT expires_at BETWEEN clock_timestamp() + interval '1 hour' - interval '5 seconds'
                      AND clock_timestamp() + interval '1 hour' AS ttl_of_setting
  FROM idem_begin('settings', 'k', '{}');
SELECT expires_at = created_at + interval '1 hour' AS expires_after_ttl,
       lease_expires_at BETWEEN clock_timestamp() + interval '295 seconds'
                            AND clock_timestamp() + interval '5 minutes' AS lease_of_setting
  FROM idem_check('settings', 'k');
-- an explicit argument wins over the setting
SELECT expires_at BETWEEN clock_timestamp() + interval '48 hours' - interval '5 seconds'
                      AND clock_timestamp() + interval '48 hours' AS ttl_of_argument
  FROM idem_begin('settings', 'k2', '{}', ttl => '48 hours');
-- per role (roles are cluster-wide: the name is this file's own, dropped below)
CREATE ROLE idem_settings_role;
ALTER ROLE idem_settings_role SET idempotency.ttl = '2h';
SELECT array_to_string(setconfig, ',') AS setconfig FROM pg_db_role_setting
 WHERE setrole = 'idem_settings_role'::regrole;
DROP ROLE idem_settings_role;

-- leave no record behind (other files count what idem_purge deletes)
DELETE FROM idempotency.records WHERE scope = 'settings';
