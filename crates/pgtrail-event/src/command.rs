//! From a parse tree node to the command tag PostgreSQL reports and the pgAudit class.
//!
//! Tags follow PostgreSQL's `CreateCommandTag` for the statements people run; classes
//! follow what pgAudit 1.7 writes for the same statements (see shared/testdata/pgaudit:
//! `SET` is `MISC`, `PREPARE` of a query is `READ`, `CREATE DATABASE` is `DDL`). When the
//! server answers with CommandComplete, its tag wins over ours (see [`tag_from_completion`]).

use pg_query::NodeEnum;
use pg_query::protobuf::{ObjectType, TransactionStmtKind, VariableSetKind};

use crate::event::EventClass;

/// The command tag and class of one parsed statement.
pub(crate) fn describe(node: &NodeEnum) -> (String, EventClass) {
    use EventClass::*;
    let tag = |s: &str| s.to_owned();
    match node {
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => (tag("SELECT INTO"), Ddl),
        NodeEnum::SelectStmt(_) => (tag("SELECT"), Read),
        NodeEnum::InsertStmt(_) => (tag("INSERT"), Write),
        NodeEnum::UpdateStmt(_) => (tag("UPDATE"), Write),
        NodeEnum::DeleteStmt(_) => (tag("DELETE"), Write),
        NodeEnum::MergeStmt(_) => (tag("MERGE"), Write),
        NodeEnum::TruncateStmt(_) => (tag("TRUNCATE TABLE"), Write),
        NodeEnum::CopyStmt(c) => (tag("COPY"), if c.is_from { Write } else { Read }),
        NodeEnum::DoStmt(_) => (tag("DO"), Function),
        NodeEnum::CallStmt(_) => (tag("CALL"), Function),
        NodeEnum::GrantStmt(g) => (tag(if g.is_grant { "GRANT" } else { "REVOKE" }), Role),
        NodeEnum::GrantRoleStmt(g) => (tag(if g.is_grant { "GRANT ROLE" } else { "REVOKE ROLE" }), Role),
        NodeEnum::CreateRoleStmt(_) => (tag("CREATE ROLE"), Role),
        NodeEnum::AlterRoleStmt(_) | NodeEnum::AlterRoleSetStmt(_) => (tag("ALTER ROLE"), Role),
        NodeEnum::DropRoleStmt(_) => (tag("DROP ROLE"), Role),
        NodeEnum::AlterDefaultPrivilegesStmt(_) => (tag("ALTER DEFAULT PRIVILEGES"), Role),
        NodeEnum::VariableSetStmt(v) => {
            let reset = matches!(
                VariableSetKind::try_from(v.kind),
                Ok(VariableSetKind::VarReset | VariableSetKind::VarResetAll)
            );
            (tag(if reset { "RESET" } else { "SET" }), Misc)
        }
        NodeEnum::VariableShowStmt(_) => (tag("SHOW"), Misc),
        NodeEnum::TransactionStmt(t) => (transaction_tag(t.kind).to_owned(), Misc),
        NodeEnum::ExplainStmt(_) => (tag("EXPLAIN"), Misc),
        NodeEnum::PrepareStmt(p) => {
            let class = p.query.as_ref().and_then(|q| q.node.as_ref()).map(|q| describe(q).1);
            (tag("PREPARE"), class.unwrap_or(Misc))
        }
        NodeEnum::ExecuteStmt(_) => (tag("EXECUTE"), Misc),
        NodeEnum::DeallocateStmt(_) => (tag("DEALLOCATE"), Misc),
        NodeEnum::DeclareCursorStmt(_) => (tag("DECLARE CURSOR"), Read),
        NodeEnum::FetchStmt(f) => (tag(if f.ismove { "MOVE" } else { "FETCH" }), Misc),
        NodeEnum::ClosePortalStmt(_) => (tag("CLOSE CURSOR"), Misc),
        NodeEnum::ListenStmt(_) => (tag("LISTEN"), Misc),
        NodeEnum::UnlistenStmt(_) => (tag("UNLISTEN"), Misc),
        NodeEnum::NotifyStmt(_) => (tag("NOTIFY"), Misc),
        NodeEnum::VacuumStmt(v) => (tag(if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" }), Misc),
        NodeEnum::CheckPointStmt(_) => (tag("CHECKPOINT"), Misc),
        NodeEnum::DiscardStmt(_) => (tag("DISCARD"), Misc),
        NodeEnum::LockStmt(_) => (tag("LOCK TABLE"), Misc),
        NodeEnum::LoadStmt(_) => (tag("LOAD"), Misc),
        NodeEnum::ReindexStmt(_) => (tag("REINDEX"), Misc),
        NodeEnum::ClusterStmt(_) => (tag("CLUSTER"), Misc),
        NodeEnum::ConstraintsSetStmt(_) => (tag("SET CONSTRAINTS"), Misc),
        NodeEnum::AlterSystemStmt(_) => (tag("ALTER SYSTEM"), Misc),
        other => (ddl_tag(other), Ddl),
    }
}

fn transaction_tag(kind: i32) -> &'static str {
    use TransactionStmtKind::*;
    match TransactionStmtKind::try_from(kind) {
        Ok(TransStmtBegin) => "BEGIN",
        Ok(TransStmtStart) => "START TRANSACTION",
        Ok(TransStmtCommit) => "COMMIT",
        Ok(TransStmtRollback | TransStmtRollbackTo) => "ROLLBACK",
        Ok(TransStmtSavepoint) => "SAVEPOINT",
        Ok(TransStmtRelease) => "RELEASE",
        Ok(TransStmtPrepare) => "PREPARE TRANSACTION",
        Ok(TransStmtCommitPrepared) => "COMMIT PREPARED",
        Ok(TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
        _ => "TRANSACTION",
    }
}

/// The SQL name of an object type, as it appears in `DROP <type>` and `ALTER <type>` tags.
pub(crate) fn object_type_name(objtype: i32) -> &'static str {
    use pg_query::protobuf::ObjectType as O;
    use pg_query::protobuf::ObjectType::*;
    match O::try_from(objtype) {
        Ok(ObjectTable) => "TABLE",
        Ok(ObjectIndex) => "INDEX",
        Ok(ObjectSequence) => "SEQUENCE",
        Ok(ObjectView) => "VIEW",
        Ok(ObjectMatview) => "MATERIALIZED VIEW",
        Ok(ObjectForeignTable) => "FOREIGN TABLE",
        Ok(ObjectFunction) => "FUNCTION",
        Ok(ObjectProcedure) => "PROCEDURE",
        Ok(ObjectRoutine) => "ROUTINE",
        Ok(ObjectAggregate) => "AGGREGATE",
        Ok(ObjectSchema) => "SCHEMA",
        Ok(ObjectType) => "TYPE",
        Ok(ObjectDomain) => "DOMAIN",
        Ok(ObjectDatabase) => "DATABASE",
        Ok(ObjectRole) => "ROLE",
        Ok(ObjectExtension) => "EXTENSION",
        Ok(ObjectTrigger) => "TRIGGER",
        Ok(ObjectRule) => "RULE",
        Ok(ObjectPolicy) => "POLICY",
        Ok(ObjectTablespace) => "TABLESPACE",
        Ok(ObjectCollation) => "COLLATION",
        Ok(ObjectConversion) => "CONVERSION",
        Ok(ObjectLanguage) => "LANGUAGE",
        Ok(ObjectOperator) => "OPERATOR",
        Ok(ObjectPublication) => "PUBLICATION",
        Ok(ObjectSubscription) => "SUBSCRIPTION",
        Ok(ObjectForeignServer) => "SERVER",
        Ok(ObjectFdw) => "FOREIGN DATA WRAPPER",
        Ok(ObjectEventTrigger) => "EVENT TRIGGER",
        Ok(ObjectStatisticExt) => "STATISTICS",
        Ok(ObjectCast) => "CAST",
        Ok(ObjectColumn) => "TABLE",
        Ok(ObjectLargeobject) => "LARGE OBJECT",
        _ => "OBJECT",
    }
}

fn ddl_tag(node: &NodeEnum) -> String {
    let t = |s: &str| s.to_owned();
    match node {
        NodeEnum::CreateStmt(_) => t("CREATE TABLE"),
        NodeEnum::CreateTableAsStmt(c) if c.is_select_into => t("SELECT INTO"),
        NodeEnum::CreateTableAsStmt(c) => match ObjectType::try_from(c.objtype) {
            Ok(ObjectType::ObjectMatview) => t("CREATE MATERIALIZED VIEW"),
            _ => t("CREATE TABLE AS"),
        },
        NodeEnum::IndexStmt(_) => t("CREATE INDEX"),
        NodeEnum::ViewStmt(_) => t("CREATE VIEW"),
        NodeEnum::CreateSeqStmt(_) => t("CREATE SEQUENCE"),
        NodeEnum::AlterSeqStmt(_) => t("ALTER SEQUENCE"),
        NodeEnum::CreateFunctionStmt(f) => t(if f.is_procedure { "CREATE PROCEDURE" } else { "CREATE FUNCTION" }),
        NodeEnum::AlterFunctionStmt(f) => format!("ALTER {}", object_type_name(f.objtype)),
        NodeEnum::CreateSchemaStmt(_) => t("CREATE SCHEMA"),
        NodeEnum::CreateExtensionStmt(_) => t("CREATE EXTENSION"),
        NodeEnum::AlterExtensionStmt(_) | NodeEnum::AlterExtensionContentsStmt(_) => t("ALTER EXTENSION"),
        NodeEnum::CreatedbStmt(_) => t("CREATE DATABASE"),
        NodeEnum::DropdbStmt(_) => t("DROP DATABASE"),
        NodeEnum::AlterDatabaseStmt(_) | NodeEnum::AlterDatabaseSetStmt(_) => t("ALTER DATABASE"),
        NodeEnum::CreateTrigStmt(_) => t("CREATE TRIGGER"),
        NodeEnum::CreateEventTrigStmt(_) => t("CREATE EVENT TRIGGER"),
        NodeEnum::CreatePolicyStmt(_) => t("CREATE POLICY"),
        NodeEnum::AlterPolicyStmt(_) => t("ALTER POLICY"),
        NodeEnum::CreateDomainStmt(_) => t("CREATE DOMAIN"),
        NodeEnum::CompositeTypeStmt(_) | NodeEnum::CreateEnumStmt(_) | NodeEnum::CreateRangeStmt(_) => t("CREATE TYPE"),
        NodeEnum::AlterEnumStmt(_) => t("ALTER TYPE"),
        NodeEnum::CreateTableSpaceStmt(_) => t("CREATE TABLESPACE"),
        NodeEnum::RuleStmt(_) => t("CREATE RULE"),
        NodeEnum::CreatePublicationStmt(_) => t("CREATE PUBLICATION"),
        NodeEnum::CreateSubscriptionStmt(_) => t("CREATE SUBSCRIPTION"),
        NodeEnum::CreateForeignServerStmt(_) => t("CREATE SERVER"),
        NodeEnum::CreateForeignTableStmt(_) => t("CREATE FOREIGN TABLE"),
        NodeEnum::CreateStatsStmt(_) => t("CREATE STATISTICS"),
        NodeEnum::RefreshMatViewStmt(_) => t("REFRESH MATERIALIZED VIEW"),
        NodeEnum::CommentStmt(_) => t("COMMENT"),
        NodeEnum::SecLabelStmt(_) => t("SECURITY LABEL"),
        NodeEnum::AlterTableStmt(a) => format!("ALTER {}", object_type_name(a.objtype)),
        NodeEnum::RenameStmt(r) => format!("ALTER {}", object_type_name(r.rename_type)),
        NodeEnum::AlterOwnerStmt(a) => format!("ALTER {}", object_type_name(a.object_type)),
        NodeEnum::AlterObjectSchemaStmt(a) => format!("ALTER {}", object_type_name(a.object_type)),
        NodeEnum::DropStmt(d) => format!("DROP {}", object_type_name(d.remove_type)),
        NodeEnum::DropOwnedStmt(_) => t("DROP OWNED"),
        NodeEnum::ReassignOwnedStmt(_) => t("REASSIGN OWNED"),
        NodeEnum::DefineStmt(d) => format!("CREATE {}", object_type_name(d.kind)),
        _ => t("UNKNOWN"),
    }
}

/// The command part of a CommandComplete tag: `INSERT 0 1` -> `INSERT`, `SELECT 5` -> `SELECT`.
pub fn tag_from_completion(tag: &str) -> &str {
    let mut end = tag.len();
    for word in tag.rsplit(' ') {
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        end -= word.len() + 1;
    }
    tag.get(..end).unwrap_or(tag).trim_end()
}

/// The row count in a CommandComplete tag, when it carries one.
pub fn rows_from_completion(tag: &str) -> Option<u64> {
    let (command, count) = tag.rsplit_once(' ')?;
    let count = count.parse().ok()?;
    // `CREATE TABLE` and friends have no count; a trailing number always is one.
    (!command.is_empty()).then_some(count)
}

/// A class for a statement we could not parse, from the tag the server reported.
pub fn class_from_tag(tag: &str) -> EventClass {
    use EventClass::*;
    match tag {
        "SELECT" | "FETCH" | "DECLARE CURSOR" => Read,
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE TABLE" | "COPY" => Write,
        "DO" | "CALL" => Function,
        "GRANT" | "REVOKE" | "GRANT ROLE" | "REVOKE ROLE" | "CREATE ROLE" | "ALTER ROLE" | "DROP ROLE" => Role,
        t if t.starts_with("CREATE ") || t.starts_with("ALTER ") || t.starts_with("DROP ") => Ddl,
        "COMMENT" | "SELECT INTO" => Ddl,
        _ => Misc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_tags() {
        assert_eq!(tag_from_completion("INSERT 0 1"), "INSERT");
        assert_eq!(tag_from_completion("SELECT 5"), "SELECT");
        assert_eq!(tag_from_completion("CREATE TABLE"), "CREATE TABLE");
        assert_eq!(tag_from_completion("COPY 3"), "COPY");
        assert_eq!(rows_from_completion("INSERT 0 7"), Some(7));
        assert_eq!(rows_from_completion("UPDATE 0"), Some(0));
        assert_eq!(rows_from_completion("CREATE TABLE"), None);
        assert_eq!(rows_from_completion("BEGIN"), None);
    }
}
