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

pub async fn run(a: HistoryArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = HistoryRequest {
        tenant: c.tenant.clone(),
        app: a.app.unwrap_or_default(),
        limit: a.limit,
    };
    let r = c.deployments.history(req).await;
    let rows: Vec<EventJson> = r
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .events
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
