//! A plan: the actions a patch asks for, and the check of those actions against a policy's
//! capabilities.
//!
//! A patch never acts; it returns a plan. This module owns the plan's shape (what an action may
//! say) and the rule that every action must be allowed by the policy before anything runs.
//! It does no I/O.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::policy::Capabilities;

/// One thing a patch asks phoenix to do. The wire form is internally tagged:
/// `{"kind": "exec", "command": "cleanup"}` (read by hand: see `ActionVisitor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Run a command declared in the policy, by name. Its argv is fixed by the policy, but for
    /// one `{arg}` element, which `arg` fills with one of the values the policy lists.
    Exec {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arg: Option<String>,
    },
    /// Restart a supervised program (stop it if running, wait its backoff, start it).
    Restart { program: String },
    /// Send a signal (HUP, INT, QUIT, USR1, USR2, TERM, KILL, CONT) to a supervised program's
    /// process group.
    Signal { program: String, signal: String },
    /// Replace a file's content (UTF-8) atomically, under a directory the policy allows. The
    /// previous content and mode are kept so the change can be rolled back.
    WriteFile { path: String, content: String },
    /// Send an HTTP request to a URL under one of the policy's allowed prefixes.
    Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
}

fn default_method() -> String {
    "POST".into()
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        deserializer.deserialize_map(ActionVisitor)
    }
}

/// Reads an action. serde's derive for an internally tagged enum buffers the whole object
/// before it reads the tag (a third of an action's parse, which every patch run pays); this
/// reads `kind` first when it comes first, as phoenix writes it and patches do, and the other
/// fields straight into the variant's. Only an object whose `kind` comes later is buffered.
/// Unknown, missing and duplicate fields are refused either way.
struct ActionVisitor;

