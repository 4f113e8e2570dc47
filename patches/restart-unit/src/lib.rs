//! restart-unit: for a failed systemd unit (`kind = "unit_failed"`, reported by
//! `phoenix-report@.service`), plans the policy's `restart-unit` command with the unit's name,
//! which phoenix runs only if the policy lists that unit in the command's `args`.
#![cfg_attr(not(test), no_std)]

use phoenix_patch::fault::Source;
use phoenix_patch::{decline, fault, plan, Outcome};

phoenix_patch::entry!(heal);

fn heal() -> Outcome {
    // Only systemd itself says a unit failed: a report over the API is not enough.
    if fault::source() != Source::Systemd || fault::kind() != "unit_failed" {
        return decline();
    }
    let unit = fault::app();
    phoenix_patch::log("unit_failed: planning a restart of the unit");
    plan::exec_with("restart-unit", &unit)
}

#[cfg(test)]
mod tests {
    use phoenix_patch::testing::run;

    #[test]
    fn a_failed_unit_is_restarted_by_name_and_nothing_else_is() {
        let failed = [
            ("app", "nginx.service"),
            ("kind", "unit_failed"),
            ("source", "systemd"),
        ];
        let run_of = |fault: &[(&str, &str)]| run(fault, super::heal);
        assert_eq!(
            run_of(&failed).actions,
            [r#"{"kind":"exec","command":"restart-unit","arg":"nginx.service"}"#]
        );
        let from_api = [
            ("app", "nginx.service"),
            ("kind", "unit_failed"),
            ("source", "api"),
        ];
        assert_eq!(run_of(&from_api).status, 1);
        let other_kind = [
            ("app", "nginx.service"),
            ("kind", "oom"),
            ("source", "systemd"),
        ];
        assert_eq!(run_of(&other_kind).status, 1);
    }
}
