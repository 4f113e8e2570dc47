//! Puts the fault's label `text` in every string of every action kind: the contract tests
//! (patch.toml) check that phoenix reads each back exactly, whatever the text holds.
#![no_std]

use phoenix_patch::plan::{self, Method, Signal};
use phoenix_patch::{fault, Outcome, Stop};

phoenix_patch::entry!(heal);

fn heal() -> Outcome {
    let text = fault::label("text").ok_or(Stop::Declined)?;
    plan::exec(&text)?;
    plan::write_file(&text, &text)?;
    plan::restart(&text)?;
    plan::signal(&text, Signal::Term)?;
    plan::http(Method::Patch, &text)
        .header(&text, &text)
        .body(&text)
        .plan()
}
