-- roles_admin: ADMIN OPTION without the right to act as the role (PostgreSQL 16 and later).
-- Contract: from 16 a membership grant carries ADMIN, INHERIT and SET options of its own, and
-- a CREATEROLE role gets ADMIN OPTION with INHERIT FALSE and SET FALSE on each role it
-- creates. Such a holder administers the role but cannot act as it: idem_forget evicts the
-- role's live keys (true), while idem_check, idem_begin, idem_complete, idem_fail and
-- idem_checkpoint are 42501 on them, as for a stranger: an administrator may evict another
-- role's keys, not read its responses or write its outcomes. A member with neither INHERIT,
-- SET nor ADMIN OPTION gets 42501 from every function, idem_forget included. Before 16 every
-- member may SET ROLE and ADMIN OPTION comes with such a membership: the file stops there
-- (roles_admin_1.out), and eviction by ADMIN OPTION is pinned by roles on every version.
-- Roles are cluster-wide: the names are this file's own, dropped at the end.
SELECT current_setting('server_version_num')::int < 160000 AS before_16 \gset
\if :before_16
\quit
\endif
\set VERBOSITY sqlstate
\pset null (null)
CREATE ROLE idem_radm_app;
CREATE ROLE idem_radm_admin;     -- ADMIN OPTION on app, INHERIT FALSE, SET FALSE
CREATE ROLE idem_radm_bare;      -- a member of app with no option at all
CREATE ROLE idem_radm_creator CREATEROLE;
GRANT idem_radm_app TO idem_radm_admin WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;
GRANT idem_radm_app TO idem_radm_bare WITH INHERIT FALSE, SET FALSE;
-- a role created by a CREATEROLE role: its creator gets ADMIN OPTION on it
SET ROLE idem_radm_creator;
CREATE ROLE idem_radm_service;
RESET ROLE;
SELECT m.roleid::regrole AS role, m.member::regrole AS member,
       m.admin_option, m.inherit_option, m.set_option
  FROM pg_auth_members m
 WHERE m.roleid::regrole::text LIKE 'idem_radm_%'
 ORDER BY m.roleid::regrole::text, m.member::regrole::text;

SET ROLE idem_radm_app;
SELECT outcome FROM idem_begin('radm', 'k-open', '{"amount": 1}', lease => '1 hour');
SELECT outcome FROM idem_begin('radm', 'k-done', '{"amount": 2}');
SELECT idem_complete('radm', 'k-done', response => '{"card": "4111"}', resource => 'payments/2', http_status => 201);
SELECT outcome FROM idem_begin('radm', 'k-bare', '{"amount": 3}', lease => '1 hour');
RESET ROLE;
SET ROLE idem_radm_service;
SELECT outcome FROM idem_begin('radm', 'k-service', '{"amount": 4}');
SELECT idem_complete('radm', 'k-service', response => '{"card": "5500"}');
RESET ROLE;

-- the administrator: a member in the catalog's sense, without the role's privileges or SET
SET ROLE idem_radm_admin;
SELECT pg_has_role('idem_radm_app', 'MEMBER') AS member, pg_has_role('idem_radm_app', 'USAGE') AS usage,
       pg_has_role('idem_radm_app', 'SET') AS can_set, pg_has_role('idem_radm_app', 'MEMBER WITH ADMIN OPTION') AS admin;
-- it reads and writes nothing of app's
SELECT * FROM idem_check('radm', 'k-done');
SELECT * FROM idem_check('radm', 'k-done', '{"amount": 2}');
SELECT * FROM idem_begin('radm', 'k-done', '{"amount": 2}');
SELECT * FROM idem_begin('radm', 'k-open', '{"amount": 1}');
SELECT idem_complete('radm', 'k-open', response => '{"forged": true}');
SELECT idem_fail('radm', 'k-open', retryable => false);
SELECT idem_checkpoint('radm', 'k-open', 'p');
-- but it evicts app's keys
SELECT idem_forget('radm', 'k-open') AS evicted;
SELECT idem_forget('radm', 'k-done') AS evicted;
RESET ROLE;
-- the member with no option: nothing, not even eviction
SET ROLE idem_radm_bare;
SELECT * FROM idem_check('radm', 'k-bare');
SELECT idem_complete('radm', 'k-bare');
SELECT idem_forget('radm', 'k-bare');
RESET ROLE;
-- the CREATEROLE role on the role it created: the same as the administrator
SET ROLE idem_radm_creator;
SELECT * FROM idem_check('radm', 'k-service');
SELECT * FROM idem_begin('radm', 'k-service', '{"amount": 4}');
SELECT idem_forget('radm', 'k-service') AS evicted;
RESET ROLE;
-- what is left: app's claim on k-bare, untouched
SELECT key, state, owner FROM idempotency.records WHERE scope = 'radm' ORDER BY key;

DELETE FROM idempotency.records WHERE scope = 'radm';
DROP ROLE idem_radm_service, idem_radm_creator, idem_radm_bare, idem_radm_admin, idem_radm_app;
