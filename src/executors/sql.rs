//! `sql`: one statement with bound parameters, or a script of several, on
//! PostgreSQL, MySQL/MariaDB or SQLite (sqlx). Connections come from
//! `switchyard.json`'s `connections` (by name) or a task's own `url`; each
//! distinct URL gets one pool, shared by every task and run.
//!
//! Event data never becomes SQL: `${…}` is refused inside `query` and
//! `script` at load time, and values reach the database only as bound
//! `params`. A cancelled or timed-out attempt stops its statement on the
//! server (PostgreSQL `pg_cancel_backend`, MySQL `KILL QUERY`, SQLite's
//! progress handler), so nothing keeps running after the task has failed.
//!
//! Column values map to JSON as the README's "sql column types" table says.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_lite::StreamExt as _;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Number, Value, json};
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlPool, MySqlRow};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgRow, PgTypeKind, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnectOptions, SqlitePool, SqliteRow};
use sqlx::{
    Arguments as _, AssertSqlSafe, Column as _, ConnectOptions as _, Connection as _, Database,
    Decode, Either, Executor, Row as _, TypeInfo as _, ValueRef as _,
};
use tokio_util::sync::CancellationToken;

use super::{AttemptContext, AttemptOutcome, Kind, redact_userinfo};

/// Rows kept in the output unless `max_rows` says otherwise.
pub const DEFAULT_MAX_ROWS: usize = 1000;
/// Connections per pool unless the connection sets `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// How long an attempt waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cancelled statement may take to stop once the server was
/// asked to stop it.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// `"sql": {"connection": "shop", "query": "select id from campaigns where
/// launch_date = $1", "params": ["${vars.day}"]}`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    /// A connection named in `switchyard.json`'s `connections`.
    #[serde(default)]
    pub connection: Option<String>,
    /// A database URL (`postgres://`, `mysql://`, `mariadb://`, `sqlite://`),
    /// instead of a named connection.
    #[serde(default)]
    pub url: Option<String>,
    /// One statement; `params` are bound to its placeholders (`$1` on
    /// PostgreSQL, `?` on MySQL and SQLite), never spliced into it.
    #[serde(default)]
    pub query: Option<String>,
    /// Values bound to `query`'s placeholders, in order.
    #[serde(default)]
    pub params: Vec<Value>,
    /// Several statements separated by `;`, run as one script (no params).
    #[serde(default)]
    pub script: Option<String>,
    /// Rows kept in the output (default 1000); more set `truncated`.
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Run in one transaction, rolled back when anything fails.
    #[serde(default)]
    pub transaction: bool,
}

impl Kind for Sql {
    const NAME: &'static str = "sql";

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        match (&self.connection, &self.url) {
            (Some(_), Some(_)) => errors.push((
                String::new(),
                "set either `connection` (a name from switchyard.json) or `url`, not both".into(),
            )),
            (None, None) => errors.push((
                String::new(),
                "set `connection` (a name from switchyard.json's `connections`) or `url`".into(),
            )),
            _ => {}
        }
        match (&self.query, &self.script) {
            (Some(_), Some(_)) => errors.push((
                String::new(),
                "set either `query` (one statement, with `params`) or `script`, not both".into(),
            )),
            (None, None) => errors.push((
                String::new(),
                "set `query` (one statement, with `params`) or `script`".into(),
            )),
            (None, Some(_)) if !self.params.is_empty() => errors.push((
                ".params".into(),
                "a `script` takes no params: use `query` for a statement with params".into(),
            )),
            _ => {}
        }
        // What runs is fixed by the file: event data may only become bound
        // values, never SQL text.
        for (path, text) in [(".query", &self.query), (".script", &self.script)] {
            if text.as_deref().is_some_and(super::shell::has_template) {
                errors.push((
                    path.into(),
                    format!(
                        "`${{…}}` is not allowed inside sql{path}: event data must not become SQL. \
                         Use a placeholder and pass the value in `params`, e.g. \
                         \"query\": \"select * from t where id = $1\", \"params\": [\"${{vars.id}}\"] \
                         (`?` instead of `$1` on MySQL and SQLite; write $${{ for a literal ${{)"
                    ),
                ));
            }
        }
        if self.max_rows == Some(0) {
            errors.push((".max_rows".into(), "must be at least 1".into()));
        }
        if let Some(url) = &self.url {
            check_task_url(url, errors);
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let databases = &ctx.databases;
        let (pool, url) = match databases.pool_for(self.connection.as_deref(), self.url.as_deref())
        {
            Ok(found) => found,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let statement = match (&self.query, &self.script) {
            (Some(query), None) => Statement::Query {
                sql: query.clone(),
                params: self.params.clone(),
            },
            (None, Some(script)) => Statement::Script(script.clone()),
            _ => {
                return AttemptOutcome::permanent_failure(
                    "set exactly one of `query` and `script`",
                );
            }
        };
        let work = Work {
            statement,
            transaction: self.transaction,
            max_rows: self.max_rows.unwrap_or(DEFAULT_MAX_ROWS),
        };
        let result = match &pool {
            Pool::Postgres(pool) => run_postgres(pool, &work, &ctx.cancel, &url).await,
            Pool::MySql(pool) => run_mysql(pool, &work, &ctx.cancel, &url).await,
            Pool::Sqlite(pool) => run_sqlite(pool, &work, &ctx.cancel).await,
        };
        match result {
            Ok(collected) => AttemptOutcome::success(collected.output()),
            Err(Failure::Cancelled) => AttemptOutcome::failure("cancelled"),
            Err(Failure::Permanent(e)) => {
                AttemptOutcome::permanent_failure(redact_password(&e, &url))
            }
            Err(Failure::Database(e)) => AttemptOutcome::failure(redact_password(&e, &url)),
        }
    }
}

/// The databases `sql` tasks reach: named connections (URLs already
/// rendered) and one pool per distinct URL, made on first use. Cheap to
/// clone; clones share the pools.
#[derive(Clone, Default)]
pub struct Databases {
    inner: Arc<DatabasesInner>,
}

#[derive(Default)]
struct DatabasesInner {
    named: BTreeMap<String, Connection>,
    /// Connections whose URL could not be rendered, with the reason.
    unavailable: BTreeMap<String, String>,
    /// Relative SQLite paths resolve against the project directory.
    base: PathBuf,
    pools: Mutex<HashMap<String, Pool>>,
}

/// A named connection, its URL rendered.
#[derive(Debug, Clone)]
pub struct Connection {
    pub url: String,
    pub max_connections: Option<u32>,
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.inner.named.keys()).finish()
    }
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

