//! disk-cleanup: for a `disk_full` fault, plans the policy's declared `cleanup` command.
//! The policy fixes what `cleanup` runs; the patch only names it.
#![cfg_attr(not(test), no_std)]

use phoenix_patch::{decline, fault, plan, Outcome};

phoenix_patch::entry!(heal);

fn heal() -> Outcome {
    if fault::kind() != "disk_full" {
        return decline();
    }
    phoenix_patch::log("disk_full: planning the declared cleanup command");
    plan::exec("cleanup")
}

#[cfg(test)]
mod tests {
    use phoenix_patch::testing::run;

    #[test]
    fn disk_full_plans_the_cleanup_and_nothing_else_is_healed() {
        let run = run(&[("kind", "disk_full")], super::heal);
        assert_eq!(run.actions, [r#"{"kind":"exec","command":"cleanup"}"#]);
        assert_eq!(run(&[("kind", "oom")], super::heal).status, 1);
    }
}
