//! The controller's HTTPS listener with `curl` (TLS checked against the
//! controller's CA): `/healthz`, `/metrics` checked by `promtool`, sign-in and
//! its refusals, CSRF, tenants, and log search across hosts.

use std::time::Duration;

use integration_tests::web::Https;
use integration_tests::{
    Agent, Controller, ReleaseOpts, eventually, exit, free_port, http_get, publish,
};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

#[test]
fn health_and_metrics_answer_and_promtool_accepts_the_exposition() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let a = Agent::start(t.path(), &c, "m-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    a.wait_serving("1.0.0");
    let web = Https::new(&c);

    let health = web.get("/healthz", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let metrics = eventually(Duration::from_secs(20), "the host ok in /metrics", || {
        let m = web.get("/metrics", &[]);
        m.body
            .contains("slipway_host_apps{state=\"ok\"} 1")
            .then_some(m)
    });
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{}",
        metrics.headers
    );
    let value = |name: &str| -> f64 {
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{}", metrics.body))
    };
    assert_eq!(value("slipway_agent_sessions"), 1.0);
    assert_eq!(value("slipway_hosts{connection=\"connected\"}"), 1.0);
    assert!(value("slipway_directives_sent_total") >= 1.0);
    assert!(value("slipway_blob_bytes_served_total") > 0.0);
    assert!(value("slipway_blob_bytes_stored") > 0.0);
    assert_eq!(value("slipway_rollouts{state=\"succeeded\"}"), 1.0);
    assert!(value("slipway_report_lag_seconds_count") >= 1.0);
    assert!(
        metrics.body.contains(
            "slipway_grpc_request_duration_seconds_count{method=\"/slipway.v1.Releases/CreateRelease\"}"
        ),
        "{}",
        metrics.body
    );
    // No tenant, host or app name is a label.
    assert!(!metrics.body.contains("m-1") && !metrics.body.contains("default"));

    promtool(t.path(), &metrics.body);
}

/// Runs `promtool check metrics` on `text`.
fn promtool(dir: &std::path::Path, text: &str) {
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (apt-get install prometheus) checks the exposition");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn an_agent_with_metrics_listen_counts_deploys_rollbacks_steps_and_probes() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut a = Agent::configured(t.path(), &c, "am-1", "preprod", DB_ENV, true);
    let port = free_port();
    let config = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{config}"),
    )
    .unwrap();
    a.spawn();
    a.wait_connected(&c);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("2.0.0")
        },
    );
    assert_eq!(c.deploy_wait("2.0.0", "preprod").code, exit::ROLLOUT_FAILED);
    a.wait_serving("1.0.0");
    let body = eventually(Duration::from_secs(20), "the rollback counted", || {
        let (status, body) = http_get(port, "/metrics")?;
        (status == 200
            && body.contains("slipway_agent_rollbacks_total{kind=\"automatic\",outcome=\"ok\"} 1"))
        .then_some(body)
    });
    for line in [
        "slipway_agent_deploys_total{outcome=\"healthy\"} 1",
        "slipway_agent_deploys_total{outcome=\"failed\"} 1",
        "slipway_agent_deploy_step_seconds_count{step=\"fetch\"} 2",
        "slipway_agent_deploy_step_seconds_count{step=\"deploy\"} 1",
        "slipway_agent_deploy_steps_total{outcome=\"failed\",step=\"health\"} 1",
    ] {
        assert!(body.contains(line), "{line} in:\n{body}");
    }
    assert!(
        body.contains("slipway_agent_health_check_seconds_count{kind=\"http\",result=\"ok\"}")
            && body.contains(
                "slipway_agent_health_check_seconds_count{kind=\"http\",result=\"failed\"}"
            ),
        "{body}"
    );
    promtool(t.path(), &body);
    assert_eq!(http_get(port, "/other").map(|r| r.0), Some(404));
}

