-- Every catalog fact about the extension idempotency in the current database, one line per
-- fact, sorted: scripts/upgrade-test.sh diffs this between a database upgraded with ALTER
-- EXTENSION ... UPDATE and one where the same version was created fresh, so that a migration
-- that forgets (or adds) a column, default, constraint, index, comment, grant, option,
-- function attribute or dump registration shows up as a differing line.
-- Columns are listed by name, not position: ALTER TABLE ... ADD COLUMN can only append, and
-- the extension's queries name their columns.
WITH ext AS (
    SELECT e.* FROM pg_catalog.pg_extension e WHERE e.extname = 'idempotency'
), members AS (
    SELECT d.classid, d.objid, d.objsubid
    FROM pg_catalog.pg_depend d, ext
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid
      AND d.deptype = 'e'
), rels AS (
    -- every relation in the extension's schema, members or not (indexes are not members),
    -- and every relation that is a member elsewhere (the views in the extension's schema)
    SELECT c.* FROM pg_catalog.pg_class c
    WHERE c.relnamespace = 'idempotency'::regnamespace
       OR c.oid IN (SELECT objid FROM members WHERE classid = 'pg_catalog.pg_class'::regclass)
)
SELECT 'extension: version=' || extversion || ' relocatable=' || extrelocatable
       || ' schema=' || extnamespace::regnamespace::text
       || ' config=' || coalesce((SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text)
                                  FROM pg_catalog.unnest(extconfig) c), '')
       || ' condition=' || coalesce(pg_catalog.array_to_string(extcondition, ','), '')
FROM ext
UNION ALL
SELECT 'member: ' || pg_catalog.pg_describe_object(classid, objid, objsubid) FROM members
UNION ALL
SELECT 'comment on ' || pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
FROM pg_catalog.pg_description d
JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid
UNION ALL
SELECT 'comment on ' || pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
FROM pg_catalog.pg_description d JOIN rels r ON d.classoid = 'pg_catalog.pg_class'::regclass
  AND d.objoid = r.oid AND (d.objsubid <> 0 OR r.relkind::text = 'i')
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text || ': owner=' || p.proowner::regrole::text
       || ' acl=' || coalesce(p.proacl::text, 'default') || E'\n' || pg_catalog.pg_get_functiondef(p.oid)
FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
UNION ALL
SELECT 'schema ' || n.nspname || ': owner=' || n.nspowner::regrole::text || ' acl=' || coalesce(n.nspacl::text, 'default')
FROM pg_catalog.pg_namespace n JOIN members m ON m.classid = 'pg_catalog.pg_namespace'::regclass AND m.objid = n.oid
UNION ALL
SELECT 'relation ' || r.relname || ': kind=' || r.relkind::text || ' persistence=' || r.relpersistence::text
       || ' owner=' || r.relowner::regrole::text || ' acl=' || coalesce(r.relacl::text, 'default')
       || ' options=' || coalesce(r.reloptions::text, '') || ' rls=' || r.relrowsecurity
       || ' am=' || coalesce((SELECT amname FROM pg_catalog.pg_am WHERE oid = r.relam), '')
       || ' replident=' || r.relreplident::text
FROM rels r
UNION ALL
SELECT 'column ' || r.relname || '.' || a.attname || ': ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || ' collation=' || coalesce((SELECT collname FROM pg_catalog.pg_collation WHERE oid = a.attcollation), '')
       || ' default=' || coalesce(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '')
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
       || ' storage=' || a.attstorage::text || ' compression=' || coalesce(pg_catalog.to_jsonb(a) ->> 'attcompression', '')
       || ' stattarget=' || coalesce(a.attstattarget::text, 'default') || ' acl=' || coalesce(a.attacl::text, 'default')
       -- PostgreSQL 15.20 as Debian builds it stamps every new column with an attribute option pg_attver=<n> whose
       -- value differs between two CREATE TABLEs: it says nothing about the extension.
       || ' options=' || coalesce((SELECT pg_catalog.array_agg(o ORDER BY o)
                                     FROM pg_catalog.unnest(a.attoptions) o
                                    WHERE o NOT LIKE 'pg\_attver=%')::text, '')
FROM rels r
JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
WHERE r.relkind::text IN ('r', 'p', 'v', 'm', 'f', 'c')
UNION ALL
SELECT 'constraint ' || c.conrelid::regclass::text || '.' || c.conname || ': ' || pg_catalog.pg_get_constraintdef(c.oid)
       || ' deferrable=' || c.condeferrable || ' validated=' || c.convalidated
FROM pg_catalog.pg_constraint c JOIN rels r ON c.conrelid = r.oid
UNION ALL
SELECT 'index: ' || pg_catalog.pg_get_indexdef(i.indexrelid) || ' valid=' || i.indisvalid
       || ' clustered=' || i.indisclustered || ' replident=' || i.indisreplident
FROM pg_catalog.pg_index i JOIN rels r ON i.indrelid = r.oid
UNION ALL
SELECT 'trigger: ' || pg_catalog.pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
FROM pg_catalog.pg_trigger t JOIN rels r ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || p.polname || ' on ' || r.relname || ': ' || p.polcmd::text || ' '
       || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '')
FROM pg_catalog.pg_policy p JOIN rels r ON p.polrelid = r.oid
UNION ALL
SELECT 'view ' || r.relname || ': ' || pg_catalog.pg_get_viewdef(r.oid)
FROM rels r WHERE r.relkind::text = 'v'
UNION ALL
-- the privileges the extension's script granted, which pg_dump compares against
SELECT 'initial privileges on ' || pg_catalog.pg_describe_object(i.classoid, i.objoid, i.objsubid) || ': '
       || i.privtype::text || ' ' || i.initprivs::text
FROM pg_catalog.pg_init_privs i
JOIN members m ON m.classid = i.classoid AND m.objid = i.objoid
UNION ALL
SELECT 'statistics ' || s.stxname || ': ' || pg_catalog.pg_get_statisticsobjdef(s.oid)
FROM pg_catalog.pg_statistic_ext s JOIN rels r ON s.stxrelid = r.oid
ORDER BY 1;
