//! Noise: statements that say nothing about the data, read from the parse tree.
//!
//! A statement is noise when it is one of:
//! - a session setting: SET, RESET, SHOW, DISCARD, except settings that matter to an
//!   auditor (SET ROLE, SET SESSION AUTHORIZATION, pgaudit.* and log_* settings);
//! - a plain SELECT (no INTO, no data-modifying part) whose relations are all in
//!   pg_catalog or information_schema and whose functions are all harmless: a liveness
//!   check (`SELECT 1`, `SELECT version()`), or the introspection that psql's \d commands,
//!   JDBC, DBeaver, DataGrip and pgAdmin run.
//!
//! Functions are judged by name: a denied list (server files, programs, settings, signals,
//! replication, large objects, sleeps, sequences, advisory locks...) is never noise;
//! otherwise a function qualified with pg_catalog, or one of the well-known informational,
//! string and aggregate functions, is harmless. Anything unknown is not noise: the filter
//! errs towards showing a statement.

use pg_query::{NodeEnum, NodeRef};

/// Settings whose change an auditor wants to see, even though SET is otherwise noise.
fn setting_matters(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "role" | "session_authorization" | "session_preload_libraries")
        || name.starts_with("pgaudit.")
        || name.starts_with("log_")
        || name.starts_with("pgtrail.")
}

/// Function name prefixes that touch files, programs, other sessions, replication or
/// state: never noise, whatever the schema.
const DENIED_PREFIXES: &[&str] = &[
    "pg_read_",
    "pg_ls_",
    "pg_stat_file",
    "pg_file_",
    "lo_",
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_signal_backend",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_",
    "pg_drop_",
    "pg_replication_",
    "pg_logical_",
    "pg_copy_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_",
    "pg_sleep",
    "pg_advisory",
    "pg_try_advisory",
    "pg_notify",
    "pg_stat_reset",
    "pg_import_system_collations",
    "dblink",
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "pg_wal_replay_",
    "pg_log_backend_memory_contexts",
];

/// Unqualified functions that tools use to look around, and that do nothing else.
const HARMLESS: &[&str] = &[
    "version",
    "current_schema",
    "current_schemas",
    "current_database",
    "current_catalog",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_setting",
    "now",
    "current_timestamp",
    "format_type",
    "obj_description",
    "col_description",
    "shobj_description",
    "array_to_string",
    "array_agg",
    "string_agg",
    "array_length",
    "array_upper",
    "array_lower",
    "unnest",
    "count",
    "min",
    "max",
    "bool_or",
    "bool_and",
    "json_agg",
    "jsonb_agg",
    "json_build_object",
    "jsonb_build_object",
    "row_to_json",
    "to_json",
    "coalesce",
    "nullif",
    "lower",
    "upper",
    "length",
    "substring",
    "substr",
    "concat",
    "format",
    "quote_ident",
    "quote_literal",
    "regexp_replace",
    "split_part",
    "replace",
    "trim",
    "btrim",
    "left",
    "right",
    "position",
    "generate_series",
    "generate_subscripts",
    "row_number",
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "has_column_privilege",
    "has_sequence_privilege",
    "has_any_column_privilege",
    "to_regclass",
    "to_regtype",
    "to_regproc",
    "to_regnamespace",
    "age",
    "to_char",
    "timezone",
    "date_trunc",
    "extract",
    "date_part",
    // Recorded from pgAdmin 4 browsing a table (tests/noise.rs).
    "aclexplode",
    "pg_show_all_settings",
];

fn function_is_harmless(qualified: &[&str]) -> bool {
    let Some(name) = qualified.last().map(|n| n.to_ascii_lowercase()) else { return false };
    if DENIED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    match qualified {
        [schema, _] if schema.eq_ignore_ascii_case("pg_catalog") => true,
        // The information schema's own helpers (_pg_expandarray, _pg_char_max_length...),
        // which the JDBC driver's metadata queries call.
        [schema, _] if schema.eq_ignore_ascii_case("information_schema") => name.starts_with("_pg_"),
        [_] => {
            HARMLESS.contains(&name.as_str())
                || name.starts_with("pg_get_")
                || name.starts_with("pg_encoding_")
                || name.starts_with("pg_is_")
                || name.starts_with("pg_postmaster_start_time")
                || name.starts_with("pg_backend_pid")
                || name.starts_with("pg_has_role")
                || name.starts_with("pg_size_pretty")
                || name.starts_with("pg_table_size")
                || name.starts_with("pg_relation_size")
                || name.starts_with("pg_total_relation_size")
                || name.starts_with("pg_indexes_size")
                || name.starts_with("pg_database_size")
                || name.starts_with("pg_tablespace_")
                || name.ends_with("_is_visible")
        }
        _ => false,
    }
}

