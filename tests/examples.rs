//! The demo project's workflows (the seeds' use cases) end to end, on SQLite
//! and on the real PostgreSQL: the e-commerce campaign on its success path
//! and with a failure injected (recovery marks it failed, the alerting
//! endpoint is called once), the promotion, and the parent running both as
//! sub-workflows. The database must end as the seeds describe.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use serde_json::{Map, Value, json};
use sqlx::Connection as _;
use switchyard::engine::{Limits, RunRecord};
use switchyard::executors::sql::{Connection, Databases};
use switchyard::log::RunStatus;
use switchyard::runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use switchyard::spec::Workflow;

use crate::util::db;

fn examples() -> HashMap<String, Arc<Workflow>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workflows");
    [
        "campaign",
        "publish_promotion",
        "daily_operations",
        "notify_failure",
    ]
    .iter()
    .map(|name| {
        let workflow = Workflow::load(&dir.join(format!("{name}.json"))).unwrap();
        (name.to_string(), Arc::new(workflow))
    })
    .collect()
}

/// A local alerting endpoint: every JSON body it was sent.
async fn alert_server() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let app = Router::new().route(
        "/alerts",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/alerts"), seen)
}

/// Reads rows as JSON through a `sql` task of its own, so the check uses
/// the same type mapping on both databases.
async fn query(handle: &RuntimeHandle, sql: &str) -> Vec<Value> {
    let wf = crate::util::workflow(json!({"name": "check", "tasks": [
        {"id": "q", "sql": {"connection": "shop", "query": sql}}]}));
    let run = handle
        .run_to_end(wf, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{sql}: {run:?}");
    run.tasks["q"]["output"]["rows"].as_array().unwrap().clone()
}

async fn run(
    handle: &RuntimeHandle,
    workflows: &HashMap<String, Arc<Workflow>>,
    name: &str,
    params: Value,
) -> RunRecord {
    let params: Map<String, Value> = serde_json::from_value(params).unwrap();
    handle
        .run_to_end(Arc::clone(&workflows[name]), params, None, |_| {})
        .await
        .unwrap()
}

async fn the_examples_end_as_the_seeds_describe(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let workflows = examples();
    let by_name = workflows.clone();
    let databases = Databases::new(
        BTreeMap::from([(
            "shop".to_string(),
            Connection {
                url,
                max_connections: None,
            },
        )]),
        dir.path(),
    );
    let runtime = Runtime::start(RuntimeConfig {
        databases,
        limits: Limits::default(),
        workflows: Some(Arc::new(move |name: &str| by_name.get(name).cloned())),
        ..RuntimeConfig::new(dir.path().join("data"))
    })
    .unwrap();
    let handle = runtime.handle();
    let (alert_url, alerts) = alert_server().await;
    let cache_dir = dir.path().join("cache");
    let promo_dir = dir.path().join("promotions");
    let common = |day: &str| json!({"day": day, "alert_url": alert_url, "cache_dir": cache_dir.to_str().unwrap()});

    // The success path: today's campaign is launched, in order, with its
    // id; the ended autumn campaign is aggregated and archived.
    let first = run(&handle, &workflows, "campaign", common("2026-12-01")).await;
    assert_eq!(first.status, RunStatus::Succeeded, "{first:?}");
    let id = first.vars["campaign_id"].as_i64().unwrap();
    assert_eq!(id, 2);
    let order = [
        "bootstrap_metrics",
        "update_banners",
        "warm_cache",
        "send_notifications",
        "mark_launched",
    ];
    for pair in order.windows(2) {
        let ended = first.tasks[pair[0]]["ended_at"].as_str().unwrap();
        let started = first.tasks[pair[1]]["started_at"].as_str().unwrap();
        assert!(ended <= started, "{} ran before {} ended", pair[1], pair[0]);
    }
    for skipped in ["mark_failed", "alert"] {
        assert_eq!(first.tasks[skipped]["status"], "skipped", "{first:?}");
    }
    assert!(cache_dir.join(format!("campaign-{id}.json")).exists());
    assert_eq!(
        query(
            &handle,
            "select id, name, status from campaigns order by id"
        )
        .await,
        vec![
            json!({"id": 1, "name": "autumn-sale", "status": "archived"}),
            json!({"id": 2, "name": "winter-sale", "status": "launched"}),
        ]
    );
    assert_eq!(
        query(
            &handle,
            "select campaign_id, day, sent, opened from campaign_reports"
        )
        .await,
        vec![json!({"campaign_id": 1, "day": "2026-12-01", "sent": 1200, "opened": 340})]
    );
    assert_eq!(
        query(&handle, "select campaign_id, slot from landing_banners").await,
        vec![json!({"campaign_id": 2, "slot": "home"})]
    );
    assert_eq!(
        query(
            &handle,
            "select campaign_id, channel, recipients from notifications"
        )
        .await,
        vec![json!({"campaign_id": 2, "channel": "email", "recipients": 1000})]
    );

    // A failure injected at the cache: recovery marks the campaign failed
    // and the alerting endpoint is called once; nothing is sent.
    let failed = run(
        &handle,
        &workflows,
        "campaign",
        json!({"day": "2026-12-02", "fail_step": "warm_cache", "alert_url": alert_url,
               "cache_dir": cache_dir.to_str().unwrap()}),
    )
    .await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    assert_eq!(failed.tasks["warm_cache"]["attempts"], 2);
    assert_eq!(failed.tasks["mark_failed"]["status"], "succeeded");
    assert_eq!(failed.tasks["alert"]["status"], "succeeded", "{failed:?}");
    assert_eq!(failed.tasks["send_notifications"]["status"], "skipped");
    let failed_id = failed.vars["campaign_id"].as_i64().unwrap();
    let sent = alerts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "demo.campaign.failed");
    assert_eq!(sent[0]["data"]["campaign_id"], failed_id);
    assert_eq!(sent[0]["data"]["failed"], json!(["warm_cache"]));
    assert_eq!(sent[0]["data"]["run_id"], failed.id.to_string());
    assert_eq!(
        query(
            &handle,
            &format!("select status from campaigns where id = {failed_id}")
        )
        .await,
        vec![json!({"status": "failed"})]
    );
    assert_eq!(
        query(&handle, "select count(*) as n from notifications").await[0]["n"],
        1
    );

    // The promotion: found, published, marked published with the same id.
    let promo = run(
        &handle,
        &workflows,
        "publish_promotion",
        json!({"promo_dir": promo_dir.to_str().unwrap()}),
    )
    .await;
    assert_eq!(promo.status, RunStatus::Succeeded, "{promo:?}");
    let promo_id = promo.vars["promo_id"].as_i64().unwrap();
    assert!(promo_dir.join(format!("{promo_id}.published")).exists());
    let rows = query(
        &handle,
        "select id, published, published_at from promotions",
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["id"].as_i64(), rows[0]["published"].as_i64()),
        (Some(promo_id), Some(1))
    );
    assert!(rows[0]["published_at"].is_string());
    // A publish that keeps failing leaves its promotion waiting, recovered.
    let refused = run(
        &handle,
        &workflows,
        "publish_promotion",
        json!({"promo_dir": promo_dir.to_str().unwrap(), "fail": true}),
    )
    .await;
    assert_eq!(refused.status, RunStatus::Failed);
    assert_eq!(refused.tasks["recover"]["status"], "succeeded");
    assert_eq!(
        query(
            &handle,
            "select count(*) as n from promotions where published = 0"
        )
        .await[0]["n"],
        1
    );

    // The parent runs both as sub-workflows, linked to it.
    let parent = run(
        &handle,
        &workflows,
        "daily_operations",
        json!({"day": "2026-12-03"}),
    )
    .await;
    assert_eq!(parent.status, RunStatus::Succeeded, "{parent:?}");
    assert!(parent.vars["campaign_id"].is_number(), "{parent:?}");
    let child_id = parent.tasks["campaign"]["output"]["run_id"]
        .as_str()
        .unwrap();
    let child = handle
        .run_record(child_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.parent.as_ref().unwrap().run_id, parent.id);
    assert_eq!(child.workflow, "campaign");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_end_as_the_seeds_describe_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    the_examples_end_as_the_seeds_describe(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_end_as_the_seeds_describe_on_postgres() {
    let Some(url) = db::available("examples::postgres", db::POSTGRES).await else {
        return;
    };
    // The examples use fixed table names: a schema of this test's own.
    let schema = db::table("examples");
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create schema {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let scoped = format!("{url}?options=-csearch_path%3D{schema}");
    the_examples_end_as_the_seeds_describe(scoped).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop schema {schema} cascade")))
        .execute(&mut admin)
        .await
        .unwrap();
}
