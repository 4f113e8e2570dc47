//! disk-triage: a full disk gets the cleanup that fits the mount that is full.
//!
//! The mount comes from the fault's `mount` label (a report) or `mountpoint` (node_exporter's
//! label, through Alertmanager). The longest rule that covers it picks the command:
//!
//! | mount            | commands planned                     |
//! |------------------|--------------------------------------|
//! | `/var/log`       | `rotate-logs`                        |
//! | `/tmp`, `/var/tmp` | `clean-tmp`                        |
//! | `/var/cache`     | `clean-cache`                        |
//! | `/`, `/var`      | `rotate-logs`, `clean-tmp`, `clean-cache` |
//! | `/home`, other   | declined: people's files are for a person to judge |
//!
//! A second attempt (the first did not free enough) adds `vacuum-journal`, the one cleanup
//! that deletes history. The policy declares each command's argv; the patch only chooses.
#![cfg_attr(not(test), no_std)]

use phoenix_patch::{decline, fault, plan, Outcome};

phoenix_patch::entry!(heal);

/// (mount, commands): the rules, each covering its mount and everything below it.
const RULES: &[(&str, &[&str])] = &[
    ("/", &["rotate-logs", "clean-tmp", "clean-cache"]),
    ("/var", &["rotate-logs", "clean-tmp", "clean-cache"]),
    ("/var/log", &["rotate-logs"]),
    ("/tmp", &["clean-tmp"]),
    ("/var/tmp", &["clean-tmp"]),
    ("/var/cache", &["clean-cache"]),
    ("/home", &[]),
];

fn heal() -> Outcome {
    if fault::kind() != "disk_full" {
        return decline();
    }
    let mount = match fault::label("mount").or_else(|| fault::label("mountpoint")) {
        Some(mount) => mount,
        None => return decline(),
    };
    let commands = match commands_for(&mount) {
        Some(commands) if !commands.is_empty() => commands,
        _ => {
            phoenix_patch::log!("{} is full: not a mount this patch cleans", mount);
            return decline();
        }
    };
    phoenix_patch::log!(
        "{} is full (attempt {}): {} cleanup(s)",
        mount,
        fault::attempt(),
        commands.len()
    );
    for command in commands {
        plan::exec(command)?;
    }
    if fault::attempt() >= 2 {
        plan::exec("vacuum-journal")?;
    }
    Ok(())
}

/// The commands of the longest rule covering `mount` (with or without a trailing slash); None
/// for a path that is not absolute.
fn commands_for(mount: &str) -> Option<&'static [&'static str]> {
    if !mount.starts_with('/') {
        return None;
    }
    let mount = match mount.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    RULES
        .iter()
        .filter(|(rule, _)| covers(rule, mount))
        .max_by_key(|(rule, _)| rule.len())
        .map(|(_, commands)| *commands)
}

/// `rule` is `mount` or one of its parents: `/var/log` covers `/var/log/nginx`, not
/// `/var/logs`.
fn covers(rule: &str, mount: &str) -> bool {
    rule == "/"
        || mount == rule
        || (mount.starts_with(rule) && mount.as_bytes().get(rule.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_patch::testing::run;

    #[test]
    fn the_longest_rule_covering_the_mount_wins() {
        assert_eq!(commands_for("/var/log"), Some(&["rotate-logs"][..]));
        assert_eq!(commands_for("/var/log/"), Some(&["rotate-logs"][..]));
        assert_eq!(commands_for("/var/log/nginx"), Some(&["rotate-logs"][..]));
        assert_eq!(commands_for("/var/logs").map(<[_]>::len), Some(3));
        assert_eq!(commands_for("/"), commands_for("/srv"));
        assert_eq!(commands_for("/home/alice"), Some(&[][..]));
        assert_eq!(commands_for("relative"), None);
    }

    #[test]
    fn a_second_attempt_also_vacuums_the_journal() {
        let fields = [
            ("kind", "disk_full"),
            ("labels.mountpoint", "/tmp"),
            ("attempt", "2"),
        ];
        let run = run(&fields, heal);
        assert_eq!(run.status, 0);
        assert_eq!(
            run.actions,
            [
                r#"{"kind":"exec","command":"clean-tmp"}"#,
                r#"{"kind":"exec","command":"vacuum-journal"}"#
            ]
        );
        assert_eq!(run.logs, ["/tmp is full (attempt 2): 1 cleanup(s)"]);
    }
}
