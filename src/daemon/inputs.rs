//! The daemon's inputs: the policies and patches it reads from disk, loaded the same way at
//! start-up and at every reload (start-up: an input error is fatal; reload: it is reported and
//! the last good set stays), each policy checked against phoenix's containment.

use super::*;

/// Loads policies and patch sources: the part of start-up (and of every reload) that only reads
/// input files. A policy that reaches phoenix's own files or API (`containment`) is invalid.
pub fn load_inputs(
    config: &Config,
    containment: &Containment,
) -> Result<(PolicySet, Vec<PatchSource>), DaemonError> {
    let policies = load_policies(&config.policies_dir, |policy| {
        // A budget nobody enforces would be a limit in name only.
        if policy.fleet.is_some() && config.fleet.is_none() {
            return Err(
                "it has a `[fleet]` budget, but the config has no `[fleet]` to enforce it with"
                    .into(),
            );
        }
        containment.check_policy(policy, &config.base_dir)
    })
    .map_err(DaemonError::Policies)?;
    let patches = PatchSource::load_all(&config.patches_dir).map_err(DaemonError::Patches)?;
    Ok((policies, patches))
}

/// Reads every `*.toml` file of `dir` (in name order) into a policy set, each checked by
/// `check` (see [`PolicySet::from_files`]).
pub fn load_policies(
    dir: &Path,
    check: impl Fn(&crate::core::policy::Policy) -> Result<(), String>,
) -> Result<PolicySet, Vec<PolicyError>> {
    let entries = std::fs::read_dir(dir).map_err(|source| {
        vec![PolicyError::Io {
            path: dir.to_owned(),
            source,
        }]
    })?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    paths.sort();
    let files = paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path);
            (path, text)
        })
        .collect();
    PolicySet::from_files(files, check)
}

/// The policy set the engine reads; reload swaps the inner `Arc` in one step.
pub type SharedPolicies = Arc<RwLock<Arc<PolicySet>>>;

/// Everything start-up and reload need to (re)load policies and patches. One code path serves
/// both: start-up treats an input error as fatal, reload reports it and keeps the last good set.
pub(super) struct Inputs {
    pub(super) config: Config,
    pub(super) containment: Arc<Containment>,
    pub(super) store: Arc<Store>,
    pub(super) sandbox: Arc<Sandbox>,
    pub(super) policies: SharedPolicies,
    pub(super) readiness: Arc<RwLock<Readiness>>,
}

impl Inputs {
    /// Loads policies and patches, registers patches, then swaps the policy set and updates
    /// readiness. Input errors change nothing and are returned.
    pub(super) async fn load(&self) -> Result<(), DaemonError> {
        let (policies, patches) = load_inputs(&self.config, &self.containment)?;
        let store_error = |source| DaemonError::Store {
            path: "store".into(),
            source,
        };
        let mut problems = Vec::new();
        let patch_count = patches.len();
        for patch in patches {
            let manifest = patch.dir.join("patch.toml");
            let registered = registry::register_dir_patch(&self.store, &self.sandbox, patch)
                .await
                .map_err(store_error)?;
            let record = &registered.record;
            if record.usable() {
                let language = record
                    .built_from
                    .as_ref()
                    .map_or("module", |source| source.language.as_str());
                tracing::info!(message = "Patch registered.", patch = %record.name, version = %record.version, hash = %record.hash, language, active = registered.active);
            } else {
                let kept = if registered.active {
                    "it is the only version"
                } else {
                    "the previous version stays active"
                };
                let problem = format!(
                    "{}: patch {}@{} will not be used ({kept}): {}",
                    manifest.display(),
                    record.name,
                    record.version,
                    record.problems()
                );
                tracing::warn!(message = "Patch rejected.", problem = %problem);
                problems.push(problem);
            }
        }
        for policy in policies.iter() {
            tracing::info!(message = "Policy loaded.", policy = %policy.name, patch = %policy.patch.name);
        }
        let policy_count = policies.len();
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
        let mut readiness = self.readiness.write().unwrap_or_else(|p| p.into_inner());
        readiness.policies = policy_count;
        readiness.patches = patch_count;
        readiness.problems = problems;
        Ok(())
    }

    /// Reload: like start-up, but a bad input is reported (log and `/readyz`) and the last good
    /// set stays in force.
    pub(super) async fn reload(&self) {
        match self.load().await {
            Ok(()) => {
                let (policies, patches) = {
                    let readiness = self.readiness.read().unwrap_or_else(|p| p.into_inner());
                    (readiness.policies, readiness.patches)
                };
                let detail = format!("{policies} policies, {patches} patches");
                if let Err(error) = self
                    .store
                    .audit("phoenix", "reload", "inputs", detail)
                    .await
                {
                    tracing::error!(message = "Cannot write the audit log.", %error);
                }
                let mut readiness = self.readiness.write().unwrap_or_else(|p| p.into_inner());
                readiness.reloads += 1;
                tracing::info!(
                    message = "Reloaded policies and patches.",
                    policies = readiness.policies,
                    patches = readiness.patches
                );
            }
            Err(error) => {
                let lines: Vec<String> = error
                    .to_string()
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect();
                for line in &lines {
                    tracing::warn!(message = "Reload rejected; the last good policies and patches stay in force.", problem = %line);
                }
                let mut readiness = self.readiness.write().unwrap_or_else(|p| p.into_inner());
                readiness.problems = vec![error.to_string()];
            }
        }
    }
}
