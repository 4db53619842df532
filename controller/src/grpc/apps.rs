//! `Deployments.SetApp / RemoveApp / AppHosts`: apps declared on the
//! controller (`crate::declare`), authorized like a change of desired state
//! in the environment (production needs the promoter role) and audited.

use proto::v1::{
    AppHostState, AppHostsRequest, AppHostsResponse, RemoveAppRequest, SetAppRequest,
    SetAppResponse, SetMode,
};
use tonic::{Request, Response, Status};

use super::{SharedCtx, Want, authorize, reader};
use crate::declare::{Change, Changed, Mode};

fn to_proto(c: Changed) -> SetAppResponse {
    SetAppResponse {
        revision: c.revision,
        settings: c.settings,
        previous: c.previous,
        hosts: c.hosts,
    }
}

pub async fn set(
    ctx: &SharedCtx,
    req: Request<SetAppRequest>,
) -> Result<Response<SetAppResponse>, Status> {
    let (mode, action) = match req.get_ref().mode() {
        SetMode::Add => (Mode::Add, "app-add"),
        SetMode::Update => (Mode::Update, "app-set"),
        SetMode::Replace => (Mode::Replace, "app-set"),
        SetMode::Unspecified => {
            return Err(Status::invalid_argument("mode: add, update or replace"));
        }
    };
    let who = authorize(ctx, &req, Want::Change, action).await?;
    let r = req.into_inner();
    let result = crate::declare::apply(
        ctx,
        &Change {
            tenant: &who.tenant,
            environment: &r.environment,
            app: &r.app,
            host: &r.host,
            patch: Some((&r.settings, mode)),
        },
    )
    .await;
    audited(ctx, &who, action, &r.app, &r.environment, &r.host, result).await
}

pub async fn remove(
    ctx: &SharedCtx,
    req: Request<RemoveAppRequest>,
) -> Result<Response<SetAppResponse>, Status> {
    let who = authorize(ctx, &req, Want::Change, "app-remove").await?;
    let r = req.into_inner();
    let result = crate::declare::apply(
        ctx,
        &Change {
            tenant: &who.tenant,
            environment: &r.environment,
            app: &r.app,
            host: &r.host,
            patch: None,
        },
    )
    .await;
    audited(
        ctx,
        &who,
        "app-remove",
        &r.app,
        &r.environment,
        &r.host,
        result,
    )
    .await
}

async fn audited(
    ctx: &SharedCtx,
    who: &super::Authorized,
    action: &str,
    app: &str,
    env: &str,
    host: &str,
    result: crate::error::Result<Changed>,
) -> Result<Response<SetAppResponse>, Status> {
    let on = if host.is_empty() {
        String::new()
    } else {
        format!("host {host}: ")
    };
    let (detail, outcome) = match &result {
        Ok(c) => (
            format!(
                "{on}{} -> {} (revision {})",
                if c.previous.is_empty() {
                    "-"
                } else {
                    &c.previous
                },
                if c.settings.is_empty() {
                    "-"
                } else {
                    &c.settings
                },
                c.revision
            ),
            "ok".to_string(),
        ),
        Err(e) => (on, format!("refused: {e}")),
    };
    super::audit(ctx, who, action, app, env, &detail, &outcome).await;
    Ok(Response::new(to_proto(result?)))
}

pub async fn hosts(
    ctx: &SharedCtx,
    req: Request<AppHostsRequest>,
) -> Result<Response<AppHostsResponse>, Status> {
    let who = reader(ctx, &req).await?;
    let r = req.into_inner();
    let store = &ctx.store;
    let result: crate::error::Result<AppHostsResponse> = async {
        let revision = store.apps_revision(&who.tenant, &r.environment).await?;
        let rows = store.declared_apps(&who.tenant, &r.environment).await?;
        let placements = store.placements(&who.tenant).await?;
        let mut settings = String::new();
        let mut overrides = std::collections::HashMap::new();
        for row in rows.iter().filter(|row| row.app == r.app) {
            if row.host.is_empty() {
                settings = row.settings.clone();
            } else {
                overrides.insert(row.host.clone(), row.settings.clone());
            }
        }
        let fleet = store.fleet(&who.tenant, &r.app, &r.environment).await?;
        let desired = store.desired(&who.tenant, &r.app, &r.environment).await?;
        let mut hosts = Vec::new();
        for h in store.hosts_apps_acks(&who.tenant, &r.environment).await? {
            let labels = crate::store::labels_from_json(&h.labels);
            let declared =
                crate::declare::for_host(&rows, &placements, &r.environment, &h.name, &labels)
                    .contains_key(&r.app);
            let refused: std::collections::BTreeMap<String, String> =
                serde_json::from_str(&h.apps_refused).unwrap_or_default();
            let report = fleet.iter().find(|f| f.host == h.name);
            hosts.push(AppHostState {
                connected: ctx.hub.connected(&who.tenant, &h.name),
                apps_revision: h.apps_revision as u64,
                refused: refused.get(&r.app).cloned().unwrap_or_default(),
                declared,
                running_version: report
                    .map(|f| f.report.running_version.clone())
                    .unwrap_or_default(),
                state: report.map(|f| f.report.state).unwrap_or_default(),
                health: report
                    .map(|f| super::health_to_proto(f.report.health))
                    .unwrap_or_default(),
                health_reason: report
                    .map(|f| f.report.health_reason.clone())
                    .unwrap_or_default(),
                host: h.name,
            });
        }
        Ok(AppHostsResponse {
            revision,
            settings,
            overrides,
            hosts,
            desired_version: desired.map(|(v, _)| v).unwrap_or_default(),
        })
    }
    .await;
    Ok(Response::new(result.map_err(Status::from)?))
}
