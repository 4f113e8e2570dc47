//! The client commands of the `phoenix` binary: they talk to a running daemon over its HTTP API
//! (reqwest) and print tables, or the API's JSON with `--json`.
//!
//! Exit codes, for scripts: 0 success; 1 the daemon refused (4xx/5xx, its `code` and `message`
//! printed); 69 the daemon could not be reached; 2 bad command-line usage (clap).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use phoenix::core::escape::escaped;
use serde_json::{Value, json};

/// Exit status when the daemon cannot be reached (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// Where the daemon is and who we are.
#[derive(Debug, Args)]
pub struct Connection {
    /// The daemon's address.
    #[arg(
        long,
        env = "PHOENIX_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    addr: String,
    /// A bearer token (its secret). Prefer --token-file: a command line is visible to every
    /// user of the machine.
    #[arg(long, env = "PHOENIX_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the bearer token, e.g. a systemd credential (`--token-file
    /// %d/phoenix-token` in a unit with `LoadCredential=phoenix-token:…`).
    #[arg(
        long,
        env = "PHOENIX_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Is the daemon ready? Policies, patches, problems.
    Status,
    /// Faults: list, show.
    #[command(subcommand)]
    Faults(FaultsCommand),
    /// Report a fault.
    Report {
        #[arg(long)]
        app: String,
        #[arg(long)]
        kind: String,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        message: Option<String>,
        /// info, warning, error or critical.
        #[arg(long)]
        severity: Option<String>,
    },
    /// Approval requests: list, approve, reject.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Patches: list, show, rollback.
    #[command(subcommand)]
    Patches(PatchesCommand),
    /// Circuit breakers: list, reset, trip.
    #[command(subcommand)]
    Breakers(BreakersCommand),
    /// The fleet: status.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Save a consistent snapshot of the running daemon's store to a file (admin).
    Backup {
        /// Where to write it (written to a temporary file, then renamed).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// The audit log (admin).
    Audit {
        /// Only entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum FaultsCommand {
    /// Faults, oldest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One fault with its history.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Plans waiting for a decision, newest first.
    List,
    /// Approve a fault's plan.
    Approve {
        fault_id: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who decides (ignored when the daemon has authentication on: the token decides).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Reject a fault's plan.
    Reject {
        fault_id: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PatchesCommand {
    /// Patch names with their active versions.
    List,
    /// Upload a patch directory (patch.toml with patch.wasm or patch.wat): it is checked and
    /// tested at once, and its first use waits for a person's approval.
    Add {
        /// The patch directory (build an SDK patch first: `phoenix patch build DIR`).
        dir: std::path::PathBuf,
    },
    /// Every version of a patch.
    Show { name: String },
    /// Make an earlier version active.
    Rollback {
        name: String,
        /// The version's hash.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// This host in the fleet, the hosts seen lately, and every lease held.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum BreakersCommand {
    /// Every breaker and its position.
    List,
    /// Close a breaker and forget its outcomes.
    Reset {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Open a breaker by hand.
    Trip {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

/// Why a client command failed.
pub(crate) enum Failure {
    /// The daemon answered with an error.
    Refused(u16, String),
    /// The daemon could not be reached.
    Unreachable(String),
    /// Nothing was sent: a local file could not be read or written.
    Local(String),
}

/// The token in `path`: its one line, surrounding whitespace trimmed.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file `{shown}`: {e}"))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!("the token file `{shown}` must hold one token"));
    }
    Ok(token.to_owned())
}

pub(crate) struct Client {
    http: reqwest::Client,
    connection: Connection,
}

impl Client {
    /// Sends one request; returns the status and the body as text, whatever the status.
    async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String), Failure> {
        let url = format!("{}{path}", self.connection.addr.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.connection.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        Ok((status, text))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let (status, text) = self.exchange(method, path, body).await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = match (&value["code"], &value["message"]) {
                (Value::String(code), Value::String(message)) => format!("{code}: {message}"),
                _ => value.to_string(),
            };
            return Err(Failure::Refused(status, message));
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Runs one client command against the daemon.
pub fn run(mut connection: Connection, command: ClientCommand) -> ExitCode {
    let json = connection.json;
    if let Some(path) = connection.token_file.take() {
        match read_token(&path) {
            Ok(token) => connection.token = Some(token),
            Err(error) => {
                eprintln!("phoenix: {error}");
                return ExitCode::from(phoenix::daemon::EXIT_USAGE);
            }
        }
    }
    let http = match phoenix::effects::http_client() {
        Ok(http) => http,
        Err(error) => {
            eprintln!("phoenix: {error}");
            return ExitCode::FAILURE;
        }
    };
    let client = Client { http, connection };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("phoenix: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(&client, command)) {
        Ok((value, table)) => {
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                crate::cli::write_out(format_args!("{table}"));
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(status, message)) => {
            eprintln!(
                "phoenix: the daemon answered {status}: {}",
                escaped(&message)
            );
            ExitCode::FAILURE
        }
        Err(Failure::Unreachable(message)) => {
            eprintln!("phoenix: cannot reach the daemon: {}", escaped(&message));
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(Failure::Local(message)) => {
            eprintln!("phoenix: {}", escaped(&message));
            ExitCode::from(phoenix::daemon::EXIT_USAGE)
        }
    }
}

/// A value as a person reads it in a table or a `show` view: by the log's escaping rule, so
/// text from outside (a reporter's label, an approver's comment) cannot act on the terminal.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => escaped(s),
        Value::Null => "-".into(),
        other => escaped(&other.to_string()),
    }
}

/// A plain aligned table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    };
    line(&mut out, headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(&mut out, row);
    }
    out
}

fn rows(value: &Value, key: &str, columns: &[&str]) -> Vec<Vec<String>> {
    value[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|c| text(item.pointer(c).unwrap_or(&Value::Null)))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// GETs `path` and shows the array under `key` as a table of `columns` (header, JSON pointer).
async fn listing(
    client: &Client,
    path: &str,
    key: &str,
    columns: &[(&str, &str)],
) -> Result<(Value, String), Failure> {
    let value = client.get(path).await?;
    let headers: Vec<&str> = columns.iter().map(|(header, _)| *header).collect();
    let pointers: Vec<&str> = columns.iter().map(|(_, pointer)| *pointer).collect();
    let out = table(&headers, rows(&value, key, &pointers));
    Ok((value, out))
}

/// Approves or rejects (`verb`) a fault's plan.
async fn decide(
    client: &Client,
    fault_id: &str,
    verb: &str,
    by: String,
    comment: String,
) -> Result<(Value, String), Failure> {
    let path = format!("/v1/approvals/{fault_id}/{verb}");
    let answer = client
        .post(&path, json!({ "by": by, "comment": comment }))
        .await?;
    let done = if verb == "approve" {
        "approved"
    } else {
        "rejected"
    };
    Ok((answer, format!("{done} {fault_id}\n")))
}

async fn execute(client: &Client, command: ClientCommand) -> Result<(Value, String), Failure> {
    Ok(match command {
        ClientCommand::Status => {
            let ready = client.get("/readyz").await?;
            let mut out = format!(
                "{}: {} policies, {} patches, {} reloads\n",
                text(&ready["status"]),
                text(&ready["policies"]),
                text(&ready["patches"]),
                text(&ready["reloads"])
            );
            for problem in ready["problems"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "problem: {}", text(problem));
            }
            (ready, out)
        }
        ClientCommand::Faults(FaultsCommand::List { state, app, limit }) => {
            let mut path = format!("/v1/faults?limit={limit}");
            if let Some(state) = state {
                path.push_str(&format!("&state={state}"));
            }
            if let Some(app) = app {
                path.push_str(&format!("&app={app}"));
            }
            let columns = [
                ("ID", "/id"),
                ("STATE", "/state"),
                ("REASON", "/reason"),
                ("APP", "/app"),
                ("KIND", "/kind"),
                ("COUNT", "/occurrences"),
                ("LAST SEEN", "/last_seen"),
            ];
            listing(client, &path, "faults", &columns).await?
        }
        ClientCommand::Faults(FaultsCommand::Show { id }) => {
            let fault = client.get(&format!("/v1/faults/{id}")).await?;
            let mut out = format!(
                "{}  {} {}  state {}{}  occurrences {}\n",
                text(&fault["id"]),
                text(&fault["app"]),
                text(&fault["kind"]),
                text(&fault["state"]),
                fault["reason"]
                    .as_str()
                    .map(|r| format!(" ({})", escaped(r)))
                    .unwrap_or_default(),
                text(&fault["occurrences"])
            );
            out.push_str(&table(
                &["SEQ", "AT", "STATE", "DETAIL"],
                rows(&fault, "history", &["/seq", "/at", "/state", "/detail"]),
            ));
            (fault, out)
        }
        ClientCommand::Report {
            app,
            kind,
            labels,
            message,
            severity,
        } => {
            let mut body = json!({ "app": app, "kind": kind, "labels": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>() });
            if let Some(message) = message {
                body["message"] = message.into();
            }
            if let Some(severity) = severity {
                body["severity"] = severity.into();
            }
            let fault = client.post("/v1/faults", body).await?;
            let out = format!(
                "{} {} (occurrences {})\n",
                text(&fault["id"]),
                text(&fault["state"]),
                text(&fault["occurrences"])
            );
            (fault, out)
        }
        ClientCommand::Approvals(ApprovalsCommand::List) => {
            let columns = [
                ("FAULT", "/fault_id"),
                ("APP", "/app"),
                ("KIND", "/kind"),
                ("PATCH", "/patch/name"),
                ("VERSION", "/patch/version"),
                ("EXPIRES", "/expires_at"),
                ("WHY", "/reason"),
            ];
            listing(client, "/v1/approvals", "approvals", &columns).await?
        }
        ClientCommand::Approvals(ApprovalsCommand::Approve {
            fault_id,
            comment,
            by,
        }) => decide(client, &fault_id, "approve", by, comment).await?,
        ClientCommand::Approvals(ApprovalsCommand::Reject {
            fault_id,
            comment,
            by,
        }) => decide(client, &fault_id, "reject", by, comment).await?,
        ClientCommand::Patches(PatchesCommand::List) => {
            let columns = [
                ("NAME", "/name"),
                ("ACTIVE", "/active/version"),
                ("HASH", "/active/hash"),
                ("SOURCE", "/active/source"),
                ("USABLE", "/active/usable"),
            ];
            listing(client, "/v1/patches", "patches", &columns).await?
        }
        ClientCommand::Patches(PatchesCommand::Add { dir }) => {
            crate::cli::upload::upload(client, &dir).await?
        }
        ClientCommand::Patches(PatchesCommand::Show { name }) => {
            let columns = [
                ("VERSION", "/version"),
                ("HASH", "/hash"),
                ("SOURCE", "/source"),
                ("LANGUAGE", "/built_from/language"),
                ("REGISTERED", "/registered_at"),
                ("USABLE", "/usable"),
                ("ACTIVE", "/active"),
            ];
            listing(client, &format!("/v1/patches/{name}"), "versions", &columns).await?
        }
        ClientCommand::Patches(PatchesCommand::Rollback {
            name,
            to,
            reason,
            by,
        }) => {
            let answer = client
                .post(
                    &format!("/v1/patches/{name}/rollback"),
                    json!({ "to": to, "by": by, "reason": reason }),
                )
                .await?;
            let out = format!("{name} is now at {}\n", text(&answer["patch"]["version"]));
            (answer, out)
        }
        ClientCommand::Fleet(FleetCommand::Status) => {
            let status = client.get("/v1/fleet").await?;
            let mut out = format!(
                "host {} ({})\n",
                text(&status["host"]),
                if status["connected"] == true {
                    "connected to NATS"
                } else {
                    "NOT connected to NATS"
                }
            );
            if let Some(problem) = status["problem"].as_str() {
                let _ = writeln!(out, "problem: {}", escaped(problem));
            }
            out.push('\n');
            out.push_str(&table(
                &["HOST", "VERSION", "SEEN"],
                rows(
                    &status,
                    "hosts",
                    &["/value/host", "/value/version", "/value/at"],
                ),
            ));
            out.push('\n');
            out.push_str(&table(
                &["LEASE", "BUDGET", "HOST", "FAULT", "REVISION"],
                rows(
                    &status,
                    "leases",
                    &[
                        "/key",
                        "/value/budget",
                        "/value/host",
                        "/value/fault",
                        "/revision",
                    ],
                ),
            ));
            (status, out)
        }
        ClientCommand::Breakers(BreakersCommand::List) => {
            let columns = [
                ("NAME", "/name"),
                ("POSITION", "/position"),
                ("OPENED", "/opened_at"),
            ];
            listing(client, "/v1/breakers", "breakers", &columns).await?
        }
        ClientCommand::Breakers(BreakersCommand::Reset { name, reason, by }) => {
            let answer = client
                .post(
                    &format!("/v1/breakers/{name}/reset"),
                    json!({ "by": by, "reason": reason }),
                )
                .await?;
            (answer, format!("{name} reset\n"))
        }
        ClientCommand::Breakers(BreakersCommand::Trip { name, reason, by }) => {
            let answer = client
                .post(
                    &format!("/v1/breakers/{name}/trip"),
                    json!({ "by": by, "reason": reason }),
                )
                .await?;
            (answer, format!("{name} tripped\n"))
        }
        ClientCommand::Backup { out } => {
            // JSON lines, not one JSON document: kept as text.
            let (status, text) = client
                .exchange(reqwest::Method::GET, "/v1/backup", None)
                .await?;
            if status >= 400 {
                return Err(Failure::Refused(status, text));
            }
            let entries = text.lines().count().saturating_sub(1);
            let temp = out.with_extension("partial");
            std::fs::write(&temp, &text)
                .and_then(|()| std::fs::rename(&temp, &out))
                .map_err(|e| Failure::Local(format!("cannot write {}: {e}", out.display())))?;
            let summary = json!({ "file": out.display().to_string(), "entries": entries, "bytes": text.len() });
            (
                summary,
                format!(
                    "wrote {entries} entries ({} bytes) to {}\n",
                    text.len(),
                    out.display()
                ),
            )
        }
        ClientCommand::Audit { after, limit } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let columns = [
                ("SEQ", "/seq"),
                ("AT", "/at"),
                ("ACTOR", "/actor"),
                ("ACTION", "/action"),
                ("TARGET", "/target"),
                ("DETAIL", "/detail"),
            ];
            listing(client, &path, "entries", &columns).await?
        }
    })
}