#[test]
fn sign_in_refuses_bad_tokens_forged_forms_and_other_tenants() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let web = Https::new(&c);

    // Not signed in: the sign-in page, 401.
    let r = web.get("/t/default/", &[]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("sign in to see the fleet"), "{}", r.body);

    // A wrong token: 401, the reason, no session.
    let r = web.sign_in("swt_0123456789abcdef_nope").unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("invalid API token"), "{}", r.body);
    assert!(r.cookie("__Host-slipway").is_none());

    // An expired token.
    let short = c
        .ctl(&[
            "tokens",
            "create",
            "short",
            "--role",
            "viewer",
            "--expires",
            "1s",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let r = web.sign_in(&short).unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("token expired"), "{}", r.body);

    // A viewer signs in: a Secure, HttpOnly, SameSite=Strict cookie.
    let viewer = c.token("looker", &["viewer"]);
    let page = web.get("/sign-in", &[]);
    let pre = format!(
        "__Host-slipway-sign-in={}",
        page.cookie("__Host-slipway-sign-in").unwrap()
    );
    let r = web.post(
        "/sign-in",
        &[("token", &viewer), ("csrf", &page.csrf())],
        std::slice::from_ref(&pre),
        &[],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r
        .headers
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: __host-slipway=")
        })
        .unwrap()
        .to_string();
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    let session = web.sign_in(&viewer).unwrap();
    let fleet = web.get("/t/default/", std::slice::from_ref(&session));
    assert_eq!(fleet.status, 200, "{}", fleet.body);
    assert!(fleet.body.contains("looker"));
    for h in ["content-security-policy", "x-content-type-options"] {
        assert!(fleet.header(h).is_some(), "{h}: {}", fleet.headers);
    }

    // A sign-in form without the sign-in cookie's CSRF value (a forged
    // form), or posted from another site: refused, no session.
    let r = web.post(
        "/sign-in",
        &[("token", &viewer), ("csrf", "0123")],
        std::slice::from_ref(&pre),
        &[],
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    assert!(r.cookie("__Host-slipway").is_none());
    let r = web.post(
        "/sign-in",
        &[("token", &viewer), ("csrf", &page.csrf())],
        std::slice::from_ref(&pre),
        &["Origin: https://evil.example"],
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("another site"), "{}", r.body);

    // Sign-out with a forged CSRF value changes nothing.
    let r = web.post(
        "/sign-out",
        &[("csrf", "forged")],
        std::slice::from_ref(&session),
        &[],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        web.get("/t/default/", std::slice::from_ref(&session))
            .status,
        200
    );

    // A tenant that is not the session's: 403, nothing of it shown.
    let acme_admin = c
        .ctl(&["tenants", "add", "acme"])
        .ok()
        .stdout
        .trim()
        .to_string();
    let acme = web.sign_in(&acme_admin).unwrap();
    let r = web.get("/t/default/", std::slice::from_ref(&acme));
    assert_eq!(r.status, 403);
    assert!(
        r.body
            .contains("is for tenant &quot;acme&quot;, not &quot;default&quot;"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("looker"));
    for path in [
        "/t/default/history",
        "/t/default/releases",
        "/t/default/hosts/x",
    ] {
        assert_eq!(
            web.get(path, std::slice::from_ref(&acme)).status,
            403,
            "{path}"
        );
    }
    assert_eq!(
        web.get("/", std::slice::from_ref(&acme))
            .header("location")
            .as_deref(),
        Some("/t/acme/")
    );

    // A cookie another controller made is unknown here.
    let t2 = tempfile::tempdir().unwrap();
    let other = Controller::start(t2.path());
    let foreign = Https::new(&other).sign_in(&other.admin_token).unwrap();
    let r = web.get("/t/default/", &[foreign]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("not made by this controller"), "{}", r.body);

    // Sign-out ends the session; the same form replayed is refused.
    let page = web.get("/t/default/", std::slice::from_ref(&session));
    let form = [("csrf", page.csrf())];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = web.post("/sign-out", &form, std::slice::from_ref(&session), &[]);
    assert_eq!(r.status, 303);
    let r = web.post("/sign-out", &form, std::slice::from_ref(&session), &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        web.get("/t/default/", std::slice::from_ref(&session))
            .status,
        401
    );

    // Revoking the token ends its other sessions.
    let again = web.sign_in(&viewer).unwrap();
    c.ctl(&["tokens", "revoke", "looker"]).ok();
    let r = web.get("/t/default/", &[again]);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("revoked"), "{}", r.body);

    // Sign-ins and sign-outs are in the audit log.
    let history = web.get(
        "/t/default/history?actor=looker",
        &[web.sign_in(&c.admin_token).unwrap()],
    );
    assert!(
        history.body.contains("web-sign-in") && history.body.contains("web-sign-out"),
        "{}",
        history.body
    );
}

