//! `slipctl history`: the audit log (who changed what, when, from where, and
//! what was refused), with absolute times.

use proto::v1::HistoryRequest;
use serde::Serialize;

use crate::cli::HistoryArgs;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, absolute, as_rfc3339, print_json};

#[derive(Serialize)]
struct EventJson {
    #[serde(serialize_with = "as_rfc3339")]
    at: i64,
    actor: String,
    action: String,
    app: String,
    environment: String,
    detail: String,
    outcome: String,
    peer: String,
}

/// Events asked for per call; the controller caps a page lower if it must.
const PAGE: u32 = 100;

pub async fn run(a: HistoryArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let app = a.app.unwrap_or_default();
    let mut events = Vec::new();
    let mut before_id = 0;
    // Page by page, newest first, until --limit or the oldest event.
    while events.len() < a.limit as usize {
        let want = (a.limit as usize - events.len()).min(PAGE as usize) as u32;
        let req = HistoryRequest {
            tenant: c.tenant.clone(),
            app: app.clone(),
            limit: want,
            before_id,
        };
        let r = c.deployments.history(req).await;
        let page = r.map_err(|s| from_status(&c.url, s))?.into_inner();
        let got = page.events.len();
        events.extend(
            page.events
                .into_iter()
                .take(a.limit as usize - events.len()),
        );
        if page.next_before_id == 0 || got == 0 {
            break;
        }
        before_id = page.next_before_id;
    }
    let rows: Vec<EventJson> = events
        .into_iter()
        .map(|e| EventJson {
            at: e.at,
            actor: e.actor,
            action: e.action,
            app: e.app,
            environment: e.environment,
            detail: e.detail,
            outcome: e.outcome,
            peer: e.peer,
        })
        .collect();
    if fmt.is_json() {
        return print_json(&rows);
    }
    let mut t = Table::new(&["WHEN", "WHO", "ACTION", "APP", "ENV", "DETAIL", "OUTCOME"]);
    t.keep_whole(0);
    t.keep_whole(2);
    for e in rows {
        t.row([
            absolute(e.at),
            e.actor,
            e.action,
            e.app,
            e.environment,
            e.detail,
            e.outcome,
        ]);
    }
    t.print();
    Ok(())
}
