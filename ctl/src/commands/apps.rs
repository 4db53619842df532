//! `slipctl apps [place]`: apps per environment, their label selector and the
//! hosts it places them on; `add`, `set`, `remove` and `show` are in `declare`.

use std::collections::BTreeMap;

use proto::v1::{AppPlacement, ListAppsRequest, PlaceAppRequest, SetMode};
use serde::Serialize;

use super::declare::Declare;
use crate::cli::{AppsArgs, AppsCommand};
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, dash, list, pairs, print_json};
use crate::values::label_map;

#[derive(Serialize)]
struct PlacementJson {
    app: String,
    environment: String,
    selector: BTreeMap<String, String>,
    desired: String,
    hosts: Vec<String>,
    not_configured: Vec<String>,
    excluded: Vec<String>,
}

impl From<AppPlacement> for PlacementJson {
    fn from(p: AppPlacement) -> Self {
        PlacementJson {
            app: p.app,
            environment: p.environment,
            selector: p.selector.into_iter().collect(),
            desired: p.desired_version,
            hosts: p.hosts,
            not_configured: p.not_configured,
            excluded: p.excluded,
        }
    }
}

pub async fn run(a: AppsArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let placements = match a.command {
        Some(AppsCommand::Add {
            app,
            env,
            target,
            settings,
        }) => {
            let d = Declare {
                app,
                env,
                target,
                settings,
                unset: Vec::new(),
                mode: SetMode::Add,
            };
            return super::declare::set(d, c, fmt).await;
        }
        Some(AppsCommand::Set {
            app,
            env,
            target,
            settings,
            unset,
        }) => {
            let d = Declare {
                app,
                env,
                target,
                settings,
                unset,
                mode: SetMode::Update,
            };
            return super::declare::set(d, c, fmt).await;
        }
        Some(AppsCommand::Remove { app, env, target }) => {
            return super::declare::remove(app, env, target, c, fmt).await;
        }
        Some(AppsCommand::Show { app, env }) => {
            return super::declare::show(app, env, c, fmt).await;
        }
        Some(AppsCommand::Place { app, env, selector }) => {
            let req = PlaceAppRequest {
                tenant: c.tenant.clone(),
                app,
                environment: env,
                selector: label_map(&selector),
            };
            let r = c.deployments.place_app(req).await;
            vec![r.map_err(|s| from_status(&c.url, s))?.into_inner()]
        }
        None => {
            let req = ListAppsRequest {
                tenant: c.tenant.clone(),
                app: String::new(),
                environment: a.env.unwrap_or_default(),
            };
            let r = c.deployments.list_apps(req).await;
            r.map_err(|s| from_status(&c.url, s))?.into_inner().apps
        }
    };
    let rows: Vec<PlacementJson> = placements.into_iter().map(PlacementJson::from).collect();
    if fmt.is_json() {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "APP",
        "ENV",
        "SELECTOR",
        "DESIRED",
        "HOSTS",
        "NOT CONFIGURED",
        "EXCLUDED",
    ]);
    for p in rows {
        let selector = if p.selector.is_empty() {
            "(all)".into()
        } else {
            pairs(&p.selector)
        };
        t.row([
            p.app.clone(),
            p.environment.clone(),
            selector,
            dash(&p.desired),
            list(&p.hosts),
            list(&p.not_configured),
            list(&p.excluded),
        ]);
    }
    t.print();
    Ok(())
}
