//! A fresh schema per test, and a URL whose sessions use it (`search_path`).

use advisory_tests::{db, unique_name};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

/// A schema created for one test and dropped (with everything in it) when the value drops.
pub struct Fresh {
    pub name: String,
}

impl Fresh {
    pub fn new(prefix: &str) -> Fresh {
        let name = unique_name(prefix).replace(':', "_");
        // an identifier, not a key: made of [a-z0-9_] by unique_name, quoted anyway
        diesel::sql_query(format!("CREATE SCHEMA \"{name}\""))
            .execute(&mut admin())
            .expect("CREATE SCHEMA (the test role needs CREATE on the database)");
        Fresh { name }
    }

    /// The test database's URL with `search_path` set to this schema and an `application_name`.
    pub fn url(&self, app: &str) -> String {
        let url = db().url_with_app(app);
        format!("{url}&options=-csearch_path%3D{}", self.name)
    }

    /// `SELECT count(*) FROM <table>` in this schema.
    pub fn count(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM \"{}\".\"{table}\"",
            self.name
        ))
        .get_result::<N>(&mut admin())
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .n
    }

    /// Whether `table` exists in this schema.
    pub fn has_table(&self, table: &str) -> bool {
        has_table(&self.name, table)
    }
}

/// Whether `schema.table` exists.
pub fn has_table(schema: &str, table: &str) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = $2",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result::<N>(&mut admin())
    .expect("pg_tables")
    .n == 1
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let _ = diesel::sql_query(format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .execute(&mut admin());
    }
}

pub fn admin() -> PgConnection {
    PgConnection::establish(&db().url_with_app("interop-admin")).expect("connect")
}
