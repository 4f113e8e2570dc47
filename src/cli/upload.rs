//! `phoenix patches add DIR`: a patch directory uploaded to the daemon (`POST /v1/patches`),
//! the module as its binary when there is one, and the daemon's checks and tests printed.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::cli::client::{Client, Failure, text};

/// Uploads the patch in `dir`: its manifest and its module (the binary when there is one).
pub(crate) async fn upload(
    client: &Client,
    dir: &std::path::Path,
) -> Result<(Value, String), Failure> {
    use base64::Engine as _;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| (path, e))
    };
    let local = |(path, error): (std::path::PathBuf, std::io::Error)| {
        Failure::Local(format!("cannot read {}: {error}", path.display()))
    };
    let manifest = String::from_utf8_lossy(&read("patch.toml").map_err(local)?).into_owned();
    let body = match (read("patch.wasm"), read("patch.wat")) {
        (Ok(wasm), _) => json!({
            "manifest": manifest,
            "wasm_base64": base64::engine::general_purpose::STANDARD.encode(wasm),
        }),
        (Err(_), Ok(wat)) => json!({ "manifest": manifest, "wat": String::from_utf8_lossy(&wat) }),
        (Err(_), Err(_)) => {
            return Err(Failure::Local(format!(
                "{}: no patch.wasm or patch.wat (an SDK patch: `phoenix patch build {}` first)",
                dir.display(),
                dir.display()
            )));
        }
    };
    let answer = client.post("/v1/patches", body).await?;
    let patch = &answer["patch"];
    let mut out = format!(
        "uploaded {}@{} ({}): {}, {}\n",
        text(&patch["name"]),
        text(&patch["version"]),
        text(&patch["hash"]),
        if answer["usable"] == true {
            "usable"
        } else {
            "NOT usable"
        },
        if answer["active"] == true {
            "active (its first use waits for approval)"
        } else {
            "not active"
        }
    );
    for problem in patch["check_problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  static check: {}", text(problem));
    }
    for test in patch["tests"].as_array().into_iter().flatten() {
        let mark = if test["passed"] == true {
            "ok  "
        } else {
            "FAIL"
        };
        let _ = writeln!(out, "  {mark} {}", text(&test["name"]));
    }
    Ok((answer, out))
}
