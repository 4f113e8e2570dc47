//! {{name}}: a phoenix patch. It reads the fault and plans what should be done; phoenix checks
//! the plan against the policy's capabilities, carries it out and verifies the fix.
//! Build and test it with `phoenix patch test {{dir}}`; the SDK's guide: docs/writing-patches.md.
#![cfg_attr(not(test), no_std)]

use phoenix_patch::{decline, fault, plan, Outcome};

phoenix_patch::entry!(heal);

/// Plans the policy's `cleanup` command for a `disk_full` fault; declines anything else.
fn heal() -> Outcome {
    if fault::kind() != "disk_full" {
        return decline();
    }
    if let Some(mount) = fault::label("mount") {
        phoenix_patch::log!("disk_full on {}: planning the cleanup", mount);
    }
    plan::exec("cleanup")
}

// Native unit tests (`cargo test`), beside the contract tests in patch.toml.
#[cfg(test)]
mod tests {
    use phoenix_patch::testing::run;

    #[test]
    fn disk_full_plans_the_cleanup() {
        let run = run(&[("kind", "disk_full"), ("labels.mount", "/var")], super::heal);
        assert_eq!(run.actions, [r#"{"kind":"exec","command":"cleanup"}"#]);
        assert_eq!(run.logs, ["disk_full on /var: planning the cleanup"]);
    }

    #[test]
    fn other_faults_are_declined() {
        assert_eq!(run(&[("kind", "oom")], super::heal).status, 1);
    }
}
