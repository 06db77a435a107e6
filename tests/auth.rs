//! Who may trade, through the API against a real broker: every order and
//! trading operation needs a key (401 problem+json with `WWW-Authenticate`
//! without one), the probes, metrics and docs stay open unless configured
//! otherwise, an account sees and cancels only its own orders (another's
//! answers exactly like an unknown id), a reader key reads but does not
//! trade, a key over its limit gets 429 while another key is served, and a
//! revoked key is refused within the reload interval.

mod common;

use std::time::Duration;

use common::{
    OTHER_ACCOUNT, TEST_ACCOUNT, TestApp, bootstrap, client_with, eventually, order_body, settings,
};
use oms::auth::{KeyFile, Role};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// Every protected operation, as (method, path).
fn protected(id: Uuid) -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    vec![
        (Method::POST, "/orders".into()),
        (Method::GET, "/orders?symbol=USD-EUR".into()),
        (Method::GET, format!("/orders/{id}")),
        (Method::DELETE, format!("/orders/{id}")),
        (Method::GET, "/trades?symbol=USD-EUR".into()),
        (Method::GET, "/orderbook/USD-EUR".into()),
    ]
}

async fn assert_refused(resp: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(resp.status(), status, "{what}");
    let content_type = resp.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/problem+json"),
        "{what}: {content_type}"
    );
    if status == 401 {
        let challenge = resp.headers()["www-authenticate"].to_str().expect("ascii");
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    }
    if status == 429 {
        let secs: u32 = resp.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("whole seconds");
        assert!(secs >= 1, "{what}: Retry-After {secs}");
    }
    let body: Value = resp.json().await.expect("a problem body");
    assert_eq!(body["status"], status, "{what}: {body}");
    body
}