impl<'de> serde::de::Visitor<'de> for ActionVisitor {
    type Value = Action;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an action object with a `kind`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Action, A::Error> {
        use serde::de::Error;
        let first = match map.next_key::<FirstKey>()? {
            None => return Err(A::Error::missing_field("kind")),
            Some(FirstKey::Kind) => {
                let kind = map.next_value()?;
                return fields_of(kind, serde::de::value::MapAccessDeserializer::new(map));
            }
            Some(FirstKey::Other(key)) => key,
        };
        let mut buffered = serde_json::Map::new();
        buffered.insert(first, map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            if buffered.contains_key(&key) {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
            buffered.insert(key, value);
        }
        let kind = buffered
            .remove("kind")
            .ok_or_else(|| A::Error::missing_field("kind"))?;
        let kind = ActionKind::deserialize(kind).map_err(A::Error::custom)?;
        fields_of(kind, serde_json::Value::Object(buffered)).map_err(A::Error::custom)
    }
}

/// An action object's first key: `kind`, or another (kept, for the buffered path).
enum FirstKey {
    Kind,
    Other(String),
}

impl<'de> Deserialize<'de> for FirstKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<FirstKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = FirstKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<FirstKey, E> {
                Ok(match key {
                    "kind" => FirstKey::Kind,
                    other => FirstKey::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActionKind {
    Exec,
    Restart,
    Signal,
    WriteFile,
    Http,
}

/// The fields of an action of `kind` (all but `kind`), from `fields`.
fn fields_of<'de, D: serde::Deserializer<'de>>(
    kind: ActionKind,
    fields: D,
) -> Result<Action, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Exec {
        command: String,
        #[serde(default)]
        arg: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Restart {
        program: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Signal {
        program: String,
        signal: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WriteFile {
        path: String,
        content: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Http {
        #[serde(default = "default_method")]
        method: String,
        url: String,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    }
    Ok(match kind {
        ActionKind::Exec => {
            let Exec { command, arg } = Exec::deserialize(fields)?;
            Action::Exec { command, arg }
        }
        ActionKind::Restart => {
            let Restart { program } = Restart::deserialize(fields)?;
            Action::Restart { program }
        }
        ActionKind::Signal => {
            let Signal { program, signal } = Signal::deserialize(fields)?;
            Action::Signal { program, signal }
        }
        ActionKind::WriteFile => {
            let WriteFile { path, content } = WriteFile::deserialize(fields)?;
            Action::WriteFile { path, content }
        }
        ActionKind::Http => {
            let Http {
                method,
                url,
                body,
                headers,
            } = Http::deserialize(fields)?;
            Action::Http {
                method,
                url,
                body,
                headers,
            }
        }
    })
}

impl Action {
    /// The action's kind, as in its JSON (`exec`, `write_file`…).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Exec { .. } => "exec",
            Action::Restart { .. } => "restart",
            Action::Signal { .. } => "signal",
            Action::WriteFile { .. } => "write_file",
            Action::Http { .. } => "http",
        }
    }

    /// A short human description for history lines and logs.
    pub fn describe(&self) -> String {
        match self {
            Action::Exec { command, arg } => match arg {
                Some(arg) => format!("exec {command} {arg}"),
                None => format!("exec {command}"),
            },
            Action::Http { method, url, .. } => format!("http {method} {url}"),
            Action::Restart { program } => format!("restart {program}"),
            Action::WriteFile { path, content } => {
                format!("write_file {path} ({} bytes)", content.len())
            }
            Action::Signal { program, signal } => format!("signal {signal} to {program}"),
        }
    }
}

/// Why an action is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The command is not declared in the policy.
    #[error("action {index}: command `{command}` is not declared in the policy")]
    UnknownCommand { index: usize, command: String },
    /// The command's `arg` is not one its `args` list (or it has none, or needs one).
    #[error("action {index}: command `{command}` does not take {}", match arg { Some(arg) => format!("the argument `{arg}` (not in its `args`)"), None => "no argument (it needs one of its `args`)".to_owned() })]
    ArgNotAllowed {
        index: usize,
        command: String,
        arg: Option<String>,
    },
    /// The URL is not under any allowed prefix (or is not a plain http(s) URL).
    #[error("action {index}: URL `{url}` is not under an allowed prefix")]
    UrlNotAllowed { index: usize, url: String },
    /// The file is not under a directory the policy allows writing (or its path climbs out).
    #[error("action {index}: path `{path}` is not under a writable directory of the policy")]
    PathNotAllowed { index: usize, path: String },
    /// The program is not one the policy may restart or signal.
    #[error("action {index}: program `{program}` is not covered by the policy")]
    ProgramNotAllowed { index: usize, program: String },
    /// The signal is not one phoenix sends.
    #[error(
        "action {index}: signal `{signal}` is not allowed (HUP, INT, QUIT, USR1, USR2, TERM, KILL, CONT)"
    )]
    SignalNotAllowed { index: usize, signal: String },
    /// The HTTP method is not one phoenix sends.
    #[error("action {index}: HTTP method `{method}` is not allowed")]
    MethodNotAllowed { index: usize, method: String },
    /// A header phoenix does not let a patch set: one that frames or routes the request
    /// (`Content-Length`, `Transfer-Encoding`, `Host`, `Connection`…), or a name or value that is
    /// not a plain header (line breaks, control characters).
    #[error("action {index}: HTTP header `{name}` is not allowed ({why})")]
    HeaderNotAllowed {
        index: usize,
        name: String,
        why: &'static str,
    },
}

/// The signals a `signal` action may send to a supervised program's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    Hup,
    Int,
    Quit,
    Usr1,
    Usr2,
    Term,
    Kill,
    Cont,
}

impl SignalName {
    /// Every signal's name, as the patch SDKs must know them (`tests/sdk.rs` keeps them equal).
    pub const NAMES: [&'static str; 8] =
        ["HUP", "INT", "QUIT", "USR1", "USR2", "TERM", "KILL", "CONT"];

    /// The signal an action names (`"HUP"`, `"TERM"`…), if phoenix sends it.
    pub fn parse(name: &str) -> Option<SignalName> {
        Some(match name {
            "HUP" => SignalName::Hup,
            "INT" => SignalName::Int,
            "QUIT" => SignalName::Quit,
            "USR1" => SignalName::Usr1,
            "USR2" => SignalName::Usr2,
            "TERM" => SignalName::Term,
            "KILL" => SignalName::Kill,
            "CONT" => SignalName::Cont,
            _ => return None,
        })
    }
}

/// The HTTP methods an `http` action may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Headers that frame, route or upgrade a request. phoenix sets them itself: from a patch they
/// would make the request sent differ from the plan checked (the HTTP client drops a body that
/// a patch's `Content-Length: 0` disowns), and they are how a second request would be smuggled
/// past the URL check.
const FRAMING_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// Why a patch may not send the header `name: value`, if it may not.
fn header_problem(name: &str, value: &str) -> Option<&'static str> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Some("not a header name");
    }
    let lower = name.to_ascii_lowercase();
    if FRAMING_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Some("phoenix frames and routes the request itself");
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some("its value holds a line break or control character");
    }
    None
}