impl Databases {
    /// Named connections (URLs rendered); relative SQLite paths resolve
    /// against `base`. Nothing connects until a task uses a connection.
    pub fn new(named: BTreeMap<String, Connection>, base: impl Into<PathBuf>) -> Self {
        Self::build(named, BTreeMap::new(), base.into())
    }

    fn build(
        named: BTreeMap<String, Connection>,
        unavailable: BTreeMap<String, String>,
        base: PathBuf,
    ) -> Self {
        Self {
            inner: Arc::new(DatabasesInner {
                named,
                unavailable,
                base,
                pools: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The config's `connections`, their URLs rendered over `secrets`. A
    /// URL that cannot be rendered (a secret this process did not read)
    /// leaves its connection out with the reason, which a task using it
    /// reports; `strict` makes it an error naming the connection instead.
    pub fn from_config(
        config: &crate::spec::Config,
        secrets: &crate::spec::Secrets,
        strict: bool,
    ) -> Result<Self, (String, String)> {
        let mut scope = crate::expr::MapScope::default();
        scope.names.insert("secrets".into(), secrets.to_json());
        let mut named = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        for (name, connection) in &config.connections {
            let rendered = crate::expr::Template::parse(&connection.url)
                .map_err(|e| e.to_string())
                .and_then(|t| t.render_string(&scope).map_err(|e| e.to_string()))
                .and_then(|url| Self::check_url(&url).map(|()| url));
            match rendered {
                Ok(url) => {
                    named.insert(
                        name.clone(),
                        Connection {
                            url,
                            max_connections: connection.max_connections,
                        },
                    );
                }
                Err(e) => {
                    let e = secrets.redact(&e);
                    if strict {
                        return Err((format!("connections.{name}.url"), e));
                    }
                    unavailable.insert(name.clone(), e);
                }
            }
        }
        Ok(Self::build(named, unavailable, config.base.clone()))
    }

    /// Checks a rendered connection URL (driver and shape), for start-up errors.
    pub fn check_url(url: &str) -> Result<(), String> {
        Target::parse(url, Path::new(".")).map(|_| ())
    }

    /// The URL of a named connection (for a remote `sql` task's job: the
    /// worker has no `connections` of its own).
    pub fn url_of(&self, name: &str) -> Result<String, String> {
        if let Some(reason) = self.inner.unavailable.get(name) {
            return Err(format!("connection `{name}` is unavailable: {reason}"));
        }
        self.inner
            .named
            .get(name)
            .map(|c| c.url.clone())
            .ok_or_else(|| {
                format!("no connection named `{name}` in switchyard.json's `connections`")
            })
    }

    /// The passwords inside the named connections' URLs: redacted wherever
    /// text is recorded, like secrets.
    pub fn passwords(&self) -> Vec<String> {
        self.inner
            .named
            .values()
            .filter_map(|c| password_of(&c.url))
            .collect()
    }

    fn pool_for(
        &self,
        connection: Option<&str>,
        url: Option<&str>,
    ) -> Result<(Pool, String), String> {
        let (url, max_connections) = match (connection, url) {
            (Some(name), None) => {
                if let Some(reason) = self.inner.unavailable.get(name) {
                    return Err(format!("connection `{name}` is unavailable: {reason}"));
                }
                let Some(found) = self.inner.named.get(name) else {
                    let known: Vec<&str> = self.inner.named.keys().map(String::as_str).collect();
                    return Err(format!(
                        "no connection named `{name}` in switchyard.json's `connections` (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                };
                (found.url.clone(), found.max_connections)
            }
            (None, Some(url)) => (url.to_string(), None),
            _ => return Err("set exactly one of `connection` and `url`".into()),
        };
        let mut pools = self
            .inner
            .pools
            .lock()
            .map_err(|_| "the connection pools are unavailable".to_string())?;
        if let Some(pool) = pools.get(&url) {
            return Ok((pool.clone(), url));
        }
        let target = Target::parse(&url, &self.inner.base)?;
        let max = max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1);
        let pool = match target {
            Target::Postgres(options) => Pool::Postgres(
                sqlx::pool::PoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options),
            ),
            Target::MySql(options) => Pool::MySql(
                sqlx::pool::PoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options),
            ),
            Target::Sqlite(options) => Pool::Sqlite(
                sqlx::pool::PoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options),
            ),
        };
        pools.insert(url.clone(), pool.clone());
        Ok((pool, url))
    }
}

/// A task's own `url`: event data must not choose the database (a new pool,
/// or a new SQLite file, per value), and a password written into a
/// workflow file would be stored with every run's definition.
fn check_task_url(url: &str, errors: &mut Vec<(String, String)>) {
    if url.contains("${") {
        let only_secrets = url.split("${").skip(1).all(|expr| {
            let expr = expr.split('}').next().unwrap_or_default().trim();
            expr.starts_with("secrets.") || expr.starts_with("secrets[")
        });
        if !only_secrets {
            errors.push((
                ".url".into(),
                "a task's `url` may be built only from secrets (`${secrets.db_url}`): event \
                 data must not choose the database. Name a connection from switchyard.json's \
                 `connections` instead"
                    .into(),
            ));
        }
        return;
    }
    if let Err(e) = Target::parse(url, Path::new(".")) {
        errors.push((".url".into(), e));
    } else if password_of(url).is_some() {
        errors.push((
            ".url".into(),
            format!(
                "`{}` holds a password, which would be stored with the workflow: put the URL \
                 in a secret (`${{secrets.…}}`) or in switchyard.json's `connections`",
                redact_userinfo(url)
            ),
        ));
    }
}

/// Where a URL points, parsed by its driver.
enum Target {
    Postgres(PgConnectOptions),
    MySql(MySqlConnectOptions),
    Sqlite(SqliteConnectOptions),
}

impl Target {
    fn parse(url: &str, base: &Path) -> Result<Self, String> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        let bad = |e: sqlx::Error| format!("`{}` is not a database URL: {e}", redact_userinfo(url));
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => PgConnectOptions::from_str(url)
                .map(|o| Target::Postgres(o.application_name("switchyard")))
                .map_err(bad),
            Some("mysql" | "mariadb") => {
                let url = match url.split_once(':') {
                    Some(("mariadb", rest)) => format!("mysql:{rest}"),
                    _ => url.to_string(),
                };
                MySqlConnectOptions::from_str(&url)
                    .map(Target::MySql)
                    .map_err(bad)
            }
            Some("sqlite") => {
                let mut options = SqliteConnectOptions::from_str(url).map_err(bad)?;
                let file = options.get_filename().to_path_buf();
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                if !in_memory && file.is_relative() {
                    options = options.filename(base.join(file));
                }
                if !url.contains("mode=") {
                    options = options.create_if_missing(true);
                }
                Ok(Target::Sqlite(options))
            }
            _ => Err(format!(
                "`{}` is not a database URL: use postgres://, mysql://, mariadb:// or sqlite://",
                redact_userinfo(url)
            )),
        }
    }
}

enum Statement {
    Query { sql: String, params: Vec<Value> },
    Script(String),
}

struct Work {
    statement: Statement,
    transaction: bool,
    max_rows: usize,
}

/// Why an attempt failed.
enum Failure {
    /// The database or the connection failed (may pass on a retry).
    Database(String),
    /// A parameter or a column that cannot work however often it is tried.
    Permanent(String),
    Cancelled,
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Database(describe_error(&e))
    }
}