#[tokio::test]
async fn every_order_operation_needs_a_valid_key_and_the_probes_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let anonymous = reqwest::Client::new();
    let forged = client_with(
        &format!("oms_7e57000000000001_{}", "9".repeat(64)),
        Duration::from_secs(10),
    );
    let garbage = client_with("not-a-key", Duration::from_secs(10));
    for (method, path) in protected(Uuid::now_v7()) {
        for (who, client) in [
            ("no key", &anonymous),
            ("a forged key", &forged),
            ("a malformed key", &garbage),
        ] {
            let resp = client
                .request(method.clone(), format!("{}{path}", app.base))
                .json(&order_body(1))
                .send()
                .await
                .expect("request");
            assert_refused(resp, 401, &format!("{method} {path} with {who}")).await;
        }
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs/",
        "/openapi.json",
        "/openapi.yaml",
    ] {
        let code = eventually(WAIT, || {
            let request = anonymous.get(format!("{}{path}", app.base)).send();
            async move {
                let code = request.await.ok()?.status().as_u16();
                (code == 200).then_some(code)
            }
        })
        .await;
        assert_eq!(code, Some(200), "GET {path} without a key");
    }
    // The document says so: a bearer scheme, and 401 on every protected operation.
    let spec: Value = app
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("the spec");
    assert_eq!(
        spec["components"]["securitySchemes"]["ApiKey"]["scheme"],
        "bearer"
    );
    for (method, path) in [
        ("post", "/orders"),
        ("get", "/orders"),
        ("get", "/orders/{id}"),
        ("delete", "/orders/{id}"),
        ("get", "/trades"),
        ("get", "/orderbook/{symbol}"),
    ] {
        let op = &spec["paths"][path][method];
        assert_eq!(
            op["security"][0]["ApiKey"],
            serde_json::json!([]),
            "{method} {path}"
        );
        for status in ["401", "429"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    assert!(spec["paths"]["/orders"]["post"]["responses"]["403"].is_object());
    assert!(spec["paths"]["/healthz"]["get"]["security"].is_null());
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_account_sees_and_cancels_only_its_own_orders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());
    let mine = me.accept(&order_body(1)).await;
    let theirs = other.accept(&order_body(5)).await; // both sell: nothing trades
    let read = me.get(&format!("/orders/{mine}")).await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.expect("an order");
    assert_eq!(read["account"], TEST_ACCOUNT, "the order names its owner");
    let read: Value = other
        .get(&format!("/orders/{theirs}"))
        .await
        .json()
        .await
        .expect("an order");
    assert_eq!(read["account"], OTHER_ACCOUNT);

    // Another account's order answers exactly what an unknown id answers.
    let unknown = Uuid::now_v7();
    for (path_of, method) in [
        (
            (|id: Uuid| format!("/orders/{id}")) as fn(Uuid) -> String,
            "GET",
        ),
        (|id: Uuid| format!("/orders/{id}"), "DELETE"),
    ] {
        let ask = |id: Uuid| {
            let (client, url) = (other.client.clone(), format!("{}{}", app.base, path_of(id)));
            async move {
                let resp = client
                    .request(method.parse().expect("a method"), url)
                    .send()
                    .await
                    .expect("request");
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.expect("a problem");
                (status, body)
            }
        };
        let (theirs_status, theirs_body) = ask(mine).await;
        let (unknown_status, unknown_body) = ask(unknown).await;
        assert_eq!((theirs_status, unknown_status), (404, 404), "{method}");
        let without_id = |body: &Value, id: Uuid| body.to_string().replace(&id.to_string(), "<id>");
        assert_eq!(
            without_id(&theirs_body, mine),
            without_id(&unknown_body, unknown),
            "{method}: another account's order is indistinguishable from none"
        );
    }
    // My order is still open: the other account's cancel did nothing.
    app.wait_caught_up(WAIT).await;
    let read: Value = me
        .get(&format!("/orders/{mine}"))
        .await
        .json()
        .await
        .expect("an order");
    assert_eq!(read["status"], "open");

    // Each lists its own.
    let ids = |page: Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|o| o["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let page = me
        .get("/orders?symbol=USD-EUR")
        .await
        .json()
        .await
        .expect("a page");
    assert_eq!(ids(page), vec![mine.to_string()]);
    let page = other
        .get("/orders?symbol=USD-EUR")
        .await
        .json()
        .await
        .expect("a page");
    assert_eq!(ids(page), vec![theirs.to_string()]);

    // The same client_order_id in two accounts names two orders.
    let mut body = order_body(3);
    body["client_order_id"] = "shared-ref-1".into();
    let a = me.accept(&body).await;
    let b = other.accept(&body).await;
    assert_ne!(a, b);
    assert_eq!(me.accept(&body).await, a, "a retry is still the same order");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_reader_reads_but_does_not_trade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings(&bootstrap(), dir.path());
    let reader = KeyFile::new(&cfg.auth.keys_file)
        .create(
            TEST_ACCOUNT.parse().expect("account"),
            Role::Reader,
            None,
            None,
        )
        .expect("a reader key");
    let app = TestApp::spawn(cfg).await;
    let mine = app.accept(&order_body(1)).await;
    let reads = client_with(&reader.key.expose(), WAIT);
    let got = reads
        .get(format!("{}/orders/{mine}", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        got.status(),
        200,
        "a reader of the account reads its orders"
    );
    let post = reads
        .post(format!("{}/orders", app.base))
        .json(&order_body(2))
        .send()
        .await
        .expect("POST");
    assert_refused(post, 403, "POST with a reader key").await;
    let delete = reads
        .delete(format!("{}/orders/{mine}", app.base))
        .send()
        .await
        .expect("DELETE");
    assert_refused(delete, 403, "DELETE with a reader key").await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_key_over_its_limit_gets_429_while_another_key_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings(&bootstrap(), dir.path());
    let noisy = KeyFile::new(&cfg.auth.keys_file)
        .create(
            "noisy".parse().expect("account"),
            Role::Trader,
            Some(5),
            None,
        )
        .expect("a key of 5 requests per second");
    let app = TestApp::spawn(cfg).await;
    let noisy = client_with(&noisy.key.expose(), WAIT);
    let mut limited = None;
    for n in 0..50 {
        let resp = noisy
            .post(format!("{}/orders", app.base))
            .json(&order_body(n))
            .send()
            .await
            .expect("POST");
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 202);
    }
    let limited = limited.expect("the noisy key is limited within 50 requests");
    let problem = assert_refused(limited, 429, "over the rate").await;
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("5 requests per second")
    );
    // Meanwhile another key is served at once.
    for n in 0..20 {
        app.accept(&order_body(100 + n)).await;
    }
    let refused = app
        .metric_sum("auth_refused_total{reason=\"rate_limited\"}")
        .await
        .expect("the refusals are counted");
    assert!(refused >= 1.0);
    let limit = app
        .metric_sum("auth_key_rate_limit_per_second{key=\"")
        .await
        .expect("the limits are metrics");
    assert!(limit >= 5.0);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_the_reload_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    cfg.auth.reload_ms = 200;
    let file = KeyFile::new(&cfg.auth.keys_file);
    let app = TestApp::spawn(cfg).await;
    // A key made while oms runs is taken within the interval too.
    let made = file
        .create("late".parse().expect("account"), Role::Trader, None, None)
        .expect("a key");
    let late = client_with(&made.key.expose(), WAIT);
    let url = format!("{}/orders?symbol=USD-EUR", app.base);
    let served = eventually(WAIT, || {
        let request = late.get(&url).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    assert!(served.is_some(), "a new key is in force within seconds");
    file.revoke(made.key.id()).expect("revoke");
    let refused = eventually(WAIT, || {
        let request = late.get(&url).send();
        async move { (request.await.ok()?.status() == 401).then_some(()) }
    })
    .await;
    assert!(refused.is_some(), "a revoked key is refused within seconds");
    let resp = late.get(&url).send().await.expect("GET");
    let problem = assert_refused(resp, 401, "a revoked key").await;
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("revoked")
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_open_paths_are_configurable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    cfg.auth.public = vec!["/healthz".into()];
    let app = TestApp::spawn(cfg).await;
    let anonymous = reqwest::Client::new();
    for path in ["/metrics", "/readyz", "/openapi.json", "/docs/"] {
        let resp = anonymous
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("GET");
        assert_refused(resp, 401, path).await;
    }
    let open = anonymous
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(open.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200, "with a key");
    app.stop().await.expect("clean stop");
}

/// An upgrade: orders a Postgres store held before accounts existed are
/// carried over by the migration, as orders of no account that no key
/// owns (not listed, not readable by any account), while new orders carry
/// their account.
#[tokio::test]
async fn postgres_orders_stored_before_accounts_are_carried_over() {
    use oms::store::postgres::{MIGRATOR, PostgresStore};
    let url = common::fresh_database("oms_accounts_upgrade").await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 4)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    before.run(&pool).await.expect("the schema before accounts");
    let old = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, symbol, src_currency, dst_currency, side, price, quantity, \
         channel, description, created_at, log_partition, log_offset) \
         VALUES ($1, 'USD-EUR', 'USD', 'EUR', 'buy', 1.5, 10, 11, 'before accounts', now(), 0, 0)",
    )
    .bind(old)
    .execute(&pool)
    .await
    .expect("an order of the old schema");
    pool.close().await;

    let store = PostgresStore::connect(&url, &Default::default())
        .await
        .expect("connect");
    store.migrate().await.expect("the migrations after it");
    use oms::store::Store;
    let read = store.get(old).await.expect("read").expect("carried over");
    assert_eq!(read.order.account, None, "an order of no account");
    assert_eq!(read.order.description.as_str(), "before accounts");
    let owned = store
        .list_owned(&TEST_ACCOUNT.parse().expect("account"), "USD-EUR", None, 10)
        .await
        .expect("list");
    assert!(owned.is_empty(), "no account owns it");
}