/// Checks every action of `plan` against `caps`. All or nothing: one denied action denies the
/// plan, so nothing of it runs.
pub fn check(plan: &[Action], caps: &Capabilities, base: &Path) -> Result<(), Denied> {
    for (index, action) in plan.iter().enumerate() {
        match action {
            Action::WriteFile { path, .. } => {
                if writable_target(path, caps, base).is_none() {
                    return Err(Denied::PathNotAllowed {
                        index,
                        path: path.clone(),
                    });
                }
            }
            Action::Exec { command, arg } => {
                let Some(spec) = caps.commands.get(command) else {
                    return Err(Denied::UnknownCommand {
                        index,
                        command: command.clone(),
                    });
                };
                if !spec.takes(arg.as_deref()) {
                    return Err(Denied::ArgNotAllowed {
                        index,
                        command: command.clone(),
                        arg: arg.clone(),
                    });
                }
            }
            Action::Restart { program } => {
                if !caps.covers_program(program) {
                    return Err(Denied::ProgramNotAllowed {
                        index,
                        program: program.clone(),
                    });
                }
            }
            Action::Signal { program, signal } => {
                if !caps.covers_program(program) {
                    return Err(Denied::ProgramNotAllowed {
                        index,
                        program: program.clone(),
                    });
                }
                if SignalName::parse(signal).is_none() {
                    return Err(Denied::SignalNotAllowed {
                        index,
                        signal: signal.clone(),
                    });
                }
            }
            Action::Http {
                method,
                url,
                headers,
                ..
            } => {
                if !METHODS.contains(&method.as_str()) {
                    return Err(Denied::MethodNotAllowed {
                        index,
                        method: method.clone(),
                    });
                }
                for (name, value) in headers {
                    if let Some(why) = header_problem(name, value) {
                        return Err(Denied::HeaderNotAllowed {
                            index,
                            name: name.clone(),
                            why,
                        });
                    }
                }
                if !caps
                    .http_prefixes
                    .iter()
                    .any(|prefix| url_under_prefix(url, prefix))
                {
                    return Err(Denied::UrlNotAllowed {
                        index,
                        url: url.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Where a `write_file` action may write: the path (relative ones against `base`) when it is
/// under one of the policy's writable directories. Lexical: no `..`, `.` or empty components,
/// no NUL, and not the directory itself. (Symlinks are checked when the file is written.)
pub fn writable_target(path: &str, caps: &Capabilities, base: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if path.is_empty() || path.contains('\0') {
        return None;
    }
    let target = base.join(path);
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.contains("/./")
    {
        return None;
    }
    caps.writable_dirs
        .iter()
        .map(|dir| base.join(dir))
        .any(|dir| {
            let clean = !dir.components().any(|c| matches!(c, Component::ParentDir));
            clean && target.starts_with(&dir) && target != dir
        })
        .then_some(target)
}

/// A URL is under a prefix when, both parsed the way an HTTP client parses them (WHATWG: dot
/// segments, also percent-encoded ones, resolved; scheme and host lower-cased), the URL starts
/// with the prefix. Refused outright: user info (`http://allowed@elsewhere/`), encoded slashes
/// or backslashes (`%2f`, `%5c`, which some servers decode into path separators), and
/// whitespace, control characters or backslashes anywhere.
fn url_under_prefix(url: &str, prefix: &str) -> bool {
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return false;
    }
    let (Ok(parsed), Ok(prefix)) = (url::Url::parse(url), url::Url::parse(prefix)) else {
        return false;
    };
    if !matches!(parsed.scheme(), "http" | "https")
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return false;
    }
    let path = parsed.path().to_ascii_lowercase();
    if path.contains("%2f") || path.contains("%5c") {
        return false;
    }
    parsed.as_str().starts_with(prefix.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_signal_name_is_one_phoenix_sends() {
        for name in SignalName::NAMES {
            assert!(SignalName::parse(name).is_some(), "{name}");
        }
        assert_eq!(SignalName::parse("STOP"), None);
    }

    use super::*;
    use crate::core::policy::CommandSpec;
    use std::time::Duration;

    fn caps() -> Capabilities {
        let mut commands = BTreeMap::new();
        commands.insert(
            "cleanup".to_string(),
            CommandSpec {
                args: Vec::new(),
                argv: vec!["true".into()],
                timeout: Duration::from_secs(1),
            },
        );
        Capabilities {
            commands,
            http_prefixes: vec!["http://127.0.0.1:9000/admin/".into()],
            programs: vec!["web".into()],
            ..Capabilities::default()
        }
    }

    fn http(url: &str) -> Action {
        Action::Http {
            method: "POST".into(),
            url: url.into(),
            body: None,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn allowed_actions_pass() {
        let plan = vec![
            Action::Exec {
                arg: None,
                command: "cleanup".into(),
            },
            http("http://127.0.0.1:9000/admin/flush?all=1"),
        ];
        assert_eq!(check(&plan, &caps(), Path::new("/")), Ok(()));
        assert_eq!(check(&[], &caps(), Path::new("/")), Ok(()));
    }

    #[test]
    fn a_commands_argument_must_be_one_the_policy_lists() {
        let mut caps = caps();
        caps.commands.insert(
            "restart-unit".into(),
            CommandSpec {
                argv: vec!["systemctl".into(), "restart".into(), "{arg}".into()],
                timeout: Duration::from_secs(5),
                args: vec!["web.service".into()],
            },
        );
        let exec = |command: &str, arg: Option<&str>| {
            vec![Action::Exec {
                command: command.into(),
                arg: arg.map(str::to_owned),
            }]
        };
        let base = Path::new("/");
        assert_eq!(
            check(&exec("restart-unit", Some("web.service")), &caps, base),
            Ok(())
        );
        for (command, arg) in [
            ("restart-unit", Some("db.service")),
            ("restart-unit", Some("web.service ")),
            ("restart-unit", None),
            ("cleanup", Some("web.service")),
        ] {
            assert_eq!(
                check(&exec(command, arg), &caps, base),
                Err(Denied::ArgNotAllowed {
                    index: 0,
                    command: command.into(),
                    arg: arg.map(str::to_owned)
                }),
                "{command} {arg:?}"
            );
        }
        let parsed: Action =
            serde_json::from_str(r#"{"kind":"exec","command":"restart-unit","arg":"web.service"}"#)
                .unwrap();
        assert_eq!(parsed, exec("restart-unit", Some("web.service"))[0]);
        assert_eq!(parsed.describe(), "exec restart-unit web.service");
        // A plan without `arg` is written as before (stored plans and ids do not change).
        assert_eq!(
            serde_json::to_string(&exec("cleanup", None)[0]).unwrap(),
            r#"{"kind":"exec","command":"cleanup"}"#
        );
    }

    #[test]
    fn undeclared_command_is_denied_with_its_index() {
        let plan = vec![
            Action::Exec {
                arg: None,
                command: "cleanup".into(),
            },
            Action::Exec {
                arg: None,
                command: "rm".into(),
            },
        ];
        assert_eq!(
            check(&plan, &caps(), Path::new("/")),
            Err(Denied::UnknownCommand {
                index: 1,
                command: "rm".into()
            })
        );
    }

    #[test]
    fn urls_under_the_prefix_are_allowed_also_when_spelled_differently() {
        for url in [
            "http://127.0.0.1:9000/admin/restart",
            "HTTP://127.0.0.1:9000/admin/restart?now=1",
            "http://127.0.0.1:9000/admin/a/../b",
            "http://127.0.0.1:9000/admin/./x",
        ] {
            assert_eq!(
                check(&[http(url)], &caps(), Path::new("/")),
                Ok(()),
                "{url}"
            );
        }
    }

    #[test]
    fn urls_outside_the_prefix_are_denied() {
        for url in [
            "http://127.0.0.1:9000/other",
            "http://127.0.0.1:9000/admin",
            "http://127.0.0.1:9000/admin/../secret",
            "http://127.0.0.1:9000/admin/%2E%2E/secret",
            "http://127.0.0.1:9000/admin/a\\..\\b",
            "http://127.0.0.1:90000/admin/x",
            "http://127.0.0.1:9000.evil.com/admin/x",
            "http://127.0.0.1:9000/admin/x/../../secret",
            "http://127.0.0.1:9000/admin/.%2e/secret",
            "http://127.0.0.1:9000/admin/%2e./secret",
            "http://127.0.0.1:9000/admin/..%2fsecret",
            "http://127.0.0.1:9000/admin/%2F..%2Fsecret",
            "http://127.0.0.1:9000/admin/%5c..%5csecret",
            "http://127.0.0.1:9000@evil.example/admin/x",
            "http://user:pw@127.0.0.1:9000/admin/x",
            "ftp://127.0.0.1:9000/admin/x",
            "http://127.0.0.1:9000/admin/ x",
            "not a url",
        ] {
            assert!(
                matches!(
                    check(&[http(url)], &caps(), Path::new("/")),
                    Err(Denied::UrlNotAllowed { .. })
                ),
                "{url} should be denied"
            );
        }
    }

    #[test]
    fn only_covered_programs_may_be_restarted_or_signalled() {
        let restart = |program: &str| Action::Restart {
            program: program.into(),
        };
        assert_eq!(check(&[restart("web")], &caps(), Path::new("/")), Ok(()));
        assert!(matches!(
            check(&[restart("db")], &caps(), Path::new("/")),
            Err(Denied::ProgramNotAllowed { .. })
        ));
        let signal = |signal: &str| Action::Signal {
            program: "web".into(),
            signal: signal.into(),
        };
        assert_eq!(check(&[signal("HUP")], &caps(), Path::new("/")), Ok(()));
        assert!(matches!(
            check(&[signal("SEGV")], &caps(), Path::new("/")),
            Err(Denied::SignalNotAllowed { .. })
        ));
        let mut any = caps();
        any.programs = vec!["*".into()];
        assert_eq!(check(&[restart("db")], &any, Path::new("/")), Ok(()));
    }

    #[test]
    fn files_may_be_written_only_under_writable_dirs() {
        let mut caps = caps();
        caps.writable_dirs = vec!["conf".into(), "/etc/app/".into()];
        let base = Path::new("/srv/phoenix");
        let target = |path: &str| writable_target(path, &caps, base);
        assert_eq!(
            target("conf/app.toml"),
            Some(PathBuf::from("/srv/phoenix/conf/app.toml"))
        );
        assert_eq!(
            target("/etc/app/x.conf"),
            Some(PathBuf::from("/etc/app/x.conf"))
        );
        for bad in [
            "conf/../secret",
            "../conf/x",
            "conf",
            "conf/",
            "/etc/app",
            "/etc/apparmor/x",
            "/etc/passwd",
            "",
            "conf/./x",
            "conf/a\0b",
        ] {
            assert_eq!(target(bad), None, "{bad:?} must be refused");
        }
        let write = |path: &str| Action::WriteFile {
            path: path.into(),
            content: "x".into(),
        };
        assert_eq!(check(&[write("conf/a")], &caps, base), Ok(()));
        assert!(matches!(
            check(&[write("conf/../a")], &caps, base),
            Err(Denied::PathNotAllowed { .. })
        ));
    }

    #[test]
    fn unusual_methods_are_denied() {
        let action = Action::Http {
            method: "CONNECT".into(),
            url: "http://127.0.0.1:9000/admin/x".into(),
            body: None,
            headers: BTreeMap::new(),
        };
        assert!(matches!(
            check(&[action], &caps(), Path::new("/")),
            Err(Denied::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn headers_that_frame_or_route_a_request_are_denied() {
        let with = |name: &str, value: &str| Action::Http {
            method: "POST".into(),
            url: "http://127.0.0.1:9000/admin/x".into(),
            body: Some("GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n".into()),
            headers: BTreeMap::from([(name.to_owned(), value.to_owned())]),
        };
        let denied = |name: &str, value: &str| {
            check(&[with(name, value)], &caps(), Path::new("/"))
                .unwrap_err()
                .to_string()
        };
        for name in [
            "Content-Length",
            "transfer-encoding",
            "HOST",
            "Connection",
            "Proxy-Authorization",
        ] {
            assert!(denied(name, "0").contains("frames and routes"), "{name}");
        }
        assert!(denied("X-A", "1\r\nX-Evil: 1").contains("line break"));
        assert!(denied("X A", "1").contains("not a header name"));
        assert!(denied("", "1").contains("not a header name"));
        assert_eq!(
            check(&[with("X-Request-Id", "abc\tdef")], &caps(), Path::new("/")),
            Ok(())
        );
    }

    /// Every kind of action, with every field set.
    fn one_of_each() -> Vec<Action> {
        vec![
            Action::Exec {
                arg: None,
                command: "cleanup".into(),
            },
            Action::Restart {
                program: "web".into(),
            },
            Action::Signal {
                program: "web".into(),
                signal: "HUP".into(),
            },
            Action::WriteFile {
                path: "conf/a".into(),
                content: "x = \"1\"\n".into(),
            },
            Action::Http {
                method: "PUT".into(),
                url: "http://127.0.0.1:9000/admin/x".into(),
                body: Some("{}".into()),
                headers: [("x-a".to_string(), "1".to_string())].into(),
            },
        ]
    }

    #[test]
    fn an_action_reads_back_whatever_the_order_of_its_fields() {
        for action in one_of_each() {
            let written = serde_json::to_value(&action).unwrap();
            assert_eq!(
                written["kind"],
                action.kind(),
                "kind() names it as its JSON does"
            );
            let serde_json::Value::Object(fields) = written else {
                panic!("not an object")
            };
            // As written (`kind` first), with `kind` last, in TOML, and from a value.
            let kind_first = serde_json::to_string(&action).unwrap();
            assert!(kind_first.starts_with(r#"{"kind":"#), "{kind_first}");
            let mut reordered: Vec<(&str, &serde_json::Value)> = fields
                .iter()
                .filter(|(k, _)| *k != "kind")
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            reordered.push(("kind", &fields["kind"]));
            let kind_last = format!(
                "{{{}}}",
                reordered
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            assert!(kind_last.ends_with(&format!(r#""kind":{}}}"#, fields["kind"])));
            for text in [&kind_first, &kind_last] {
                assert_eq!(
                    serde_json::from_str::<Action>(text).unwrap(),
                    action,
                    "{text}"
                );
            }
            let toml = toml::to_string(&action).unwrap();
            assert_eq!(toml::from_str::<Action>(&toml).unwrap(), action, "{toml}");
            let value = serde_json::Value::Object(fields);
            assert_eq!(serde_json::from_value::<Action>(value).unwrap(), action);
        }
        // Defaults of an HTTP call, either way round.
        for text in [
            r#"{"kind":"http","url":"http://h/"}"#,
            r#"{"url":"http://h/","kind":"http"}"#,
        ] {
            assert_eq!(
                serde_json::from_str::<Action>(text).unwrap(),
                http("http://h/")
            );
        }
    }

    #[test]
    fn a_malformed_action_is_refused_whatever_the_order_of_its_fields() {
        for (text, why) in [
            (
                r#"{"kind":"exec","command":"a","argv":[]}"#,
                "unknown field `argv`",
            ),
            (
                r#"{"argv":[],"kind":"exec","command":"a"}"#,
                "unknown field `argv`",
            ),
            (
                r#"{"kind":"exec","command":"a","command":"b"}"#,
                "duplicate field `command`",
            ),
            (
                r#"{"command":"a","command":"b","kind":"exec"}"#,
                "duplicate field `command`",
            ),
            (
                r#"{"kind":"exec","command":"a","kind":"exec"}"#,
                "unknown field `kind`",
            ),
            (
                r#"{"command":"a","kind":"exec","kind":"exec"}"#,
                "duplicate field `kind`",
            ),
            (r#"{"kind":"exec"}"#, "missing field `command`"),
            (r#"{"command":"a"}"#, "missing field `kind`"),
            (r#"{}"#, "missing field `kind`"),
            (r#"{"kind":"format_disk"}"#, "unknown variant `format_disk`"),
            (
                r#"{"command":"a","kind":"format_disk"}"#,
                "unknown variant `format_disk`",
            ),
            (r#"{"kind":7,"command":"a"}"#, "expected value"),
            (r#"{"kind":"exec","command":7}"#, "invalid type"),
            (r#"["exec","a"]"#, "invalid type"),
            (r#""exec""#, "invalid type"),
        ] {
            let error = serde_json::from_str::<Action>(text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn actions_parse_from_their_wire_form() {
        let action: Action =
            serde_json::from_str(r#"{"kind":"exec","command":"cleanup"}"#).unwrap();
        assert_eq!(
            action,
            Action::Exec {
                arg: None,
                command: "cleanup".into()
            }
        );
        let err = serde_json::from_str::<Action>(r#"{"kind":"exec","command":"x","argv":["rm"]}"#);
        assert!(
            err.is_err(),
            "a patch cannot smuggle argv into an exec action"
        );
    }
}