/// What a statement returned.
#[derive(Debug, Default)]
struct Collected {
    rows: Vec<Value>,
    /// Every row the statement returned, kept or not.
    row_count: u64,
    rows_affected: u64,
    scalar: Value,
}

impl Collected {
    fn output(self) -> Value {
        let truncated = self.row_count > self.rows.len() as u64;
        json!({
            "rows": self.rows,
            "row_count": self.row_count,
            "rows_affected": self.rows_affected,
            "scalar": self.scalar,
            "truncated": truncated,
        })
    }
}

/// Runs `work` on one connection: its statement, in a transaction when asked.
async fn run_work<DB>(
    conn: &mut DB::Connection,
    work: &Work,
    arguments: impl FnOnce(&[Value]) -> Result<DB::Arguments, Failure>,
    to_json: fn(&DB::Row) -> Result<Row, Failure>,
    affected: fn(&DB::QueryResult) -> u64,
) -> Result<Collected, Failure>
where
    DB: Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    if work.transaction {
        let mut tx = DB::Connection::begin(conn).await?;
        let result = collect::<DB>(&mut tx, work, arguments, to_json, affected).await;
        match result {
            Ok(collected) => {
                tx.commit().await?;
                Ok(collected)
            }
            Err(e) => {
                // Rolled back here, not on drop, so the connection goes
                // back to the pool clean.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    } else {
        collect::<DB>(conn, work, arguments, to_json, affected).await
    }
}

async fn collect<DB>(
    conn: &mut DB::Connection,
    work: &Work,
    arguments: impl FnOnce(&[Value]) -> Result<DB::Arguments, Failure>,
    to_json: fn(&DB::Row) -> Result<Row, Failure>,
    affected: fn(&DB::QueryResult) -> u64,
) -> Result<Collected, Failure>
where
    DB: Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut collected = Collected {
        scalar: Value::Null,
        ..Collected::default()
    };
    let mut stream = match &work.statement {
        Statement::Query { sql, params } => {
            let args = arguments(params)?;
            conn.fetch_many(sqlx::query_with::<DB, _>(AssertSqlSafe(sql.as_str()), args))
        }
        Statement::Script(script) => conn.fetch_many(sqlx::raw_sql(AssertSqlSafe(script.as_str()))),
    };
    while let Some(step) = stream.next().await {
        match step? {
            Either::Left(result) => collected.rows_affected += affected(&result),
            Either::Right(row) => {
                collected.row_count += 1;
                if collected.rows.len() < work.max_rows {
                    let row = to_json(&row)?;
                    if collected.rows.is_empty() {
                        collected.scalar = row.first.clone();
                    }
                    collected.rows.push(Value::Object(row.columns));
                }
            }
        }
    }
    Ok(collected)
}

