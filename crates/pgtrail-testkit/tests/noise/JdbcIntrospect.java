// What a JDBC-based tool (DBeaver, DataGrip, any JDBC application) asks the server through
// the PostgreSQL JDBC driver when it connects and browses a schema: DatabaseMetaData calls
// and the usual validation query. Then one statement of the user's own, which must not be
// noise. Run as: java -cp postgresql.jar JdbcIntrospect.java URL USER PASSWORD
import java.sql.*;

public class JdbcIntrospect {
    static void drain(ResultSet rs) throws SQLException {
        try (rs) {
            while (rs.next()) { }
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData m = c.getMetaData();
            m.getDatabaseProductVersion();
            drain(m.getCatalogs());
            drain(m.getSchemas());
            drain(m.getTableTypes());
            drain(m.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"}));
            drain(m.getColumns(null, "public", "phonebook", "%"));
            drain(m.getPrimaryKeys(null, "public", "phonebook"));
            drain(m.getImportedKeys(null, "public", "phonebook"));
            drain(m.getExportedKeys(null, "public", "phonebook"));
            drain(m.getIndexInfo(null, "public", "phonebook", false, true));
            drain(m.getProcedures(null, "public", "%"));
            drain(m.getFunctions(null, "public", "%"));
            drain(m.getTypeInfo());
            drain(m.getUDTs(null, "public", "%", null));
            drain(m.getTablePrivileges(null, "public", "phonebook"));
            drain(m.getColumnPrivileges(null, "public", "phonebook", "%"));
            drain(m.getBestRowIdentifier(null, "public", "phonebook", DatabaseMetaData.bestRowSession, true));
            c.isValid(2);
            try (Statement s = c.createStatement()) {
                drain(s.executeQuery("SELECT 1")); // connection pools' validation query
                drain(s.executeQuery("SELECT name FROM phonebook")); // the user's own
            }
        }
        System.out.println("done");
    }
}
