-- The extension's SQL: its private schema, the record table, and the SQL functions, whose
-- bodies are C-ABI functions in the extension's library (src/api.rs). Everything the
-- library's own queries touch is schema-qualified, operators included.

-- The canonical form hashes UTF-8 text: in another encoding a command's strings would hash to
-- other bytes than the same command's in a UTF8 database, so refuse to install there.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'idempotency requires a UTF8 database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('The database encoding is %s.', pg_catalog.getdatabaseencoding()),
                  HINT = 'Create the database with ENCODING ''UTF8''.';
    END IF;
END
$$;

-- A private schema for the records, so that no other role can place objects beside them.
CREATE SCHEMA idempotency;
REVOKE ALL ON SCHEMA idempotency FROM PUBLIC;
COMMENT ON SCHEMA idempotency IS 'private storage of the idempotency extension';

-- One row per (scope, key). Designed for the hot path:
-- - the claim is one insert; the primary key is the only b-tree, and none of its columns
--   changes after the claim, so completions, failures and checkpoints are HOT updates;
-- - fillfactor 100: a page is pruned of the claims' old versions whenever it gets within 10%
--   of full, so the page being filled keeps room for the updates (99% HOT in the benchmark),
--   while a lower fillfactor made inserts leave each page once live and dead versions
--   together reached it, at half the density (481 heap bytes per record at 70, 191 at 100);
-- - expires_at is set once per claim and indexed by a BRIN index (rows arrive in time
--   order), which costs next to nothing per row and lets idem_purge find expired rows;
-- - scope leads the primary key and there is no sequence or foreign key, so the table can be
--   distributed by scope (Citus) without change;
-- - owner is regrole: a dump stores the role's name, so ownership survives a restore into a
--   cluster where the role has another oid;
-- - no CHECK constraint on state: PostgreSQL reads a CHECK expression back from the catalog
--   and plans it again at the start of every INSERT and UPDATE (about 31,000 instructions
--   each, measured with callgrind: README, Performance); only the extension's own
--   statements, which write the constants 'p', 'c' and 'f', ever write this table.
CREATE TABLE idempotency.records (
    created_at       timestamptz NOT NULL,       -- first use of the key
    expires_at       timestamptz NOT NULL,       -- created_at + ttl; the record counts as none after
    lease_expires_at timestamptz,                -- while in progress: when the holder's lease runs out
    lease            bigint NOT NULL,            -- the lease length in microseconds, renewed by checkpoints
    owner            regrole NOT NULL,           -- the role that created the record
    attempt          integer NOT NULL,           -- 1, then one more per re-execution: the fencing token
    http_status      smallint,                   -- the stored outcome's status
    state            "char" NOT NULL,            -- p: in progress, c: completed, f: failed
    retryable        boolean,                    -- for a failure: may the next request re-execute?
    scope            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    fingerprint      bytea NOT NULL,             -- SHA-256 of the canonical command
    resource         text,                       -- the stored resource reference
    recovery_point   text,                       -- the last checkpoint's name
    recovery_data    jsonb,                      -- the last checkpoint's data
    response         jsonb,                      -- the stored response (or a failure's error)
    CONSTRAINT records_pkey PRIMARY KEY (scope, key)
) WITH (fillfactor = 100);
CREATE INDEX records_expires_at_brin ON idempotency.records USING brin (expires_at);
REVOKE ALL ON idempotency.records FROM PUBLIC;
COMMENT ON TABLE idempotency.records IS 'idempotency keys: one row per (scope, key); reach it only through the idem_* functions';
-- Keep the rows in pg_dump output: they are data, not extension scaffolding. But only the
-- rows of roles that exist: DROP ROLE leaves a dropped role's records behind with its bare
-- oid (regrole records no dependency), which a dump would write as a number and a restore
-- would hand to whichever role has that oid there. pg_dump runs with an empty search_path,
-- hence every name qualified; pg_roles (not pg_authid) so that any role that may read the
-- table may run the dump. (roles block of sql/idempotency--0.2.0--0.3.0.sql: the same text.)
SELECT pg_catalog.pg_extension_config_dump('idempotency.records',
    'WHERE owner::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT r.oid FROM pg_catalog.pg_roles r))');

-- The functions run as the caller (so that the caller's role can be checked against each
-- record's owner). They have no SET search_path: a SET clause costs every call a GUC save and
-- restore (about 10,000 instructions), and nothing in them resolves a name on the caller's
-- search_path. The direct path runs no SQL; the SQL path runs only statements in which every
-- name is schema-qualified, operators included, under the extension owner's rights with
-- SECURITY_RESTRICTED_OPERATION (tests/regress/sql/security.sql calls every function with a
-- trap schema first in search_path, on both paths).

-- ============================================================================================
-- BEGIN result types (0.4.0; docs/design.md, "Versions of the SQL")
--
-- idem_begin and idem_check return a row of a named composite type: for OUT parameters the
-- executor builds the row's descriptor from pg_proc on every execution of a statement that
-- calls the function (about 10,000 instructions of a replay's 107,000 on PostgreSQL 15,
-- bench/results/instructions*.md); a composite type's comes from the type cache. The
-- columns are those of the OUT parameters they replace (0.3.0), in the same order;
-- idem_check's last column, the stored fingerprint, is new in 0.4.0. The C symbol of each is
-- the one the library serves for this version (idem_check_0_4; 0.3.0's SQL names idem_check,
-- which keeps answering its ten columns).
-- ============================================================================================

CREATE TYPE idempotency.begin_result AS (
    outcome text, state text, attempt integer,
    recovery_point text, recovery_data jsonb,
    http_status integer, response jsonb, resource text,
    fingerprint bytea, expires_at timestamptz);
COMMENT ON TYPE idempotency.begin_result IS 'the row idem_begin returns';

CREATE FUNCTION idem_begin(
    scope text, key text, command jsonb,
    ttl interval DEFAULT NULL, lease interval DEFAULT NULL, wait interval DEFAULT NULL)
RETURNS idempotency.begin_result
AS 'MODULE_PATHNAME', 'idem_begin' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_begin(text, text, jsonb, interval, interval, interval) IS
'claims an idempotency key for a command: outcome execute, replay or in_progress; IK001 for a different command';

CREATE TYPE idempotency.check_result AS (
    state text, matches boolean, attempt integer, recovery_point text,
    http_status integer, response jsonb, resource text,
    created_at timestamptz, expires_at timestamptz, lease_expires_at timestamptz,
    fingerprint bytea);
COMMENT ON TYPE idempotency.check_result IS 'the row idem_check returns';

CREATE FUNCTION idem_check(scope text, key text, command jsonb DEFAULT NULL)
RETURNS idempotency.check_result
AS 'MODULE_PATHNAME', 'idem_check_0_4' LANGUAGE c VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION idem_check(text, text, jsonb) IS
'reads a key without writing or locking (works on a hot standby); state absent for none or expired';

-- END result types

CREATE FUNCTION idem_complete(
    scope text, key text, response jsonb DEFAULT NULL, resource text DEFAULT NULL,
    http_status integer DEFAULT 200, attempt integer DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_complete' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_complete(text, text, jsonb, text, integer, integer) IS
'stores the final outcome of an in-progress key, to be replayed';

CREATE FUNCTION idem_fail(
    scope text, key text, error jsonb DEFAULT NULL, retryable boolean DEFAULT true,
    http_status integer DEFAULT 500, attempt integer DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'idem_fail' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_fail(text, text, jsonb, boolean, integer, integer) IS
'records the failure of an in-progress key: retryable ones re-execute, others replay the error';

CREATE FUNCTION idem_checkpoint(
    scope text, key text, recovery_point text, data jsonb DEFAULT NULL,
    attempt integer DEFAULT NULL)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_checkpoint' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_checkpoint(text, text, text, jsonb, integer) IS
'records a recovery point of an in-progress key and renews its lease; returns the new lease end';

CREATE FUNCTION idem_fingerprint(command jsonb) RETURNS bytea
AS 'MODULE_PATHNAME', 'idem_fingerprint' LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idem_fingerprint(jsonb) IS
'SHA-256 of the canonical form of a command';

CREATE FUNCTION idem_canonical(command jsonb) RETURNS text
AS 'MODULE_PATHNAME', 'idem_canonical' LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION idem_canonical(jsonb) IS
'the canonical form of a command: the exact text that idem_fingerprint hashes';

CREATE FUNCTION idem_purge(max_rows integer DEFAULT 10000) RETURNS bigint
AS 'MODULE_PATHNAME', 'idem_purge' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_purge(integer) IS
'deletes up to max_rows expired records, skipping rows that others have locked; returns how many';

CREATE FUNCTION idem_forget(scope text, key text) RETURNS boolean
AS 'MODULE_PATHNAME', 'idem_forget' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_forget(text, text) IS
'an operator''s eviction of one live key; returns whether a live record was deleted';

-- ============================================================================================
-- BEGIN scale-out on Citus (0.3.0; docs/scale-out.md)
--
-- idem_distribute() distributes the records by scope over a Citus cluster and delegates every
-- function that takes a scope to the node that holds the scope's shard, so that the key's
-- lock is taken where its row lives. On a distributed table idem_purge() purges shard by
-- shard through idempotency.purge_shard(), since its one-server statement (a ctid subquery
-- with FOR UPDATE SKIP LOCKED) is no query that Citus can run across shards. Nothing here
-- needs Citus to be installed: its catalogs and functions are named only in plpgsql bodies,
-- which run after checking that Citus is there. After ALTER EXTENSION idempotency UPDATE
-- on the coordinator (Citus runs it on every node), call idem_distribute() again: it
-- distributes the functions of the new version.
-- ============================================================================================

-- The shard relation of idempotency.records with the given shard id, if that shard is placed
-- on this node; an error otherwise.
CREATE FUNCTION idempotency.local_shard(shard bigint) RETURNS regclass
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid))
      INTO rel
      FROM pg_catalog.pg_dist_shard s
     WHERE s.shardid OPERATOR(pg_catalog.=) local_shard.shard
       AND s.logicalrelid OPERATOR(pg_catalog.=) 'idempotency.records'::pg_catalog.regclass
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, pg_catalog.pg_dist_local_group g
                    WHERE p.shardid OPERATOR(pg_catalog.=) s.shardid
                      AND p.groupid OPERATOR(pg_catalog.=) g.groupid);
    IF rel IS NULL THEN
        RAISE EXCEPTION 'shard % of idempotency.records is not placed on this node', shard
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Run it on the node that holds the shard; idem_purge() finds the nodes itself.';
    END IF;
    RETURN rel;
END
$$;
REVOKE ALL ON FUNCTION idempotency.local_shard(bigint) FROM PUBLIC;

-- One bounded batch of idem_purge on one shard of the distributed records, on the node that
-- holds it: deletes up to max_rows expired records, skipping rows that a live transaction has
-- locked (never waiting for one), and returns how many. It is idem_purge's statement on one
-- server, aimed at the shard relation, where FOR UPDATE SKIP LOCKED is plain PostgreSQL.
CREATE FUNCTION idempotency.purge_shard(shard bigint, max_rows integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
    deleted bigint;
BEGIN
    IF shard IS NULL OR max_rows IS NULL THEN
        RAISE EXCEPTION 'arguments of idempotency.purge_shard must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF max_rows OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'invalid max_rows for idempotency.purge_shard'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('It is %s; it must be at least 1.', max_rows);
    END IF;
    rel := idempotency.local_shard(shard);
    EXECUTE pg_catalog.format(
        'DELETE FROM %1$s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY('
        'SELECT ctid FROM %1$s WHERE expires_at OPERATOR(pg_catalog.<=) $1 '
        'LIMIT $2 FOR UPDATE SKIP LOCKED))', rel)
        USING pg_catalog.clock_timestamp(), max_rows;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
REVOKE ALL ON FUNCTION idempotency.purge_shard(bigint, integer) FROM PUBLIC;

-- One bounded batch over the shards of the distributed records that are placed on this node,
-- in shard id order, without connecting to any other node: what a purge job (or the purge
-- worker) runs on every node. Returns how many records it deleted, at most max_rows; fewer
-- means that this node's shards hold no more expired records that nobody has locked.
CREATE FUNCTION idempotency.purge_local(max_rows integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shard bigint;
    budget bigint := max_rows;
    total bigint := 0;
    got bigint;
BEGIN
    IF max_rows IS NULL THEN
        RAISE EXCEPTION 'argument "max_rows" of idempotency.purge_local must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF max_rows OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'invalid max_rows for idempotency.purge_local'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('It is %s; it must be at least 1.', max_rows);
    END IF;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR shard IN
        SELECT s.shardid
          FROM pg_catalog.pg_dist_shard s
          JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid
          JOIN pg_catalog.pg_dist_local_group g ON g.groupid OPERATOR(pg_catalog.=) p.groupid
         WHERE s.logicalrelid OPERATOR(pg_catalog.=) 'idempotency.records'::pg_catalog.regclass
         ORDER BY s.shardid
    LOOP
        got := idempotency.purge_shard(shard, budget::integer);
        total := total OPERATOR(pg_catalog.+) got;
        budget := budget OPERATOR(pg_catalog.-) got;
        EXIT WHEN budget OPERATOR(pg_catalog.<=) 0;
    END LOOP;
    RETURN total;
END
$$;
REVOKE ALL ON FUNCTION idempotency.purge_local(integer) FROM PUBLIC;

-- What idem_purge(max_rows) runs when the records are distributed, from any node: one bounded
-- batch over all shards in shard id order, each shard's part on the node that holds it
-- (in-process for a shard placed here, otherwise over a connection of its own, which
-- commits that shard's part at once), with what is left of max_rows. Returns how many records
-- it deleted: fewer than max_rows means that no shard holds more expired records that nobody
-- has locked, so "call it again while it returns max_rows" works as on one server.
CREATE FUNCTION idempotency.purge_distributed(max_rows integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    budget bigint := max_rows;
    total bigint := 0;
    got bigint;
    ok boolean;
    answer text;
BEGIN
    FOR s IN
        SELECT sh.shardid, n.nodename, n.nodeport,
               p.groupid OPERATOR(pg_catalog.=) g.groupid AS here,
               pg_catalog.count(*) OVER (PARTITION BY sh.shardid) AS placements
          FROM pg_catalog.pg_dist_shard sh
          JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) sh.shardid
          JOIN pg_catalog.pg_dist_node n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                                        AND n.noderole OPERATOR(pg_catalog.=) 'primary'
          CROSS JOIN pg_catalog.pg_dist_local_group g
         WHERE sh.logicalrelid OPERATOR(pg_catalog.=) 'idempotency.records'::pg_catalog.regclass
         ORDER BY sh.shardid
    LOOP
        IF s.placements OPERATOR(pg_catalog.>) 1 THEN
            RAISE EXCEPTION 'idem_purge does not support replicated shards'
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = pg_catalog.format('Shard %s of idempotency.records has %s placements.',
                                                 s.shardid, s.placements),
                      HINT = 'Distribute the records with citus.shard_replication_factor = 1 (idem_distribute refuses anything else).';
        END IF;
        IF s.here THEN
            got := idempotency.purge_shard(s.shardid, budget::integer);
        ELSE
            SELECT r.success, r.result INTO ok, answer
              FROM pg_catalog.master_run_on_worker(
                       ARRAY[s.nodename], ARRAY[s.nodeport],
                       ARRAY[pg_catalog.format('SELECT idempotency.purge_shard(%s, %s)',
                                               s.shardid, budget)],
                       false) AS r;
            IF NOT ok THEN
                RAISE EXCEPTION 'could not purge shard % of idempotency.records on node %:%',
                                s.shardid, s.nodename, s.nodeport
                    USING ERRCODE = 'connection_exception',
                          DETAIL = pg_catalog.format('The node answered: %s. This call had deleted %s expired records on other shards; those deletions are committed.',
                                                     answer, total);
            END IF;
            got := answer::bigint;
        END IF;
        total := total OPERATOR(pg_catalog.+) got;
        budget := budget OPERATOR(pg_catalog.-) got;
        EXIT WHEN budget OPERATOR(pg_catalog.<=) 0;
    END LOOP;
    RETURN total;
END
$$;
REVOKE ALL ON FUNCTION idempotency.purge_distributed(integer) FROM PUBLIC;

-- The whole set-up on a Citus coordinator, in one call and one transaction:
--   1. idempotency.records distributed by scope (create_distributed_table), co-located with
--      colocate_with, a table distributed by a text COLLATE "C" column that holds the values
--      passed as scope; without one, in a co-location group of its own with shard_count
--      shards (NULL: citus.shard_count);
--   2. idem_begin, idem_complete, idem_fail, idem_checkpoint, idem_check and idem_forget
--      distributed by their scope argument and co-located with the records, with
--      force_delegation, so that Citus runs each call on the node that holds the scope's
--      shard, also inside BEGIN ... COMMIT.
-- Refuses, changing nothing: without Citus (55000), off the coordinator (55000), with a
-- Citus older than 11.0 (0A000), with workers whose metadata is not synced (55000), with
-- shard replication (0A000), with a colocate_with that is not hash-distributed by a text
-- COLLATE "C" column (42804). Run it again after ALTER EXTENSION idempotency UPDATE; on
-- records already distributed by scope it only distributes the functions again.
CREATE FUNCTION idem_distribute(colocate_with regclass DEFAULT NULL, shard_count integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    citus_version text;
    dist record;
    target record;
    shards integer;
    missing text;
    had_rows boolean;
    fn regprocedure;
    functions regprocedure[] := ARRAY[
        '@extschema@.idem_begin(text,text,jsonb,interval,interval,interval)',
        '@extschema@.idem_complete(text,text,jsonb,text,integer,integer)',
        '@extschema@.idem_fail(text,text,jsonb,boolean,integer,integer)',
        '@extschema@.idem_checkpoint(text,text,text,jsonb,integer)',
        '@extschema@.idem_check(text,text,jsonb)',
        '@extschema@.idem_forget(text,text)']::regprocedure[];
    c_collation oid := (SELECT oid FROM pg_catalog.pg_collation
                         WHERE collname OPERATOR(pg_catalog.=) 'C'
                           AND collnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace);
BEGIN
    SELECT extversion INTO citus_version FROM pg_catalog.pg_extension
     WHERE extname OPERATOR(pg_catalog.=) 'citus';
    IF citus_version IS NULL THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install Citus 11.0 or later (tested: 13.2) on every node, add citus to shared_preload_libraries, run CREATE EXTENSION citus in this database on the coordinator, add the workers, then call idem_distribute() on the coordinator.';
    END IF;
    IF pg_catalog.split_part(citus_version, '.', 1)::integer OPERATOR(pg_catalog.<) 11 THEN
        RAISE EXCEPTION 'idem_distribute needs Citus 11.0 or later'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('This database has Citus %s, which cannot delegate a function call inside a transaction block (force_delegation).', citus_version);
    END IF;
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION 'idem_distribute must run on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('This node is a worker (node group %s).',
                                             (SELECT groupid FROM pg_catalog.pg_dist_local_group)),
                  HINT = 'Connect to the coordinator and call idem_distribute() there.';
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('%s:%s', nodename, nodeport), ', ' ORDER BY nodeid)
      INTO missing
      FROM pg_catalog.pg_dist_node
     WHERE groupid OPERATOR(pg_catalog.<>) 0 AND noderole OPERATOR(pg_catalog.=) 'primary'
       AND isactive AND NOT (hasmetadata AND metadatasynced);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the metadata of Citus workers % is not synced', missing
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Citus delegates a function call only to a worker that has the metadata; elsewhere the call would take the key''s lock on the wrong node.',
                  HINT = 'Run SELECT start_metadata_sync_to_node(nodename, nodeport) for each, or wait until citus_add_node() has finished syncing.';
    END IF;
    -- Citus crashes a node that plans a delegated call whose distribution argument is NULL
    -- (hashtext on a NULL pointer); this extension's planner hook answers such a call with its
    -- 22004 first, in every session where the library was loaded before the first query.
    SELECT pg_catalog.string_agg(pg_catalog.format('%s:%s', n.nodename, n.nodeport), ', ' ORDER BY n.nodeid)
      INTO missing
      FROM pg_catalog.run_command_on_all_nodes($cmd$
             SELECT pg_catalog.array_position(s, 'idempotency') OPERATOR(pg_catalog.>)
                        COALESCE(pg_catalog.array_position(s, 'citus'), 0)
                    OR 'idempotency' OPERATOR(pg_catalog.=) ANY (l)
               FROM (SELECT pg_catalog.string_to_array(pg_catalog.regexp_replace(
                                pg_catalog.current_setting('shared_preload_libraries'),
                                '[\s"]|\$libdir/', '', 'g'), ',') AS s,
                            pg_catalog.string_to_array(pg_catalog.regexp_replace(
                                pg_catalog.current_setting('session_preload_libraries') OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||)
                                pg_catalog.current_setting('local_preload_libraries'),
                                '[\s"]|\$libdir/', '', 'g'), ',') AS l) AS settings
           $cmd$) AS r
      JOIN pg_catalog.pg_dist_node n ON n.nodeid OPERATOR(pg_catalog.=) r.nodeid
     WHERE NOT r.success OR r.result OPERATOR(pg_catalog.<>) 't';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the idempotency library is not preloaded on Citus nodes %', missing
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Citus 13.2 crashes the node that plans a delegated call whose distribution argument is NULL; the library''s planner hook answers idem_begin(NULL, ...) with 22004 before Citus plans it, in a session where the library is loaded before the first query.',
                  HINT = pg_catalog.format('On every node: shared_preload_libraries = ''citus,idempotency'' (idempotency after citus) and a restart, or ALTER DATABASE %I SET session_preload_libraries = ''idempotency''.', pg_catalog.current_database());
    END IF;
    IF pg_catalog.current_setting('citus.shard_replication_factor')::integer OPERATOR(pg_catalog.<>) 1 THEN
        RAISE EXCEPTION 'idem_distribute does not support replicated shards'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('citus.shard_replication_factor is %s; Citus delegates function calls only for shards with one placement.',
                                             pg_catalog.current_setting('citus.shard_replication_factor')),
                  HINT = 'SET citus.shard_replication_factor = 1 and use PostgreSQL''s streaming replication for the workers'' high availability.';
    END IF;

    -- The table to co-locate with: hash-distributed by a text COLLATE "C" column, because
    -- Citus co-locates only tables whose distribution columns have the same type and
    -- collation (the hash function is the type's, so 42 and '42' land on different shards).
    IF colocate_with IS NOT NULL THEN
        SELECT p.partmethod, p.colocationid, p.repmodel, a.attname, a.atttypid, a.attcollation
          INTO target
          FROM pg_catalog.pg_dist_partition p
          LEFT JOIN pg_catalog.pg_attribute a
            ON a.attrelid OPERATOR(pg_catalog.=) p.logicalrelid
           AND a.attname OPERATOR(pg_catalog.=) pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
         WHERE p.logicalrelid OPERATOR(pg_catalog.=) colocate_with;
        IF NOT FOUND OR target.partmethod OPERATOR(pg_catalog.<>) 'h' THEN
            RAISE EXCEPTION 'cannot co-locate idempotency.records with %', colocate_with
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('%s is not a hash-distributed table.', colocate_with),
                      HINT = pg_catalog.format('Distribute it first: SELECT create_distributed_table(%L, <a text COLLATE "C" column holding the scope>).', colocate_with::text);
        END IF;
        IF target.atttypid OPERATOR(pg_catalog.<>) 'pg_catalog.text'::pg_catalog.regtype
           OR target.attcollation OPERATOR(pg_catalog.<>) c_collation THEN
            RAISE EXCEPTION 'cannot co-locate idempotency.records with %', colocate_with
                USING ERRCODE = 'datatype_mismatch',
                      DETAIL = pg_catalog.format('%s is distributed by column %I of type %s%s; the records are distributed by scope, of type text COLLATE "C", and Citus co-locates only tables whose distribution columns have the same type and collation.',
                                                 colocate_with, target.attname,
                                                 pg_catalog.format_type(target.atttypid, NULL),
                                                 CASE WHEN target.attcollation OPERATOR(pg_catalog.<>) 0
                                                      THEN ' COLLATE ' || (SELECT pg_catalog.quote_ident(collname) FROM pg_catalog.pg_collation WHERE oid OPERATOR(pg_catalog.=) target.attcollation)
                                                      ELSE '' END),
                      HINT = 'Distribute the business table by a text COLLATE "C" column that holds the very value passed to idem_begin as scope (for a bigint or uuid tenant id: a column such as tenant text COLLATE "C" NOT NULL holding ''tenant:'' || tenant_id, see docs/scale-out.md), or call idem_distribute() without colocate_with.';
        END IF;
        IF shard_count IS NOT NULL THEN
            RAISE EXCEPTION 'shard_count cannot be given with colocate_with'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = pg_catalog.format('Co-located with %s, the records get its shards.', colocate_with);
        END IF;
    END IF;
    IF shard_count IS NOT NULL AND shard_count OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'invalid shard_count for idem_distribute'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('It is %s; it must be at least 1.', shard_count);
    END IF;

    -- Citus refuses to distribute functions after a parallel operation in the same transaction.
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

    SELECT p.partmethod, p.colocationid,
           pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) AS column_name
      INTO dist
      FROM pg_catalog.pg_dist_partition p
     WHERE p.logicalrelid OPERATOR(pg_catalog.=) 'idempotency.records'::pg_catalog.regclass;
    IF FOUND THEN
        IF dist.partmethod OPERATOR(pg_catalog.<>) 'h' OR dist.column_name IS DISTINCT FROM 'scope' THEN
            RAISE EXCEPTION 'idempotency.records is already a Citus table, but not distributed by scope'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'SELECT undistribute_table(''idempotency.records''), then call idem_distribute() again.';
        END IF;
        IF colocate_with IS NOT NULL THEN
            IF dist.colocationid OPERATOR(pg_catalog.<>) target.colocationid THEN
                RAISE EXCEPTION 'idempotency.records is already distributed, but not co-located with %', colocate_with
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = pg_catalog.format('SELECT update_distributed_table_colocation(''idempotency.records'', colocate_with => %L), then call idem_distribute() again.', colocate_with::text);
            END IF;
        END IF;
    ELSE
        had_rows := EXISTS (SELECT 1 FROM idempotency.records);
        IF colocate_with IS NOT NULL THEN
            PERFORM pg_catalog.create_distributed_table('idempotency.records'::pg_catalog.regclass, 'scope',
                                                        colocate_with => colocate_with::text);
        ELSIF shard_count IS NOT NULL THEN
            PERFORM pg_catalog.create_distributed_table('idempotency.records'::pg_catalog.regclass, 'scope',
                                                        shard_count => shard_count);
        ELSE
            PERFORM pg_catalog.create_distributed_table('idempotency.records'::pg_catalog.regclass, 'scope');
        END IF;
        -- Rows that were in the table before have been copied into the shards; the local
        -- table (now the shards' shell) keeps its copy until it is truncated.
        IF had_rows THEN
            PERFORM pg_catalog.truncate_local_data_after_distributing_table('idempotency.records'::pg_catalog.regclass);
        END IF;
    END IF;

    FOREACH fn IN ARRAY functions LOOP
        PERFORM pg_catalog.create_distributed_function(fn, distribution_arg_name => 'scope',
                                                       colocate_with => 'idempotency.records',
                                                       force_delegation => true);
    END LOOP;

    SELECT pg_catalog.count(*) INTO shards FROM pg_catalog.pg_dist_shard
     WHERE logicalrelid OPERATOR(pg_catalog.=) 'idempotency.records'::pg_catalog.regclass;
    RETURN pg_catalog.format('idempotency.records distributed by scope in %s shards%s; %s functions delegated by scope',
                             shards,
                             CASE WHEN colocate_with IS NULL THEN ''
                                  ELSE pg_catalog.format(', co-located with %s', colocate_with) END,
                             pg_catalog.array_length(functions, 1));
END
$$;
REVOKE ALL ON FUNCTION idem_distribute(regclass, integer) FROM PUBLIC;
COMMENT ON FUNCTION idem_distribute(regclass, integer) IS
'on a Citus coordinator: distributes the records by scope (co-located with colocate_with) and delegates the functions to the scope''s shard';

-- END scale-out on Citus
-- ============================================================================================
-- BEGIN operations (0.3.0; docs/operations.md)
--
-- The counters of idem_stats() (shared memory: the library in shared_preload_libraries), the
-- operator's view idem_keys and the queue of stalled claims idem_stalled().
-- ============================================================================================

-- The counters in shared memory, one row per database (needs the library in
-- shared_preload_libraries; otherwise 55000). Readable by pg_monitor, as the statistics views
-- of PostgreSQL's own monitoring role are.
CREATE FUNCTION idem_stats(
    OUT datid oid, OUT datname name,
    OUT executes_new bigint, OUT executes_takeover bigint, OUT executes_retry bigint,
    OUT replays bigint, OUT in_progress bigint,
    OUT command_mismatches bigint, OUT not_in_progress bigint, OUT leases_lost bigint,
    OUT permission_denied bigint,
    OUT waits bigint, OUT wait_time double precision,
    OUT completions bigint, OUT failures_retryable bigint, OUT failures_final bigint,
    OUT checkpoints bigint, OUT forgets bigint,
    OUT purged_rows bigint, OUT purge_runs bigint, OUT last_purge timestamptz,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'idem_stats' LANGUAGE c VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION idem_stats() IS
'counters of the idempotency layer per database since the last idem_stats_reset(): outcomes, refusals, waits, purging';
REVOKE ALL ON FUNCTION idem_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION idem_stats() TO pg_monitor;

CREATE FUNCTION idem_stats_reset() RETURNS timestamptz
AS 'MODULE_PATHNAME', 'idem_stats_reset' LANGUAGE c VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION idem_stats_reset() IS
'zeroes the counters of idem_stats() in every database; returns the reset time';
REVOKE ALL ON FUNCTION idem_stats_reset() FROM PUBLIC;

-- The records as an operator sees them: only those of roles the caller is a member of
-- (superusers: all), and of the stored values only their sizes (pg_column_size: as stored,
-- compressed or not), never a response. security_barrier: a caller's own condition (a
-- function that leaks its arguments) is applied only to rows the membership test let through.
CREATE VIEW idem_keys WITH (security_barrier) AS
SELECT r.scope,
       r.key,
       CASE r.state WHEN 'p' THEN 'in_progress' WHEN 'c' THEN 'completed' ELSE 'failed' END AS state,
       r.retryable,
       r.attempt,
       r.owner,
       r.created_at,
       r.expires_at,
       r.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() AS expired,
       CASE WHEN r.state OPERATOR(pg_catalog.=) 'p' THEN r.lease_expires_at END AS lease_expires_at,
       r.http_status::pg_catalog.int4 AS http_status,
       pg_catalog.encode(r.fingerprint, 'hex') AS fingerprint,
       r.recovery_point,
       pg_catalog.pg_column_size(r.resource) AS resource_size,
       pg_catalog.pg_column_size(r.response) AS response_size,
       pg_catalog.pg_column_size(r.recovery_data) AS recovery_data_size
FROM idempotency.records r
WHERE pg_catalog.pg_has_role(r.owner::pg_catalog.oid, 'MEMBER');
COMMENT ON VIEW idem_keys IS
'the idempotency records of roles the current role is a member of: state, attempt, times, fingerprint, sizes (never a response)';
GRANT SELECT ON idem_keys TO PUBLIC;

-- In-progress claims whose lease ran out at least older_than ago and that nobody has taken
-- over (a takeover renews the lease), oldest first: the queue a recovery job re-drives with
-- idem_begin and the key's command. Only the caller's records, as in idem_keys.
CREATE FUNCTION idem_stalled(older_than interval DEFAULT '0')
RETURNS TABLE (scope text, key text, attempt integer, owner regrole,
               created_at timestamptz, lease_expires_at timestamptz, stalled_for interval,
               recovery_point text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'argument "older_than" of idem_stalled must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF older_than OPERATOR(pg_catalog.<) '0'::interval THEN
        RAISE EXCEPTION 'invalid older_than for idem_stalled'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It must not be negative.';
    END IF;
    RETURN QUERY
    SELECT k.scope, k.key, k.attempt, k.owner, k.created_at, k.lease_expires_at,
           (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) k.lease_expires_at),
           k.recovery_point, k.expires_at
    FROM @extschema@.idem_keys k
    WHERE k.state OPERATOR(pg_catalog.=) 'in_progress' AND NOT k.expired
      AND k.lease_expires_at OPERATOR(pg_catalog.<=)
          (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) older_than)
    ORDER BY k.lease_expires_at, k.scope, k.key;
END
$$;
COMMENT ON FUNCTION idem_stalled(interval) IS
'in-progress claims of the current role''s records whose lease ran out at least older_than ago, oldest first';

-- ============================================================================================
-- END operations
-- ============================================================================================
