//! Where an app's files live under the agent's state dir.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct AppPaths {
    pub root: PathBuf,
    pub releases: PathBuf,
    pub current: PathBuf,
    pub shared: PathBuf,
    pub run: PathBuf,
    pub logs: PathBuf,
    pub deploy_log: PathBuf,
    pub status: PathBuf,
    pub lock: PathBuf,
    /// Blob being installed (download, resumable): emptied after each install.
    pub cache: PathBuf,
    /// Drift baselines, `<version>.json`: each release as installed.
    pub baselines: PathBuf,
}

impl AppPaths {
    /// Paths of an app: under its install root when the host config sets one.
    pub fn for_app(state_dir: &Path, app: &str, cfg: &crate::config::AppConfig) -> Self {
        match &cfg.install_root {
            Some(root) => Self::at(root.clone()),
            None => Self::new(state_dir, app),
        }
    }

    pub fn new(state_dir: &Path, app: &str) -> Self {
        Self::at(state_dir.join("apps").join(app))
    }

    fn at(root: PathBuf) -> Self {
        Self {
            releases: root.join("releases"),
            current: root.join("current"),
            shared: root.join("shared"),
            run: root.join("run"),
            logs: root.join("logs"),
            deploy_log: root.join("deploy.log"),
            status: root.join("status.json"),
            lock: root.join(".lock"),
            cache: root.join("cache"),
            baselines: root.join("baselines"),
            root,
        }
    }

    pub fn release(&self, version: &str) -> PathBuf {
        self.releases.join(version)
    }

    pub fn baseline(&self, version: &str) -> PathBuf {
        self.baselines.join(format!("{version}.json"))
    }

    pub fn create(&self) -> std::io::Result<()> {
        for d in [
            &self.releases,
            &self.shared,
            &self.run,
            &self.logs,
            &self.baselines,
        ] {
            std::fs::create_dir_all(d)?;
        }
        // Baselines hold a digest of every release file: the agent's eyes only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.baselines, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// The version `current` points at, if any.
    pub fn current_version(&self) -> Option<String> {
        let target = std::fs::read_link(&self.current).ok()?;
        target.file_name()?.to_str().map(String::from)
    }

    /// Release dirs on disk, by name (staging dirs left out).
    pub fn kept_versions(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.releases)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}