/// One row as JSON, and its first column (the output's `scalar`).
struct Row {
    columns: Map<String, Value>,
    first: Value,
}

/// A future raced against the attempt's cancel token.
enum Raced<T> {
    Done(T),
    Cancelled,
}

async fn race<T>(work: impl Future<Output = T>, cancel: &CancellationToken) -> Raced<T> {
    tokio::select! {
        done = work => Raced::Done(done),
        _ = cancel.cancelled() => Raced::Cancelled,
    }
}

/// The server-side id of a connection (PostgreSQL's backend pid, MySQL's
/// connection id), raced against the cancel token.
async fn server_id<DB, T>(
    conn: &mut sqlx::pool::PoolConnection<DB>,
    query: &'static str,
    cancel: &CancellationToken,
) -> Result<T, Failure>
where
    DB: Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    T: for<'r> Decode<'r, DB> + sqlx::Type<DB> + Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let asked = race(
        sqlx::query_scalar::<DB, T>(query).fetch_one(&mut **conn),
        cancel,
    )
    .await;
    match asked {
        Raced::Done(Ok(id)) => Ok(id),
        Raced::Done(Err(e)) => {
            conn.close_on_drop();
            Err(e.into())
        }
        Raced::Cancelled => {
            conn.close_on_drop();
            Err(Failure::Cancelled)
        }
    }
}

/// After a cancel: asks the server to stop the statement (`stop`, bounded),
/// then gives the work [`CANCEL_GRACE`] to end. Work that completed stands.
async fn stop_statement(
    work: impl Future<Output = Result<Collected, Failure>>,
    stop: impl Future<Output = Result<(), sqlx::Error>>,
    what: &str,
    url: &str,
) -> Result<Collected, Failure> {
    match tokio::time::timeout(CANCEL_GRACE, stop).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            error = %redact_password(&describe_error(&e), url),
            "Could not stop a {what} statement."
        ),
        Err(_) => tracing::warn!("Could not stop a {what} statement: no answer within 5s."),
    }
    match tokio::time::timeout(CANCEL_GRACE, work).await {
        Ok(Ok(collected)) => Ok(collected),
        _ => Err(Failure::Cancelled),
    }
}

