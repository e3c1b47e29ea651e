//! The `sql` task against the real PostgreSQL and MariaDB on this machine
//! and SQLite files: results into vars, hostile params stored byte for
//! byte, scripts, transactions, the database's own errors, statements
//! stopped on the server when a task times out, and column types as JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sqlx::{Connection as _, Row as _};
use switchyard::engine::RunRecord;
use switchyard::executors::sql::{Connection, Databases};
use switchyard::log::RunStatus;
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::spec::Workflow;

use crate::util::db::{self, MARIADB, POSTGRES};
use crate::util::workflow;

/// Which database a test drives, and its dialect.
#[derive(Clone, Copy, Debug)]
enum Dialect {
    Postgres,
    MariaDb,
    Sqlite,
}

impl Dialect {
    /// The n-th (1-based) placeholder.
    fn p(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".into(),
        }
    }

    fn long_text(self) -> &'static str {
        match self {
            Dialect::MariaDb => "longtext",
            _ => "text",
        }
    }
}

/// The database of `db` for `test`, as a named connection `main`; None:
/// skipped (no server and not required).
async fn connect(test: &str, db: Dialect, dir: &Path) -> Option<(Databases, String)> {
    let url = match db {
        Dialect::Postgres => db::available(test, POSTGRES).await?.to_string(),
        Dialect::MariaDb => db::available(test, MARIADB).await?.to_string(),
        Dialect::Sqlite => format!("sqlite://{}", dir.join("test.db").display()),
    };
    let named = BTreeMap::from([(
        "main".to_string(),
        Connection {
            url: url.clone(),
            // One connection: each task gets the one the task before used.
            max_connections: Some(1),
        },
    )]);
    Some((Databases::new(named, dir), url))
}

/// Runs `wf` with `params` on a runtime that reaches `databases`.
async fn run(dir: &Path, databases: &Databases, wf: Arc<Workflow>, params: Value) -> RunRecord {
    let runtime = Runtime::start(RuntimeConfig {
        databases: databases.clone(),
        ..RuntimeConfig::new(dir.join("data"))
    })
    .unwrap();
    let params: Map<String, Value> = serde_json::from_value(params).unwrap();
    let record = runtime
        .handle()
        .run_to_end(wf, params, None, |_| {})
        .await
        .unwrap();
    runtime.shutdown().await;
    record
}

