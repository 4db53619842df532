//! `slipctl config`: contexts (see `crate::context`). Local: no controller.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{ConfigCommand, Global};
use crate::context::{self, ConfigFile, Context};
use crate::error::{CtlError, Result};
use crate::output::{Format, Table, dash, escape, print_json};

/// A path as stored: absolute, so the context works from any directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| CtlError::Usage(format!("{}: {e}", p.display())))
}

#[derive(Serialize)]
struct ContextJson<'a> {
    name: &'a str,
    current: bool,
    #[serde(flatten)]
    context: &'a Context,
}

pub fn run(cmd: ConfigCommand, g: &Global, fmt: Format) -> Result<()> {
    let path = context::path().ok_or_else(|| {
        CtlError::Usage("no config location: set HOME, XDG_CONFIG_HOME or SLIPWAY_CONFIG".into())
    })?;
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCommand::SetContext { name, make_current } => {
            context::check_name(&name)?;
            let mut ctx = file.contexts.get(&name).cloned().unwrap_or_default();
            if let Some(url) = &g.controller {
                trust::tls::ControllerUrl::parse(url)
                    .map_err(|e| CtlError::Usage(format!("--controller: {e}")))?;
                ctx.controller = Some(url.clone());
            }
            if let Some(p) = &g.ca_cert {
                ctx.ca_cert = Some(absolute(p)?);
            }
            if let Some(p) = &g.token_file {
                ctx.token_file = Some(absolute(p)?);
            }
            if let Some(t) = &g.tenant {
                ctx.tenant = Some(t.clone()).filter(|t| !t.is_empty());
            }
            let created = !file.contexts.contains_key(&name);
            file.contexts.insert(name.clone(), ctx);
            if make_current || file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            file.save(&path)?;
            if !fmt.is_json() {
                say!(
                    "context {name} {} in {}{}",
                    if created { "created" } else { "changed" },
                    path.display(),
                    if file.current_context.as_deref() == Some(name.as_str()) {
                        " (current)"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            print_json(&ContextJson {
                current: file.current_context.as_deref() == Some(name.as_str()),
                context: &file.contexts[&name],
                name: &name,
            })
        }
        ConfigCommand::UseContext { name } => {
            file.get(&name, &path)?;
            file.current_context = Some(name.clone());
            file.save(&path)?;
            if !fmt.is_json() {
                say!("using context {name}");
            }
            Ok(())
        }
        ConfigCommand::DeleteContext { name } => {
            file.get(&name, &path)?;
            file.contexts.remove(&name);
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)?;
            if !fmt.is_json() {
                say!("context {name} deleted");
            }
            Ok(())
        }
        ConfigCommand::CurrentContext => {
            let name = g.context.clone().or(file.current_context.clone());
            match name {
                Some(n) => {
                    file.get(&n, &path)?;
                    say!("{n}");
                    Ok(())
                }
                None => Err(CtlError::NotFound(format!(
                    "no current context in {}: slipctl config use-context NAME",
                    path.display()
                ))),
            }
        }
        ConfigCommand::GetContexts => {
            let current = g.context.clone().or(file.current_context.clone());
            let rows: Vec<ContextJson> = file
                .contexts
                .iter()
                .map(|(name, ctx)| ContextJson {
                    name,
                    current: current.as_deref() == Some(name.as_str()),
                    context: ctx,
                })
                .collect();
            if fmt.is_json() {
                return print_json(&rows);
            }
            let mut t = Table::new(&[
                "CURRENT",
                "NAME",
                "CONTROLLER",
                "CA CERT",
                "TOKEN FILE",
                "TENANT",
            ]);
            let shown = |p: &Option<PathBuf>| {
                dash(
                    &p.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                )
            };
            for r in rows {
                t.row([
                    if r.current {
                        "*".to_string()
                    } else {
                        String::new()
                    },
                    r.name.to_string(),
                    escape(&dash(r.context.controller.as_deref().unwrap_or_default())),
                    shown(&r.context.ca_cert),
                    shown(&r.context.token_file),
                    dash(r.context.tenant.as_deref().unwrap_or_default()),
                ]);
            }
            t.print();
            Ok(())
        }
    }
}