/// What a connection needs before it goes back to the pool: one whose
/// statement failed or was stopped is closed instead (it may be inside an
/// aborted transaction, or still busy). After a script, a transaction the
/// script may have left open is rolled back (`rollback`), or, where a
/// stray `rollback` would be logged as a warning (PostgreSQL), the
/// connection is closed.
async fn release<DB>(
    conn: &mut sqlx::pool::PoolConnection<DB>,
    work: &Work,
    failed: bool,
    close_after_script: bool,
) where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let script = matches!(work.statement, Statement::Script(_)) && !work.transaction;
    if failed || (script && close_after_script) {
        conn.close_on_drop();
    } else if script {
        let _ = sqlx::raw_sql("rollback").execute(&mut **conn).await;
    }
}

async fn run_postgres(
    pool: &PgPool,
    work: &Work,
    cancel: &CancellationToken,
    url: &str,
) -> Result<Collected, Failure> {
    let mut conn = acquire(pool, cancel).await?;
    // The backend's pid, to cancel the statement from another connection:
    // dropping the future would leave it running on the server.
    let pid: i32 = server_id(&mut conn, "select pg_backend_pid()", cancel).await?;
    let result = {
        let running =
            run_work::<Postgres>(&mut conn, work, pg_arguments, pg_row, |r| r.rows_affected());
        tokio::pin!(running);
        match race(&mut running, cancel).await {
            Raced::Done(result) => result,
            Raced::Cancelled => {
                let options = pool.connect_options();
                let stop = async {
                    let mut other = options.connect().await?;
                    sqlx::query("select pg_cancel_backend($1)")
                        .bind(pid)
                        .execute(&mut other)
                        .await?;
                    other.close().await
                };
                stop_statement(running, stop, "PostgreSQL", url).await
            }
        }
    };
    release(&mut conn, work, result.is_err(), true).await;
    result
}

async fn run_mysql(
    pool: &MySqlPool,
    work: &Work,
    cancel: &CancellationToken,
    url: &str,
) -> Result<Collected, Failure> {
    let mut conn = acquire(pool, cancel).await?;
    let id: u64 = server_id(&mut conn, "select connection_id()", cancel).await?;
    let result = {
        let running = run_work::<MySql>(&mut conn, work, mysql_arguments, mysql_row, |r| {
            r.rows_affected()
        });
        tokio::pin!(running);
        match race(&mut running, cancel).await {
            Raced::Done(result) => result,
            Raced::Cancelled => {
                let options = pool.connect_options();
                let stop = async {
                    let mut other = options.connect().await?;
                    // KILL takes no placeholder; `id` is a number we read.
                    sqlx::raw_sql(AssertSqlSafe(format!("KILL QUERY {id}")))
                        .execute(&mut other)
                        .await?;
                    other.close().await
                };
                stop_statement(running, stop, "MySQL", url).await
            }
        }
    };
    release(&mut conn, work, result.is_err(), false).await;
    result
}

async fn run_sqlite(
    pool: &SqlitePool,
    work: &Work,
    cancel: &CancellationToken,
) -> Result<Collected, Failure> {
    // A new database file gets its directory too (`sqlite://data/shop.db`
    // on a fresh checkout).
    let options = pool.connect_options();
    let file = options.get_filename();
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Err(Failure::Database(format!(
            "cannot create {} for the SQLite database: {e}",
            dir.display()
        )));
    }
    if let Statement::Query { sql, .. } = &work.statement {
        check_sqlite_placeholders(sql)?;
    }
    let mut conn = acquire(pool, cancel).await?;
    if let Statement::Query { sql, params } = &work.statement {
        // SQLite binds a missing param as NULL without a word: count them.
        let statement = conn
            .prepare(sqlx::SqlSafeStr::into_sql_str(AssertSqlSafe(sql.as_str())))
            .await?;
        let wanted = match sqlx::Statement::parameters(&statement) {
            Some(Either::Left(types)) => types.len(),
            Some(Either::Right(n)) => n,
            None => params.len(),
        };
        if wanted != params.len() {
            return Err(Failure::Permanent(format!(
                "the query has {wanted} placeholder(s) but params has {} value(s)",
                params.len()
            )));
        }
    }
    // SQLite runs in this process: its progress handler interrupts the
    // statement once the attempt is cancelled.
    {
        let token = cancel.clone();
        let mut handle = conn.lock_handle().await?;
        handle.set_progress_handler(1000, move || !token.is_cancelled());
    }
    let mut result = run_work::<Sqlite>(&mut conn, work, sqlite_arguments, sqlite_row, |r| {
        r.rows_affected()
    })
    .await;
    match conn.lock_handle().await {
        Ok(mut handle) => handle.remove_progress_handler(),
        // The statement's worker is gone (it failed inside sqlx): what it
        // did is unknown, so the attempt cannot count as a success.
        Err(e) => {
            result = Err(Failure::Database(format!(
                "the SQLite connection failed while the statement ran; its outcome is unknown: {}",
                describe_error(&e)
            )))
        }
    }
    if cancel.is_cancelled() && result.is_err() {
        result = Err(Failure::Cancelled);
    }
    release(&mut conn, work, result.is_err(), false).await;
    result
}

