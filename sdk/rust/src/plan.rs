//! The plan: each function appends one action, written as JSON phoenix reads (strings escaped
//! as RFC 8259 says). phoenix checks every action against the policy before anything runs:
//! a command the policy does not declare, a path outside its writable directories, a URL
//! outside its prefixes or a program it does not cover denies the whole plan.

use crate::json::action;
use crate::Outcome;

/// The largest action the SDK writes: phoenix's default `max_action_bytes` (8 KiB). A larger
/// one stops the patch with [`crate::Stop::ActionTooLarge`].
pub const MAX_ACTION_BYTES: usize = 8 << 10;

/// The most headers one HTTP action may carry here.
pub const MAX_HEADERS: usize = 16;

/// Runs the policy's command `command` (`[capabilities.commands.NAME]`), whose argv the policy
/// fixes.
pub fn exec(command: &str) -> Outcome {
    action(|json| {
        json.raw(b"{\"kind\":\"exec\",")
            .field("command", command)
            .raw(b"}");
    })
}

/// Runs the policy's command `command` with `arg` in its argv's `{arg}` element; phoenix refuses
/// the plan unless `arg` is one of the command's `args` in the policy.
pub fn exec_with(command: &str, arg: &str) -> Outcome {
    action(|json| {
        json.raw(b"{\"kind\":\"exec\",")
            .field("command", command)
            .raw(b",")
            .field("arg", arg)
            .raw(b"}");
    })
}

/// Replaces the file at `path` (under one of the policy's `writable_dirs`) with `content`,
/// atomically; phoenix keeps the old content to roll back.
pub fn write_file(path: &str, content: &str) -> Outcome {
    action(|json| {
        json.raw(b"{\"kind\":\"write_file\",")
            .field("path", path)
            .raw(b",")
            .field("content", content)
            .raw(b"}");
    })
}

/// Restarts the supervised program `program` (the policy's `capabilities.programs` must cover
/// it).
pub fn restart(program: &str) -> Outcome {
    action(|json| {
        json.raw(b"{\"kind\":\"restart\",")
            .field("program", program)
            .raw(b"}");
    })
}

/// The signals phoenix sends to a supervised program's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Usr1,
    Usr2,
    Term,
    Kill,
    Cont,
}

impl Signal {
    /// Its name, as in the action (`HUP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Cont => "CONT",
        }
    }
}

/// Sends `signal` to the supervised program `program`'s process group.
pub fn signal(program: &str, signal: Signal) -> Outcome {
    action(|json| {
        json.raw(b"{\"kind\":\"signal\",")
            .field("program", program)
            .raw(b",")
            .field("signal", signal.as_str())
            .raw(b"}");
    })
}

/// HTTP methods phoenix sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// Its name, as in the action (`POST`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// An HTTP request to plan, to a URL under one of the policy's `http_prefixes`:
/// `plan::http(Method::Post, "http://127.0.0.1:8080/admin/flush").body("{}").plan()`.
pub fn http(method: Method, url: &str) -> Http<'_> {
    Http {
        method,
        url,
        body: None,
        headers: [("", ""); MAX_HEADERS],
        header_count: 0,
        too_many_headers: false,
    }
}

/// An HTTP action being described (see [`http`]); [`Http::plan`] appends it.
#[must_use = "an HTTP action joins the plan only when `.plan()` is called"]
pub struct Http<'a> {
    method: Method,
    url: &'a str,
    body: Option<&'a str>,
    headers: [(&'a str, &'a str); MAX_HEADERS],
    header_count: usize,
    too_many_headers: bool,
}

impl<'a> Http<'a> {
    /// The request's body (UTF-8).
    pub fn body(mut self, body: &'a str) -> Self {
        self.body = Some(body);
        self
    }

