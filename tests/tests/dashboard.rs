//! The dashboard in a real browser: headless chromium driven through
//! chromedriver (WebDriver) against a real controller and six agents across
//! two environments. Sign in, see the fleet, open a host, watch a rollout
//! step advance live, see a failed canary's reason, search logs and find a
//! line another host's app wrote, be refused another tenant's page.
//! Screenshots of every page land in `target/screenshots/dashboard/`.

use std::time::Duration;

use fantoccini::Locator;
use integration_tests::web::{Chrome, chrome_available};
use integration_tests::{Agent, Controller, ReleaseOpts, http_get, publish};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    assert!(
        chrome_available(),
        "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
    );
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let (c, agents) = tokio::task::spawn_blocking(move || {
        let c = Controller::start(&dir);
        let agents: Vec<Agent> = ["pre-1", "pre-2", "pre-3", "prod-1", "prod-2", "prod-3"]
            .iter()
            .map(|h| {
                let env = if h.starts_with("pre-") {
                    "preprod"
                } else {
                    "prod"
                };
                Agent::start(&dir, &c, h, env, DB_ENV)
            })
            .collect();
        publish(&c, &dir, &ReleaseOpts::new("1.0.0"));
        c.deploy_wait("1.0.0", "preprod").ok();
        c.deploy_wait("1.0.0", "prod").ok();
        for a in &agents {
            a.wait_serving("1.0.0");
        }
        (c, agents)
    })
    .await
    .unwrap();
    let base = format!("https://127.0.0.1:{}", c.http_port);
    let viewer = c.token("looker", &["viewer"]);
    let chrome = Chrome::start("dashboard").await;
    let b = &chrome.client;

    // Sign in with a viewer token.
    b.goto(&format!("{base}/")).await.unwrap();
    chrome.wait_text("h1", "Sign in", WAIT).await;
    chrome.shot("sign-in").await;
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&viewer)
        .await
        .unwrap();
    b.find(Locator::Css("form.sign-in button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The fleet: six hosts, two environments, every app cell healthy.
    let hosts = chrome.wait_text("#hosts", "prod-3", WAIT).await;
    for h in ["pre-1", "pre-2", "pre-3", "prod-1", "prod-2", "prod-3"] {
        assert!(hosts.contains(h), "{h} in {hosts}");
    }
    assert_eq!(
        b.find_all(Locator::Css("#hosts tbody tr"))
            .await
            .unwrap()
            .len(),
        6
    );
    let apps = chrome.wait_text("#apps", "3/3 at desired", WAIT).await;
    assert_eq!(apps.matches("3/3 at desired").count(), 2, "{apps}");
    for env in ["preprod", "prod"] {
        b.find(Locator::Css(&format!("#apps .cell.good[data-env={env}]")))
            .await
            .unwrap_or_else(|e| panic!("{env}: {e}"));
    }
    chrome.weigh("fleet").await;
    chrome.shot("fleet").await;

    // A host.
    b.find(Locator::LinkText("prod-2"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let facts = chrome.wait_text("#facts", "prod", WAIT).await;
    assert!(
        facts.contains("connected") && facts.contains("certificate expires"),
        "{facts}"
    );
    let app = chrome.wait_text("section.app", "1.0.0", WAIT).await;
    assert!(app.contains("healthy"), "{app}");
    // The last steps of its deploy log, asked of the host.
    let steps = chrome
        .wait_text("section.app table.steps", "deploy healthy 1.0.0", WAIT)
        .await;
    assert!(
        steps.contains("fetch ok 1.0.0") && steps.contains("UTC"),
        "{steps}"
    );
    chrome.weigh("host").await;
    chrome.shot("host").await;

    // A rollout in steps (a canary, then one host at a time, paused
    // between): the page follows it without a reload.
    let dir = t.path().to_path_buf();
    let c = std::sync::Arc::new(c);
    let cc = c.clone();
    tokio::task::spawn_blocking(move || {
        publish(&cc, &dir, &ReleaseOpts::new("2.0.0"));
        cc.ctl(&[
            "deploy", "web", "2.0.0", "--env", "preprod", "--canary", "1", "--batch", "1",
            "--pause", "2",
        ])
        .ok();
    })
    .await
    .unwrap();
    b.goto(&format!("{base}/t/default/rollouts/web/preprod"))
        .await
        .unwrap();
    let first = chrome.wait_text("#step", "of 3", WAIT).await;
    b.execute("window.stayed = true;", vec![]).await.unwrap();
    chrome.shot("rollout-running").await;
    chrome.wait_text("#state", "succeeded", WAIT).await;
    let last = chrome.wait_text("#step", "of 3", WAIT).await;
    assert_ne!(first, last, "the step advanced on the page");
    assert_eq!(
        b.execute("return window.stayed === true;", vec![])
            .await
            .unwrap(),
        serde_json::Value::Bool(true),
        "updated live, not by a reload"
    );
    let rows = chrome.wait_text("#rollout-hosts", "pre-3", WAIT).await;
    assert_eq!(rows.matches("healthy").count(), 3, "{rows}");
    chrome.shot("rollout").await;

    // A failing canary in prod: its reason on the page.
    let dir = t.path().to_path_buf();
    let cc = c.clone();
    tokio::task::spawn_blocking(move || {
        publish(
            &cc,
            &dir,
            &ReleaseOpts {
                healthy: false,
                ..ReleaseOpts::new("3.0.0")
            },
        );
        cc.ctl(&["deploy", "web", "3.0.0", "--env", "prod", "--canary", "1"])
            .ok();
    })
    .await
    .unwrap();
    b.goto(&format!("{base}/t/default/rollouts/web/prod"))
        .await
        .unwrap();
    let reason = chrome.wait_text("#reason", "canary failed", WAIT).await;
    assert!(reason.contains("3.0.0"), "{reason}");
    chrome.wait_text("#state", "reverted", WAIT).await;
    let rows = chrome.wait_text("#rollout-hosts", "failed", WAIT).await;
    assert!(
        rows.contains("unhealthy") || rows.contains("health"),
        "{rows}"
    );
    chrome.weigh("rollout").await;
    chrome.shot("rollout-failed").await;

    // Log search: a line prod-3's app wrote, found from the browser.
    let port = agents[5].app_port;
    tokio::task::spawn_blocking(move || http_get(port, "/needle-from-prod-3"))
        .await
        .unwrap();
    b.goto(&format!("{base}/t/default/logs")).await.unwrap();
    b.find(Locator::Css("input[name=q]"))
        .await
        .unwrap()
        .send_keys("needle-from-prod-3")
        .await
        .unwrap();
    b.find(Locator::Css("form.filters button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let results = chrome.wait_text("#results", "matching line", WAIT).await;
    assert!(
        results.contains("prod-3") && results.contains("GET /needle-from-prod-3"),
        "{results}"
    );
    assert!(results.contains("from 6 of 6 host(s)"), "{results}");
    chrome.weigh("log search, 1 line from 6 hosts").await;
    chrome.shot("logs").await;

    // History and releases.
    b.goto(&format!("{base}/t/default/history?outcome=ok"))
        .await
        .unwrap();
    let history = chrome.wait_text("#history", "deploy", WAIT).await;
    assert!(
        history.contains("web-sign-in") && history.contains("UTC"),
        "{history}"
    );
    chrome.weigh("history").await;
    chrome.shot("history").await;
    b.goto(&format!("{base}/t/default/releases")).await.unwrap();
    let releases = chrome.wait_text("table.releases", "3.0.0", WAIT).await;
    assert!(
        releases.contains("sha256:") && releases.contains("prod-1"),
        "{releases}"
    );
    chrome.weigh("releases").await;
    chrome.shot("releases").await;

    // Another tenant's page: refused, its reason shown.
    b.goto(&format!("{base}/t/acme/")).await.unwrap();
    let refused = chrome.wait_text("main", "is for tenant", WAIT).await;
    assert!(refused.contains("not \"acme\""), "{refused}");
    chrome.shot("refused").await;

    // Phone-sized: the fleet still reads.
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{base}/t/default/")).await.unwrap();
    chrome.wait_text("#hosts", "prod-3", WAIT).await;
    chrome.shot("fleet-phone").await;

    chrome.close().await;
    drop(agents);
}
