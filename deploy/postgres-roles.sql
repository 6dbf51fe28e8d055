-- heritage-match on PostgreSQL: two roles, so that the service cannot rewrite its own audit trail.
--
--   owner   (e.g. heritage_owner)   owns the tables, the audit trail's triggers and their function; runs the
--                                   migrations: `HM_DATABASE_URL=postgresql+psycopg://heritage_owner:...@host/heritage
--                                   heritage-match db upgrade`.
--   service (e.g. heritage_service) what `heritage-match serve`, the CLI and scans connect as: SELECT, INSERT,
--                                   UPDATE, DELETE on the registry's tables, but only SELECT and INSERT on the
--                                   audit trail (audit_events, audit_results) and SELECT on alembic_version. It
--                                   owns nothing, so it can neither drop nor disable a trigger, nor replace the
--                                   function they call; and the triggers refuse UPDATE, DELETE and TRUNCATE of
--                                   audit rows to every role, the owner included.
--
-- Once, as a superuser (psql -d postgres):
--   CREATE ROLE heritage_owner LOGIN PASSWORD '...';
--   CREATE ROLE heritage_service LOGIN PASSWORD '...';
--   CREATE DATABASE heritage OWNER heritage_owner;
--   REVOKE ALL ON DATABASE heritage FROM PUBLIC;
--   GRANT CONNECT ON DATABASE heritage TO heritage_service;
-- Then, as the owner: `heritage-match db upgrade` (creates the tables). Then this script, as the owner or a
-- superuser, in the registry's database:
--   psql -v owner=heritage_owner -v service=heritage_service -d heritage -f deploy/postgres-roles.sql
-- Run it again after each `db upgrade` (it changes nothing that is already so). The service, started while
-- the database is behind its code, tries to upgrade it, cannot, and says to run `db upgrade` as the owner.

\set ON_ERROR_STOP on

BEGIN;

-- Nobody but the owner creates anything in the registry's schema (PostgreSQL 15 does this by default).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"service";

-- The registry: records, photos, vectors, keys, the listings archive, alerts, webhooks.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"service";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"service";

-- The schema's revision: read (the service checks it at start), never written but by the owner.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM :"service";

-- The audit trail: appended to and read, never changed.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_results FROM :"service";

-- Tables and sequences later migrations add: the same rights as the registry's (the triggers of an append-only
-- table refuse UPDATE and DELETE whatever the grants; running this script again narrows the grants too).
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"service";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"service";

COMMIT;