    /// A request header. phoenix refuses headers that frame or route the request
    /// (`Content-Length`, `Host`, `Transfer-Encoding`, …) and line breaks in names or values.
    /// A name given twice keeps its last value.
    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        match self.headers.get_mut(self.header_count) {
            Some(slot) => {
                *slot = (name, value);
                self.header_count += 1;
            }
            None => self.too_many_headers = true,
        }
        self
    }

    /// Appends the request to the plan.
    pub fn plan(self) -> Outcome {
        if self.too_many_headers {
            return Err(crate::Stop::TooManyHeaders);
        }
        action(|json| {
            json.raw(b"{\"kind\":\"http\",")
                .field("method", self.method.as_str())
                .raw(b",")
                .field("url", self.url);
            if let Some(body) = self.body {
                json.raw(b",").field("body", body);
            }
            if self.header_count > 0 {
                json.raw(b",\"headers\":{");
                for (index, (name, value)) in self.headers[..self.header_count].iter().enumerate() {
                    if index > 0 {
                        json.raw(b",");
                    }
                    json.string(name).raw(b":").string(value);
                }
                json.raw(b"}");
            }
            json.raw(b"}");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run;
    use crate::Stop;
    use std::format;

    /// Quotes, backslashes, every kind of control character, and non-ASCII.
    const NASTY: &str = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h é日🔥 </script>";
    const NASTY_JSON: &str = r#""a\"b\\c\nd\re\tf\u0001g\u001fh é日🔥 </script>""#;

    fn planned(heal: impl FnOnce() -> Outcome) -> std::vec::Vec<std::string::String> {
        let run = run(&[], heal);
        assert_eq!(run.status, 0, "{run:?}");
        run.actions
    }

    #[test]
    fn every_builder_writes_escaped_json() {
        assert_eq!(
            planned(|| exec(NASTY)),
            [format!(r#"{{"kind":"exec","command":{NASTY_JSON}}}"#)]
        );
        assert_eq!(
            planned(|| exec_with(NASTY, NASTY)),
            [format!(
                r#"{{"kind":"exec","command":{NASTY_JSON},"arg":{NASTY_JSON}}}"#
            )]
        );
        assert_eq!(
            planned(|| write_file(NASTY, NASTY)),
            [format!(
                r#"{{"kind":"write_file","path":{NASTY_JSON},"content":{NASTY_JSON}}}"#
            )]
        );
        assert_eq!(
            planned(|| restart(NASTY)),
            [format!(r#"{{"kind":"restart","program":{NASTY_JSON}}}"#)]
        );
        assert_eq!(
            planned(|| signal(NASTY, Signal::Usr1)),
            [format!(
                r#"{{"kind":"signal","program":{NASTY_JSON},"signal":"USR1"}}"#
            )]
        );
        assert_eq!(
            planned(|| http(Method::Put, NASTY)
                .header(NASTY, NASTY)
                .header("x-b", "2")
                .body(NASTY)
                .plan()),
            [format!(
                r#"{{"kind":"http","method":"PUT","url":{NASTY_JSON},"body":{NASTY_JSON},"headers":{{{NASTY_JSON}:{NASTY_JSON},"x-b":"2"}}}}"#
            )]
        );
        assert_eq!(
            planned(|| http(Method::Get, "http://h/").plan()),
            [r#"{"kind":"http","method":"GET","url":"http://h/"}"#]
        );
    }

    #[test]
    fn actions_join_the_plan_in_order() {
        let actions = planned(|| {
            exec("a")?;
            restart("b")?;
            signal("b", Signal::Hup)
        });
        assert_eq!(actions.len(), 3);
        assert!(actions[1].contains("restart"));
    }

    #[test]
    fn what_phoenix_would_refuse_stops_the_patch_instead() {
        let big = "x".repeat(MAX_ACTION_BYTES);
        let too_large = run(&[], || write_file("/p", &big));
        assert_eq!((too_large.status, too_large.actions.len()), (2, 0));
        let mut request = http(Method::Post, "http://h/");
        for _ in 0..=MAX_HEADERS {
            request = request.header("x", "y");
        }
        assert_eq!(request.plan(), Err(Stop::TooManyHeaders));
        assert_eq!(run(&[], crate::decline).status, 1);
    }
}