#[test]
fn a_log_search_finds_a_line_on_another_host_masks_values_and_refuses_bad_queries() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let a = Agent::start(t.path(), &c, "s-1", "preprod", DB_ENV);
    let b = Agent::start(t.path(), &c, "s-2", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    a.wait_serving("1.0.0");
    b.wait_serving("1.0.0");
    http_get(b.app_port, "/needle-7f3a/postgres://app@db/app");
    for i in 0..50 {
        http_get(a.app_port, &format!("/hay-{i}"));
    }
    let web = Https::new(&c);
    let session = web.sign_in(&c.token("looker", &["viewer"])).unwrap();
    let get = |q: &str| {
        web.get(
            &format!("/t/default/logs?{q}"),
            std::slice::from_ref(&session),
        )
    };

    let r = eventually(Duration::from_secs(15), "the needle found", || {
        let r = get("app=web&env=preprod&q=needle-7f3a");
        r.body.contains("needle-7f3a").then_some(r)
    });
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("data-host=\"s-2\"") && !r.body.contains("data-host=\"s-1\""),
        "only s-2 wrote it:\n{}",
        r.body
    );
    assert!(
        r.body.contains("<span class=\"proc\">web</span>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("/needle-7f3a/***"), "masked: {}", r.body);
    assert!(!r.body.contains("postgres://app@db"), "{}", r.body);
    assert!(r.body.contains("from 2 of 2 host(s)"), "{}", r.body);
    assert!(r.body.contains("<time"), "a time per line: {}", r.body);

    // An env-file value cannot be searched for; a regex finds every host.
    let r = get("app=web&env=preprod&q=app%40db");
    assert!(!r.body.contains("class=\"hit\""), "{}", r.body);
    let r = get("app=web&q=GET+%2F%28needle%7Chay-4%29&mode=regex");
    assert!(
        r.body.contains("data-host=\"s-1\"") && r.body.contains("data-host=\"s-2\""),
        "{}",
        r.body
    );
    // A time range that ends before anything was written finds nothing.
    let r = get("app=web&q=needle-7f3a&since=90d&until=30d");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("class=\"hit\""), "{}", r.body);

    // Bad queries: refused with the reason, no host asked.
    for (q, status, why) in [
        (
            "app=web&q=%28a%7B1000%7D%29%7B1000%7D&mode=regex",
            400,
            "exceeds size limit",
        ),
        ("app=web&q=%28&mode=regex", 400, "query: "),
        ("app=web&q=x&since=1000d", 400, "at most 90 days"),
        (
            "app=web&q=x&since=1h&until=2h",
            400,
            "ends before it starts",
        ),
        ("app=web&q=x&n=100000", 400, "lines: 1 to 1000"),
        ("app=web&q=x&since=soon", 400, "try 15m"),
        ("app=nope&q=x", 409, "no connected host runs nope"),
        ("app=web&q=x&host=s-9", 409, "host s-9 is not connected"),
    ] {
        let r = get(q);
        assert_eq!(r.status, status, "{q}: {}", r.body);
        assert!(r.body.contains(why), "{q}: {}", r.body);
    }

    // A live rollout view ends when its session does.
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.ctl(&[
        "deploy", "web", "2.0.0", "--env", "preprod", "--canary", "1", "--batch", "1", "--pause",
        "120",
    ])
    .ok();
    let mut live = std::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "60", "--cacert"])
        .arg(c.ca_cert())
        .args([
            "-b",
            &session,
            &format!("{}/t/default/rollouts/web/preprod/live", web.base),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = integration_tests::stdout_lines(&mut live);
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with("data:"), "{first}");
    let page = get("");
    let csrf = [("csrf", page.csrf())];
    let form: Vec<(&str, &str)> = csrf.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        web.post("/sign-out", &form, std::slice::from_ref(&session), &[])
            .status,
        303
    );
    let ended = std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(20)).ok())
        .any(|l| l == "event: end");
    assert!(ended, "the live view ended with the session");
    let _ = live.kill();
    let _ = live.wait();
}