/// `set_config('name', ...)` with a literal name: a SET by another spelling (pgAdmin sets
/// bytea_output this way), noise unless the setting matters.
fn is_harmless_set_config(name: &[&str], args: &[pg_query::Node]) -> bool {
    let is_set_config = match name {
        [n] | ["pg_catalog", n] => n.eq_ignore_ascii_case("set_config"),
        _ => false,
    };
    let setting = args.first().and_then(|a| match a.node.as_ref() {
        Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.as_str()),
            _ => None,
        },
        _ => None,
    });
    is_set_config && setting.is_some_and(|s| !setting_matters(s))
}

fn relation_is_catalog(schema: &str, relname: &str) -> bool {
    if schema.is_empty() {
        // pg_catalog is searched first: an unqualified pg_* name is a catalog relation.
        relname.starts_with("pg_")
    } else {
        schema.eq_ignore_ascii_case("pg_catalog") || schema.eq_ignore_ascii_case("information_schema")
    }
}

fn names(parts: &[pg_query::Node]) -> Vec<&str> {
    parts
        .iter()
        .filter_map(|p| match p.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// Whether a parsed statement is noise (see the module documentation).
pub fn is_noise(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::VariableSetStmt(v) => !setting_matters(&v.name),
        NodeEnum::VariableShowStmt(_) | NodeEnum::DiscardStmt(_) => true,
        NodeEnum::SelectStmt(s) => {
            s.into_clause.is_none() && s.locking_clause.is_empty() && select_only_looks_around(node)
        }
        _ => false,
    }
}

fn select_only_looks_around(node: &NodeEnum) -> bool {
    let mut ctes: Vec<&str> = Vec::new();
    for (child, _depth, _context, _filter) in node.nodes() {
        if let NodeRef::CommonTableExpr(cte) = child {
            ctes.push(&cte.ctename);
        }
    }
    for (child, _depth, _context, _filter) in node.nodes() {
        let harmless = match child {
            NodeRef::InsertStmt(_) | NodeRef::UpdateStmt(_) | NodeRef::DeleteStmt(_) | NodeRef::MergeStmt(_) => false,
            NodeRef::IntoClause(_) | NodeRef::LockingClause(_) => false,
            NodeRef::RangeVar(v) => {
                relation_is_catalog(&v.schemaname, &v.relname)
                    || (v.schemaname.is_empty() && ctes.contains(&v.relname.as_str()))
            }
            NodeRef::FuncCall(f) => {
                let name = names(&f.funcname);
                function_is_harmless(&name) || is_harmless_set_config(&name, &f.args)
            }
            // Table functions in FROM (e.g. unnest(...)) are FuncCalls inside; nothing else
            // reaches data.
            _ => true,
        };
        if !harmless {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(sql: &str) -> bool {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        let node = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap().clone();
        is_noise(&node)
    }

    #[test]
    fn settings_are_noise_unless_they_matter() {
        for sql in [
            "SET extra_float_digits = 3",
            "SET application_name = 'x'",
            "SHOW search_path",
            "RESET ALL",
            "DISCARD ALL",
            "SET TIME ZONE 'UTC'",
        ] {
            assert!(noise(sql), "{sql}");
        }
        for sql in [
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET pgaudit.log = 'none'",
            "SET log_statement = 'none'",
            "RESET pgaudit.log",
            "SET session_preload_libraries = 'x'",
        ] {
            assert!(!noise(sql), "{sql}");
        }
    }

    #[test]
    fn liveness_checks_and_catalog_reads_are_noise() {
        for sql in [
            "SELECT 1",
            "select version()",
            "SELECT current_schema(), session_user",
            "SELECT typname FROM pg_type WHERE oid = $1",
            "SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE pg_catalog.pg_table_is_visible(n.oid)",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            "WITH t AS (SELECT oid FROM pg_class) SELECT count(*) FROM t",
        ] {
            assert!(noise(sql), "{sql}");
        }
    }

    /// What client tools send on connect and when browsing, written down from their
    /// behaviour (JDBC's driver, DBeaver, DataGrip, pgAdmin): all noise.
    #[test]
    fn client_tool_introspection_is_noise() {
        for sql in [
            // pgjdbc on connect and for type lookups
            "SET extra_float_digits = 3",
            "SET application_name = 'PostgreSQL JDBC Driver'",
            "SELECT typinput='pg_catalog.array_in'::regproc AS is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (SELECT ns.oid AS nspoid, ns.nspname, r.r FROM pg_namespace AS ns JOIN (SELECT s.r, (current_schemas(false))[s.r] AS nspname FROM generate_series(1, array_upper(current_schemas(false), 1)) AS s(r)) AS r USING (nspname)) AS sp ON sp.nspoid = typnamespace WHERE pg_type.oid = $1 ORDER BY sp.r, pg_type.oid DESC",
            "SELECT t.typname, t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON (t.typnamespace = n.oid) WHERE n.nspname != 'pg_toast' AND (t.typrelid = 0 OR (SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid))",
            // DBeaver
            "SELECT current_schema(), session_user",
            "SHOW search_path",
            "SELECT n.oid, n.*, d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = n.oid AND d.objsubid = 0 AND d.classoid = 'pg_namespace'::regclass ORDER BY nspname",
            "SELECT c.oid, c.*, t.relname AS tabrelname, rt.relnamespace AS refnamespace, d.description FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid LEFT OUTER JOIN pg_catalog.pg_class rt ON rt.oid = c.reloftype LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.objsubid = 0 WHERE c.relnamespace = $1 AND c.relkind NOT IN ('i', 'I', 'c')",
            // DataGrip
            "select current_database() as a, current_schemas(false) as b",
            "select version()",
            "select N.oid::bigint as id, N.xmin as state_number, nspname as name, D.description, pg_catalog.pg_get_userbyid(N.nspowner) as owner from pg_catalog.pg_namespace N left join pg_catalog.pg_description D on N.oid = D.objoid order by case when nspname = current_schema then -1::bigint else N.oid::bigint end",
            // pgAdmin
            "SET DateStyle=ISO",
            "SET client_min_messages=notice",
            "SELECT set_config('bytea_output','hex',false) FROM pg_catalog.pg_settings WHERE name = 'bytea_output'",
            "SET client_encoding='UNICODE'",
            "SELECT db.oid as did, db.datname, db.datallowconn, pg_encoding_to_char(db.encoding) AS serverencoding, has_database_privilege(db.oid, 'CREATE') as cancreate, datistemplate FROM pg_catalog.pg_database db WHERE db.datname = current_database()",
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_catalog.pg_roles WHERE rolname = current_user",
        ] {
            assert!(noise(sql), "{sql}");
        }
        assert!(!noise("SELECT set_config('pgaudit.log', 'none', false)"));
        assert!(!noise("SELECT set_config($1, 'x', false)"));
    }

    #[test]
    fn information_schema_helpers_are_catalog_functions() {
        // The JDBC driver's getPrimaryKeys, as recorded through the proxy.
        assert!(noise(
            "SELECT a.attname FROM pg_catalog.pg_class ct JOIN pg_catalog.pg_attribute a ON ct.oid = a.attrelid \
             JOIN (SELECT i.indrelid, information_schema._pg_expandarray(i.indkey) AS keys FROM pg_catalog.pg_index i) i \
             ON a.attnum = (i.keys).x AND a.attrelid = i.indrelid WHERE i.indisprimary"
        ));
    }

    #[test]
    fn data_files_state_and_writes_are_never_noise() {
        for sql in [
            "SELECT * FROM accounts",
            "SELECT 1 FROM public.pg_lookalike",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_catalog.pg_read_file('/etc/passwd')",
            "SELECT lo_export(1234, '/tmp/x')",
            "SELECT pg_terminate_backend(42)",
            "SELECT pg_sleep(10)",
            "SELECT nextval('s')",
            "SELECT my_function()",
            "SELECT information_schema.my_function()",
            "SELECT oid INTO stolen FROM pg_authid",
            "WITH d AS (DELETE FROM pg_authid RETURNING 1) SELECT count(*) FROM d",
            "SELECT * FROM pg_class FOR UPDATE",
            "SELECT (SELECT secret FROM vault LIMIT 1)",
            "UPDATE pg_authid SET rolsuper = true",
            "INSERT INTO t VALUES (1)",
        ] {
            assert!(!noise(sql), "{sql}");
        }
    }
}