/// `$0` (or `$00`…) names a parameter sqlx cannot bind (it would index
/// before the first value); refused before SQLite sees it.
fn check_sqlite_placeholders(sql: &str) -> Result<(), Failure> {
    let bytes = sql.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'$' || b == b'?' => {
                let digits: Vec<u8> = bytes[i + 1..]
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_digit)
                    .collect();
                if !digits.is_empty() && digits.iter().all(|d| *d == b'0') {
                    return Err(Failure::Permanent(format!(
                        "placeholder `{}{}` is not valid: placeholders count from 1 ($1, $2, …)",
                        char::from(b),
                        String::from_utf8_lossy(&digits)
                    )));
                }
            }
            None => {}
        }
        i += 1;
    }
    Ok(())
}

async fn acquire<DB: Database>(
    pool: &sqlx::Pool<DB>,
    cancel: &CancellationToken,
) -> Result<sqlx::pool::PoolConnection<DB>, Failure> {
    tokio::select! {
        conn = pool.acquire() => Ok(conn?),
        _ = cancel.cancelled() => Err(Failure::Cancelled),
    }
}

fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_string(),
        },
        sqlx::Error::PoolTimedOut => format!(
            "no database connection within {}: the server refused connections, or every connection in the pool is busy",
            humantime::format_duration(ACQUIRE_TIMEOUT)
        ),
        other => other.to_string(),
    }
}

fn bad_param(index: usize, message: impl std::fmt::Display) -> Failure {
    Failure::Permanent(format!("params[{index}]: {message}"))
}

/// A NULL parameter whose type PostgreSQL infers from the statement (an
/// unspecified type, oid 0), so `insert … values ($1)` takes it for any
/// column.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