fn error_of(record: &RunRecord, task: &str) -> String {
    record.tasks[task]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Hostile strings a param must carry unchanged (NUL only where the
/// database's text type can hold it: PostgreSQL's cannot).
fn hostile(db: Dialect) -> Vec<String> {
    let mut values = vec![
        "'; DROP TABLE x; --".to_string(),
        "it's \"quoted\" \\ back\\slash `tick` $1 ? %s".to_string(),
        "ünïcödé ✓ 🚂".to_string(),
        "x".repeat(1024 * 1024),
    ];
    if !matches!(db, Dialect::Postgres) {
        values.push("nul\0inside".to_string());
    }
    values
}

async fn a_query_result_feeds_later_tasks_and_params_are_stored_byte_for_byte(db: Dialect) {
    let test = format!("sql::results_and_params({db:?})");
    let dir = tempfile::tempdir().unwrap();
    let Some((databases, url)) = connect(&test, db, dir.path()).await else {
        return;
    };
    let t = db::table("campaigns");
    let notes = db::table("notes");
    let values = hostile(db);
    let mut tasks = vec![
        json!({"id": "setup", "sql": {"connection": "main", "script": format!(
            "create table {t} (id integer primary key, name varchar(40), note {long});
             create table {notes} (k integer primary key, v {long});
             insert into {t} (id, name) values (1, 'spring'), (2, 'summer'), (3, 'autumn');",
            long = db.long_text())}}),
        json!({"id": "find", "after": "setup", "sql": {"connection": "main",
            "query": format!("select id, name from {t} where name = {}", db.p(1)),
            "params": ["${params.season}"]},
            "export": {"campaign_id": "${output.scalar}"}}),
        json!({"id": "mark", "after": "find", "sql": {"connection": "main",
            "query": format!("update {t} set note = {} where id = {}", db.p(1), db.p(2)),
            "params": ["launched", "${vars.campaign_id}"]}}),
        json!({"id": "list", "after": "mark", "sql": {"connection": "main",
            "query": format!("select id, name, note from {t} order by id"), "max_rows": 2}}),
        json!({"id": "none", "after": "mark", "sql": {"connection": "main",
            "query": format!("select id from {t} where id = {}", db.p(1)), "params": [99]}}),
    ];
    let mut params = json!({"season": "summer"});
    for (i, _) in values.iter().enumerate() {
        params[format!("h{i}")] = json!(values[i]);
        tasks.push(
            json!({"id": format!("ins_{i}"), "after": "setup", "sql": {"connection": "main",
            "query": format!("insert into {notes} (k, v) values ({}, {})", db.p(1), db.p(2)),
            "params": [i, format!("${{params.h{i}}}")]}}),
        );
    }
    if matches!(db, Dialect::Postgres) {
        // PostgreSQL's text cannot hold NUL: the database refuses it, and
        // says so; nothing is stored.
        params["nul"] = json!("nul\0inside");
        tasks.push(json!({"id": "nul", "after": "setup", "allow_failure": true,
            "sql": {"connection": "main",
                "query": format!("insert into {notes} (k, v) values (100, $1)"),
                "params": ["${params.nul}"]}}));
    }
    let wf = workflow(json!({"name": "campaign", "tasks": tasks}));
    let record = run(dir.path(), &databases, wf, params).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    if matches!(db, Dialect::Postgres) {
        let error = error_of(&record, "nul");
        assert!(error.contains("0x00"), "{error}");
    }

    // The scalar became a var and the next task bound it.
    assert_eq!(record.vars["campaign_id"], 2);
    let find = &record.tasks["find"]["output"];
    assert_eq!(find["rows"], json!([{"id": 2, "name": "summer"}]));
    assert_eq!(find["row_count"], 1);
    assert_eq!(find["truncated"], false);
    assert_eq!(record.tasks["mark"]["output"]["rows_affected"], 1);
    assert_eq!(record.tasks["mark"]["output"]["scalar"], Value::Null);
    // max_rows keeps two rows and says more were there.
    let list = &record.tasks["list"]["output"];
    assert_eq!(
        list["rows"],
        json!([{"id": 1, "name": "spring", "note": null},
               {"id": 2, "name": "summer", "note": "launched"}])
    );
    assert_eq!(list["row_count"], 3);
    assert_eq!(list["truncated"], true);
    // No row: the scalar is null.
    let none = &record.tasks["none"]["output"];
    assert_eq!(
        (none["scalar"].clone(), none["row_count"].clone()),
        (Value::Null, json!(0))
    );
    assert_eq!(record.tasks["setup"]["output"]["rows_affected"], 3);

    // What the database holds, read with sqlx directly (its own connection
    // type per database), then the tables dropped.
    macro_rules! read_and_drop {
        ($connection:ty, $select:expr) => {{
            let mut c = <$connection>::connect(&url).await.unwrap();
            let rows = sqlx::query(sqlx::AssertSqlSafe($select))
                .fetch_all(&mut c)
                .await
                .unwrap();
            let out: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "drop table {t}; drop table {notes}"
            )))
            .execute(&mut c)
            .await
            .unwrap();
            out
        }};
    }
    let stored = match db {
        Dialect::Postgres => read_and_drop!(
            sqlx::PgConnection,
            format!("select k::int8, v from {notes} order by k")
        ),
        Dialect::MariaDb => read_and_drop!(
            sqlx::MySqlConnection,
            format!("select cast(k as signed), v from {notes} order by k")
        ),
        Dialect::Sqlite => read_and_drop!(
            sqlx::SqliteConnection,
            format!("select k, v from {notes} order by k")
        ),
    };
    assert_eq!(stored.len(), values.len());
    for (i, value) in values.iter().enumerate() {
        assert_eq!(stored[i].0, i as i64);
        assert!(
            stored[i].1 == *value,
            "value {i} changed on the way ({} bytes)",
            value.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_results_feed_later_tasks_and_params_are_stored_byte_for_byte() {
    a_query_result_feeds_later_tasks_and_params_are_stored_byte_for_byte(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_results_feed_later_tasks_and_params_are_stored_byte_for_byte() {
    a_query_result_feeds_later_tasks_and_params_are_stored_byte_for_byte(Dialect::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_results_feed_later_tasks_and_params_are_stored_byte_for_byte() {
    a_query_result_feeds_later_tasks_and_params_are_stored_byte_for_byte(Dialect::Sqlite).await;
}

async fn failures_roll_back_and_say_what_the_database_said(db: Dialect) {
    let test = format!("sql::failures({db:?})");
    let dir = tempfile::tempdir().unwrap();
    let Some((databases, _)) = connect(&test, db, dir.path()).await else {
        return;
    };
    let t = db::table("tx");
    let wf = workflow(json!({"name": "tx", "tasks": [
        {"id": "setup", "sql": {"connection": "main",
            "script": format!("create table {t} (id integer primary key)")}},
        // In a transaction: the first insert is rolled back with the failure.
        {"id": "atomic", "after": "setup", "allow_failure": true, "sql": {"connection": "main",
            "transaction": true,
            "script": format!("insert into {t} (id) values (1); insert into {t}_missing (id) values (2)")}},
        // Without one: the first insert stays.
        {"id": "loose", "after": "atomic:completion", "allow_failure": true, "sql": {"connection": "main",
            "script": format!("insert into {t} (id) values (3); insert into {t}_missing (id) values (4)")}},
        {"id": "typo", "after": "loose:completion", "allow_failure": true,
            "sql": {"connection": "main", "query": "selec 1"}},
        {"id": "count", "after": "typo:completion", "sql": {"connection": "main",
            "query": format!("select count(*) as n, sum(id) as total from {t}")}},
        {"id": "unknown", "after": "count", "allow_failure": true,
            "sql": {"connection": "nope", "query": "select 1"}},
        // A script that leaves its own transaction broken: the connection
        // is not handed to the next task in that state.
        {"id": "broken_tx", "after": "unknown:completion", "allow_failure": true,
            "sql": {"connection": "main", "script": format!("begin; insert into {t} (id) values (5); insert into {t}_missing (id) values (6)")}},
        {"id": "next", "after": "broken_tx:completion",
            "sql": {"connection": "main", "query": format!("select count(*) as n from {t}")}},
        {"id": "zero", "after": "next", "allow_failure": true,
            "sql": {"connection": "main", "query": format!("select {} as one", if matches!(db, Dialect::Sqlite) { "$0" } else { "1/0" })}},
        {"id": "short", "after": "zero:completion", "allow_failure": true,
            "sql": {"connection": "main", "query": format!("select {} as a, {} as b", db.p(1), db.p(2)), "params": [1]}},
    ]}));
    let record = run(dir.path(), &databases, wf, json!({})).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let missing = match db {
        Dialect::Postgres => "does not exist",
        Dialect::MariaDb => "doesn't exist",
        Dialect::Sqlite => "no such table",
    };
    assert!(error_of(&record, "atomic").contains(missing), "{record:?}");
    assert!(error_of(&record, "loose").contains(missing), "{record:?}");
    let syntax = error_of(&record, "typo");
    assert!(syntax.to_lowercase().contains("syntax"), "{syntax}");
    // The transaction's insert was rolled back. Without one, the first
    // insert stays, except on PostgreSQL, which runs a script sent in one
    // message as one implicit transaction.
    let count = &record.tasks["count"]["output"]["rows"][0];
    if matches!(db, Dialect::Postgres) {
        assert_eq!(
            (count["n"].clone(), count["total"].clone()),
            (json!(0), Value::Null),
            "{count}"
        );
    } else {
        assert_eq!(count["n"], 1, "{count}");
        assert_eq!(count["total"], 3, "{count}");
    }
    assert!(
        error_of(&record, "unknown").contains("no connection named `nope`"),
        "{record:?}"
    );
    assert_eq!(record.tasks["broken_tx"]["status"], "failed", "{record:?}");
    assert_eq!(record.tasks["next"]["status"], "succeeded", "{record:?}");
    if matches!(db, Dialect::Sqlite) {
        assert!(
            error_of(&record, "zero").contains("count from 1"),
            "{record:?}"
        );
    }
    // Too few params is an error, not NULLs bound in silence.
    assert_eq!(record.tasks["short"]["status"], "failed", "{record:?}");
    if !matches!(db, Dialect::Sqlite) {
        let drop = workflow(json!({"name": "drop", "tasks": [{"id": "drop",
            "sql": {"connection": "main", "script": format!("drop table {t}")}}]}));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            run(dir.path(), &databases, drop, json!({})).await.status,
            RunStatus::Succeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failures_roll_back_and_say_what_the_database_said() {
    failures_roll_back_and_say_what_the_database_said(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_failures_roll_back_and_say_what_the_database_said() {
    failures_roll_back_and_say_what_the_database_said(Dialect::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failures_roll_back_and_say_what_the_database_said() {
    failures_roll_back_and_say_what_the_database_said(Dialect::Sqlite).await;
}

/// How many statements carrying `marker` the server is still running.
async fn running_on_server(db: Dialect, url: &str, marker: &str) -> i64 {
    match db {
        Dialect::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and pid <> pg_backend_pid() and query like '%' || $1 || '%'",
            )
            .bind(marker)
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
        Dialect::MariaDb => {
            let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
            sqlx::query_scalar(
                "select count(*) from information_schema.processlist \
                 where command = 'Query' and id <> connection_id() and info like concat('%', ?, '%')",
            )
            .bind(marker)
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
        Dialect::Sqlite => 0,
    }
}

async fn a_timed_out_statement_is_stopped_on_the_server(db: Dialect) {
    let test = format!("sql::timeout({db:?})");
    let dir = tempfile::tempdir().unwrap();
    let Some((databases, url)) = connect(&test, db, dir.path()).await else {
        return;
    };
    let marker = format!("sy_marker_{}", uuid::Uuid::now_v7().simple());
    let query = match db {
        Dialect::Postgres => format!("select pg_sleep(60), '{marker}'"),
        Dialect::MariaDb => format!("select sleep(60), '{marker}'"),
        // Counts far past the timeout unless interrupted.
        Dialect::Sqlite => format!(
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < 5000000000) \
             select count(*), '{marker}' from n"
        ),
    };
    let wf = workflow(json!({"name": "slow", "tasks": [
        {"id": "slow", "timeout": "1s", "sql": {"connection": "main", "query": query}}]}));
    let started = Instant::now();
    let record = run(dir.path(), &databases, wf, json!({})).await;
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    assert!(
        error_of(&record, "slow").contains("timed out after 1s"),
        "{record:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Gone from the server's own list of running statements.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = running_on_server(db, &url, &marker).await;
        if running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{db:?}: the statement still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_timed_out_statement_is_stopped_on_the_server() {
    a_timed_out_statement_is_stopped_on_the_server(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_timed_out_statement_is_stopped_on_the_server() {
    a_timed_out_statement_is_stopped_on_the_server(Dialect::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_timed_out_statement_is_interrupted() {
    a_timed_out_statement_is_stopped_on_the_server(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_column_types_map_to_json() {
    let dir = tempfile::tempdir().unwrap();
    let Some((databases, _)) = connect("sql::postgres_types", Dialect::Postgres, dir.path()).await
    else {
        return;
    };
    let query = "select 1::int2 as i2, 2::int4 as i4, 9007199254740993::int8 as i8, \
        1.5::float4 as f4, 2.25::float8 as f8, 12.50::numeric as price, 42::numeric as whole, \
        123456789012345678901234567890.123::numeric as huge, true as yes, 'txt'::text as t, \
        'v'::varchar as vc, '{\"a\": [1, null]}'::jsonb as jb, '{\"b\": 2}'::json as j, \
        '2026-01-02 03:04:05.123456+02'::timestamptz as ts, '2026-01-02 03:04:05'::timestamp as naive, \
        '2026-01-02'::date as d, '03:04:05'::time as tm, '\\x00ff10'::bytea as bytes, \
        null::text as nothing, array[1, null, 3]::int4[] as ints, array['a', 'b']::text[] as texts, \
        '018f3c2e-7b1a-7000-8000-000000000001'::uuid as id, 'ab'::char(4) as fixed, \
        'x'::\"char\" as one_byte, 'Infinity'::numeric as inf";
    let wf = workflow(json!({"name": "types", "tasks": [
        {"id": "q", "sql": {"connection": "main", "query": query}},
        {"id": "nulls", "sql": {"connection": "main",
            "query": "select $1::int4 is null as was_null, $2::jsonb as doc, $3::float8 as f",
            "params": [null, {"k": ["v", 1]}, 0.5]}},
        {"id": "odd", "allow_failure": true, "sql": {"connection": "main",
            "query": "select '1 day'::interval as span"}},
    ]}));
    let record = run(dir.path(), &databases, wf, json!({})).await;
    let row = &record.tasks["q"]["output"]["rows"][0];
    assert_eq!(
        *row,
        json!({"i2": 1, "i4": 2, "i8": 9007199254740993_i64, "f4": 1.5, "f8": 2.25,
            "price": "12.50", "whole": 42, "huge": "123456789012345678901234567890.123",
            "yes": true, "t": "txt", "vc": "v", "jb": {"a": [1, null]}, "j": {"b": 2},
            "ts": "2026-01-02T01:04:05.123456Z", "naive": "2026-01-02T03:04:05",
            "d": "2026-01-02", "tm": "03:04:05", "bytes": "AP8Q", "nothing": null,
            "ints": [1, null, 3], "texts": ["a", "b"],
            "id": "018f3c2e-7b1a-7000-8000-000000000001", "fixed": "ab  ",
            "one_byte": "x", "inf": "Infinity"}),
        "{record:?}"
    );
    assert_eq!(record.tasks["q"]["output"]["scalar"], 1);
    assert_eq!(
        record.tasks["nulls"]["output"]["rows"][0],
        json!({"was_null": true, "doc": {"k": ["v", 1]}, "f": 0.5}),
        "{record:?}"
    );
    let odd = error_of(&record, "odd");
    assert!(
        odd.contains("column `span` has type INTERVAL, which has no JSON mapping")
            && odd.contains("span::text"),
        "{odd}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_and_sqlite_column_types_map_to_json() {
    let dir = tempfile::tempdir().unwrap();
    if let Some((databases, _)) = connect("sql::mariadb_types", Dialect::MariaDb, dir.path()).await
    {
        let query = "select cast(1 as signed) as i, cast(18446744073709551615 as unsigned) as u, \
            cast(2.25 as double) as f, cast(12.50 as decimal(10,2)) as price, \
            cast(42 as decimal(10,0)) as whole, 'txt' as t, \
            cast('2026-01-02 03:04:05' as datetime) as naive, cast('2026-01-02' as date) as d, \
            cast('03:04:05' as time) as tm, cast(x'00ff10' as binary) as bytes, null as nothing, \
            json_object('a', 1) as doc";
        let wf = workflow(json!({"name": "types", "tasks": [
            {"id": "q", "sql": {"connection": "main", "query": query}}]}));
        let record = run(dir.path(), &databases, wf, json!({})).await;
        let row = &record.tasks["q"]["output"]["rows"][0];
        assert_eq!(row["i"], 1, "{record:?}");
        assert_eq!(row["u"], json!(18446744073709551615_u64));
        assert_eq!(row["f"], 2.25);
        assert_eq!(row["price"], "12.50");
        assert_eq!(row["whole"], 42);
        assert_eq!(row["t"], "txt");
        assert_eq!(row["naive"], "2026-01-02T03:04:05");
        assert_eq!(row["d"], "2026-01-02");
        assert_eq!(row["tm"], "03:04:05");
        assert_eq!(row["bytes"], "AP8Q");
        assert_eq!(row["nothing"], Value::Null);
        // MariaDB's JSON is text with a check constraint: it comes back as text.
        let doc: Value = serde_json::from_str(row["doc"].as_str().unwrap()).unwrap();
        assert_eq!(doc, json!({"a": 1}));
    }
    let dir = tempfile::tempdir().unwrap();
    let (databases, _) = connect("sql::sqlite_types", Dialect::Sqlite, dir.path())
        .await
        .unwrap();
    let wf = workflow(json!({"name": "types", "tasks": [
        {"id": "setup", "sql": {"connection": "main",
            "script": "create table t (i integer, r real, s text, b blob, flag boolean, n integer)"}},
        {"id": "ins", "after": "setup", "sql": {"connection": "main",
            "query": "insert into t values (?, ?, ?, x'00ff10', ?, ?)",
            "params": [7, 1.5, "txt", true, null]}},
        {"id": "q", "after": "ins", "sql": {"connection": "main", "query": "select * from t"}},
    ]}));
    let record = run(dir.path(), &databases, wf, json!({})).await;
    assert_eq!(
        record.tasks["q"]["output"]["rows"][0],
        json!({"i": 7, "r": 1.5, "s": "txt", "b": "AP8Q", "flag": true, "n": null}),
        "{record:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_password_never_shows_in_an_error_or_a_record() {
    let dir = tempfile::tempdir().unwrap();
    if db::available("sql::password", POSTGRES).await.is_none() {
        return;
    }
    // Trust auth takes any password; the database does not exist, so the
    // connection fails after the password was sent.
    let password = "Pw-7f3c9a2b1e-secret";
    let url = format!("postgres://postgres:{password}@127.0.0.1:5432/sy_no_such_database");
    let databases = Databases::new(
        BTreeMap::from([(
            "shop".to_string(),
            Connection {
                url: url.clone(),
                max_connections: None,
            },
        )]),
        dir.path(),
    );
    let wf = workflow(json!({"name": "pw", "tasks": [
        {"id": "named", "allow_failure": true, "sql": {"connection": "shop", "query": "select 1"}},
    ]}));
    let record = run(dir.path(), &databases, wf, json!({})).await;
    let error = error_of(&record, "named");
    assert!(error.contains("sy_no_such_database"), "{error}");
    let everything = serde_json::to_string(&record.tasks).unwrap();
    assert!(!everything.contains(password), "{everything}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_asked_for_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(url) = db::available("sql::tls(postgres)", POSTGRES).await {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let ssl: String = sqlx::query_scalar("show ssl")
            .fetch_one(&mut c)
            .await
            .unwrap();
        let databases = Databases::new(BTreeMap::new(), dir.path());
        let wf = workflow(json!({"name": "tls", "tasks": [
            {"id": "required", "allow_failure": true, "sql": {"url": format!("{url}?sslmode=require"),
                "query": "select ssl from pg_stat_ssl where pid = pg_backend_pid()"}},
            // The server's certificate is not signed by a root this machine trusts.
            {"id": "verified", "allow_failure": true, "sql": {"url": format!("{url}?sslmode=verify-full"),
                "query": "select 1"}},
        ]}));
        let record = run(dir.path(), &databases, wf, json!({})).await;
        if ssl == "on" {
            assert_eq!(
                record.tasks["required"]["output"]["scalar"], true,
                "{record:?}"
            );
            let error = error_of(&record, "verified");
            assert!(error.to_lowercase().contains("certificate"), "{error}");
        } else {
            let error = error_of(&record, "required");
            assert!(
                error.to_lowercase().contains("ssl") || error.to_lowercase().contains("tls"),
                "{error}"
            );
        }
    }
    if let Some(url) = db::available("sql::tls(mariadb)", MARIADB).await {
        let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
        let have: Option<(String, String)> = sqlx::query_as("show variables like 'have_ssl'")
            .fetch_optional(&mut c)
            .await
            .unwrap();
        let databases = Databases::new(BTreeMap::new(), dir.path());
        let wf = workflow(json!({"name": "tls", "tasks": [
            {"id": "required", "allow_failure": true, "sql": {"url": format!("{url}?ssl-mode=REQUIRED"),
                "query": "select 1 as one"}},
        ]}));
        let record = run(dir.path(), &databases, wf, json!({})).await;
        if have.is_some_and(|(_, v)| v == "YES") {
            assert_eq!(
                record.tasks["required"]["output"]["scalar"], 1,
                "{record:?}"
            );
        } else {
            // A server without TLS refuses to be required to use it.
            let error = error_of(&record, "required");
            assert!(
                error.to_lowercase().contains("ssl") || error.to_lowercase().contains("tls"),
                "{error}"
            );
        }
    }
}