// One binder per driver, on purpose: NULL, numbers and JSON bind differently
// (an untyped NULL and jsonb on PostgreSQL, unsigned integers on MySQL,
// JSON as text on SQLite).
fn pg_arguments(params: &[Value]) -> Result<PgArguments, Failure> {
    let mut args = PgArguments::default();
    for (i, value) in params.iter().enumerate() {
        let added = match value {
            Value::Null => args.add(UntypedNull),
            Value::Bool(b) => args.add(*b),
            Value::Number(n) => match n.as_i64() {
                Some(int) => args.add(int),
                None => args.add(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => args.add(s.as_str()),
            other => args.add(sqlx::types::Json(other)),
        };
        added.map_err(|e| bad_param(i, e))?;
    }
    Ok(args)
}

fn mysql_arguments(params: &[Value]) -> Result<MySqlArguments, Failure> {
    let mut args = MySqlArguments::default();
    for (i, value) in params.iter().enumerate() {
        let added = match value {
            Value::Null => args.add(None::<String>),
            Value::Bool(b) => args.add(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(int), _) => args.add(int),
                (None, Some(unsigned)) => args.add(unsigned),
                _ => args.add(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => args.add(s.as_str()),
            other => args.add(sqlx::types::Json(other)),
        };
        added.map_err(|e| bad_param(i, e))?;
    }
    Ok(args)
}

fn sqlite_arguments(params: &[Value]) -> Result<SqliteArguments, Failure> {
    let mut args = SqliteArguments::default();
    for (i, value) in params.iter().enumerate() {
        let added = match value {
            Value::Null => args.add(None::<String>),
            Value::Bool(b) => args.add(*b),
            Value::Number(n) => match n.as_i64() {
                Some(int) => args.add(int),
                None => args.add(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => args.add(s.clone()),
            other => args.add(other.to_string()),
        };
        added.map_err(|e| bad_param(i, e))?;
    }
    Ok(args)
}

/// A column that decoded wrongly or has no JSON mapping.
fn bad_column(name: &str, type_name: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Permanent(format!("column `{name}` ({type_name}) cannot be read: {e}"))
}

fn unmapped(name: &str, type_name: &str) -> Failure {
    Failure::Permanent(format!(
        "column `{name}` has type {type_name}, which has no JSON mapping: cast it in the query \
         (e.g. `{name}::text` on PostgreSQL, `CAST({name} AS CHAR)` on MySQL)"
    ))
}

fn float(value: f64) -> Value {
    Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number)
}

/// A decimal as a JSON number when it is an integer that fits an i64,
/// else as its exact text (a float would lose digits).
fn decimal_text(text: String) -> Value {
    match text.parse::<i64>() {
        Ok(int) => Value::from(int),
        Err(_) => Value::String(text),
    }
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn row_of<R: sqlx::Row>(
    row: &R,
    value: impl Fn(&R, usize, &str) -> Result<Value, Failure>,
) -> Result<Row, Failure> {
    let mut columns = Map::new();
    let mut first = None;
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let v = value(row, i, name)?;
        if first.is_none() {
            first = Some(v.clone());
        }
        columns.insert(name.to_string(), v);
    }
    Ok(Row {
        columns,
        first: first.unwrap_or(Value::Null),
    })
}

fn pg_row(row: &PgRow) -> Result<Row, Failure> {
    row_of(row, pg_value)
}

fn pg_value(row: &PgRow, i: usize, name: &str) -> Result<Value, Failure> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let info = raw.type_info().into_owned();
    let type_name = info.name().to_ascii_uppercase();
    macro_rules! decode {
        ($t:ty) => {
            <$t as Decode<'_, Postgres>>::decode(raw)
                .map_err(|e| bad_column(name, &type_name, e))?
        };
    }
    Ok(match type_name.as_str() {
        "BOOL" => Value::Bool(decode!(bool)),
        "INT2" => Value::from(decode!(i16)),
        "INT4" => Value::from(decode!(i32)),
        "INT8" => Value::from(decode!(i64)),
        "OID" => Value::from(decode!(sqlx::postgres::types::Oid).0),
        "FLOAT4" => float(f64::from(decode!(f32))),
        "FLOAT8" => float(decode!(f64)),
        "NUMERIC" => pg_numeric(raw).map_err(|e| bad_column(name, &type_name, e))?,
        // sqlx calls `char(n)` (bpchar) CHAR; the one-byte `"char"` keeps its quotes.
        "TEXT" | "VARCHAR" | "CHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" => {
            Value::String(decode!(String))
        }
        "\"CHAR\"" => Value::String(char::from(decode!(i8) as u8).to_string()),
        "JSON" | "JSONB" => decode!(sqlx::types::Json<Value>).0,
        "TIMESTAMPTZ" => rfc3339(decode!(chrono::DateTime<chrono::Utc>)),
        "TIMESTAMP" => Value::String(
            decode!(chrono::NaiveDateTime)
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => Value::String(decode!(chrono::NaiveDate).to_string()),
        "TIME" => Value::String(decode!(chrono::NaiveTime).to_string()),
        "UUID" => Value::String(decode!(uuid::Uuid).to_string()),
        "BYTEA" => base64(&decode!(Vec<u8>)),
        "VOID" => Value::Null,
        "BOOL[]" => json!(decode!(Vec<Option<bool>>)),
        "INT2[]" => json!(decode!(Vec<Option<i16>>)),
        "INT4[]" => json!(decode!(Vec<Option<i32>>)),
        "INT8[]" => json!(decode!(Vec<Option<i64>>)),
        "FLOAT4[]" => json!(decode!(Vec<Option<f32>>)),
        "FLOAT8[]" => json!(decode!(Vec<Option<f64>>)),
        "TEXT[]" | "VARCHAR[]" | "CHAR[]" | "BPCHAR[]" | "NAME[]" => {
            json!(decode!(Vec<Option<String>>))
        }
        "UUID[]" => json!(decode!(Vec<Option<uuid::Uuid>>)),
        "JSON[]" | "JSONB[]" => Value::Array(
            decode!(Vec<sqlx::types::Json<Value>>)
                .into_iter()
                .map(|j| j.0)
                .collect(),
        ),
        _ if matches!(info.kind(), PgTypeKind::Enum(_)) => Value::String(
            raw.as_str()
                .map_err(|e| bad_column(name, &type_name, e))?
                .to_string(),
        ),
        _ => return Err(unmapped(name, &type_name)),
    })
}

/// A NUMERIC with the scale PostgreSQL shows it with (`12.50` stays
/// `12.50`: sqlx's decimal drops the display scale, the wire keeps it).
fn pg_numeric(raw: sqlx::postgres::PgValueRef<'_>) -> Result<Value, sqlx::error::BoxDynError> {
    if raw.format() == sqlx::postgres::PgValueFormat::Text {
        return Ok(decimal_text(raw.as_str()?.to_string()));
    }
    // Binary: ndigits, weight, sign, dscale (each 16 bits), then digits.
    let bytes = raw.as_bytes()?;
    let field = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match field(4) {
        Some(0xC000) => return Ok(Value::String("NaN".into())),
        Some(0xD000) => return Ok(Value::String("Infinity".into())),
        Some(0xF000) => return Ok(Value::String("-Infinity".into())),
        _ => {}
    }
    let decimal = <sqlx::types::BigDecimal as Decode<'_, Postgres>>::decode(raw)?;
    let decimal = match field(6) {
        Some(scale) => decimal.with_scale(i64::from(scale)),
        None => decimal,
    };
    Ok(decimal_text(decimal.to_plain_string()))
}

fn mysql_row(row: &MySqlRow) -> Result<Row, Failure> {
    row_of(row, mysql_value)
}

fn mysql_value(row: &MySqlRow, i: usize, name: &str) -> Result<Value, Failure> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_string();
    macro_rules! decode {
        ($t:ty) => {
            <$t as Decode<'_, MySql>>::decode(raw).map_err(|e| bad_column(name, &type_name, e))?
        };
    }
    Ok(match type_name.as_str() {
        "BOOLEAN" => Value::Bool(decode!(bool)),
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            Value::from(decode!(i64))
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
        | "BIGINT UNSIGNED" | "BIT" => Value::from(decode!(u64)),
        "FLOAT" => float(f64::from(decode!(f32))),
        "DOUBLE" => float(decode!(f64)),
        "DECIMAL" => decimal_text(decode!(sqlx::types::BigDecimal).to_plain_string()),
        "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Value::String(decode!(String))
        }
        "JSON" => decode!(sqlx::types::Json<Value>).0,
        "TIMESTAMP" => rfc3339(decode!(chrono::DateTime<chrono::Utc>)),
        "DATETIME" => Value::String(
            decode!(chrono::NaiveDateTime)
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => Value::String(decode!(chrono::NaiveDate).to_string()),
        "TIME" => Value::String(decode!(chrono::NaiveTime).to_string()),
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            base64(&decode!(Vec<u8>))
        }
        "NULL" => Value::Null,
        _ => return Err(unmapped(name, &type_name)),
    })
}

fn sqlite_row(row: &SqliteRow) -> Result<Row, Failure> {
    row_of(row, sqlite_value)
}

fn sqlite_value(row: &SqliteRow, i: usize, name: &str) -> Result<Value, Failure> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // SQLite types values, not columns: map what the value holds, and
    // honour a BOOLEAN declaration.
    let declared = row
        .columns()
        .get(i)
        .map(|c| c.type_info().name().to_ascii_uppercase())
        .unwrap_or_default();
    let type_name = raw.type_info().name().to_string();
    macro_rules! decode {
        ($t:ty) => {
            <$t as Decode<'_, Sqlite>>::decode(raw).map_err(|e| bad_column(name, &type_name, e))?
        };
    }
    Ok(match type_name.as_str() {
        "INTEGER" | "BOOLEAN" | "INT8" if declared == "BOOLEAN" => Value::Bool(decode!(i64) != 0),
        "INTEGER" | "BOOLEAN" | "INT8" | "NUMERIC" => Value::from(decode!(i64)),
        "REAL" => float(decode!(f64)),
        "TEXT" | "DATE" | "TIME" | "DATETIME" => Value::String(decode!(String)),
        "BLOB" => base64(&decode!(Vec<u8>)),
        "NULL" => Value::Null,
        _ => return Err(unmapped(name, &type_name)),
    })
}

/// The password inside a URL's userinfo, if any.
fn password_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `text` with the password of `url` (raw and percent-decoded) hidden.
fn redact_password(text: &str, url: &str) -> String {
    let Some(password) = password_of(url) else {
        return text.to_string();
    };
    let mut text = text.replace(&password, "***");
    if let Ok(decoded) = percent_encoding::percent_decode_str(&password).decode_utf8()
        && decoded != password
        && !decoded.is_empty()
    {
        text = text.replace(decoded.as_ref(), "***");
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_are_found_and_hidden_raw_and_decoded() {
        let url = "postgres://app:s%40cret-pw@db.internal:5432/shop";
        assert_eq!(password_of(url).as_deref(), Some("s%40cret-pw"));
        assert_eq!(
            redact_userinfo(url),
            "postgres://app:***@db.internal:5432/shop"
        );
        assert_eq!(
            redact_password("auth failed for s@cret-pw and s%40cret-pw", url),
            "auth failed for *** and ***"
        );
        assert_eq!(password_of("sqlite://demo.db"), None);
        assert_eq!(password_of("mysql://root@127.0.0.1/test"), None);
    }

    #[test]
    fn urls_are_parsed_by_their_driver_and_sqlite_paths_resolve_against_the_project() {
        assert!(matches!(
            Target::parse("postgres://u@127.0.0.1/test", Path::new(".")),
            Ok(Target::Postgres(_))
        ));
        assert!(matches!(
            Target::parse("mariadb://root@127.0.0.1/test", Path::new(".")),
            Ok(Target::MySql(_))
        ));
        match Target::parse("sqlite://data/shop.db", Path::new("/srv/project")) {
            Ok(Target::Sqlite(options)) => assert_eq!(
                options.get_filename(),
                Path::new("/srv/project/data/shop.db")
            ),
            _ => panic!("not sqlite"),
        }
        let e = Target::parse("oracle://u:pw@x/y", Path::new("."))
            .err()
            .unwrap();
        assert!(e.contains("oracle://u:***@x/y"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn decimals_are_numbers_only_when_nothing_is_lost() {
        assert_eq!(decimal_text("42".into()), json!(42));
        assert_eq!(decimal_text("12.50".into()), json!("12.50"));
        assert_eq!(
            decimal_text("123456789012345678901234567890".into()),
            json!("123456789012345678901234567890")
        );
    }
}
