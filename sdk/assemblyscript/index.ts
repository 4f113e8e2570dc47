// phoenix-patch: write a phoenix patch in AssemblyScript (patch ABI version 1,
// docs/patch-abi.md).
//
// A patch reads one fault and returns a plan: the actions it asks phoenix to take. phoenix
// checks the plan against the policy's capabilities and carries it out; the patch itself
// touches nothing.
//
//   import { fault, plan, log, decline, PLANNED } from "phoenix-patch";
//
//   export function heal(): i32 {
//     if (fault.kind() != "disk_full") return decline();
//     plan.exec("cleanup");
//     return PLANNED;
//   }
//
// `phoenix patch build` compiles it with the stub runtime (a run is short; its memory is
// thrown away after it) and states the ABI version in the module's `phoenix.abi` section.

@external("phoenix", "fault_get")
declare function hostFaultGet(keyPtr: usize, keyLen: usize, outPtr: usize, outCap: usize): i32;

@external("phoenix", "action")
declare function hostAction(ptr: usize, len: usize): i32;

@external("phoenix", "log")
declare function hostLog(ptr: usize, len: usize): void;

/** The patch ABI version this SDK speaks. */
export const ABI_VERSION: i32 = 1;

/** What `heal` returns when the plan is ready (it may be empty). */
export const PLANNED: i32 = 0;

/** What `heal` returns when it does not heal this fault: phoenix records `sandbox_error`
 *  (`declined: heal() returned 1`) and runs nothing. */
export const DECLINED: i32 = 1;

/** Declines the fault: `return decline();` */
export function decline(): i32 {
  return DECLINED;
}

/** Writes a line to phoenix's log (at `info`, once the run ends; the first 32 lines of a run,
 *  each cut at 1 KiB). */
export function log(line: string): void {
  const bytes = String.UTF8.encode(line);
  hostLog(changetype<usize>(bytes), <usize>bytes.byteLength);
}

// Fields are read into this buffer, large enough for the longest field phoenix sends (the
// list of 32 label names of 128 bytes each).
const SCRATCH_BYTES: i32 = 4224;
const scratch: usize = memory.data(SCRATCH_BYTES);

export namespace fault {
  /** Field `key` of the fault, or null when it has none. The keys of ABI version 1: `app`,
   *  `kind`, `message`, `severity`, `fingerprint`, `occurrences`, `source`, `attempt`,
   *  `labels`, and `labels.NAME`. */
  export function get(key: string): string | null {
    const name = String.UTF8.encode(key);
    const keyPtr = changetype<usize>(name);
    const keyLen = <usize>name.byteLength;
    const length = hostFaultGet(keyPtr, keyLen, scratch, <usize>SCRATCH_BYTES);
    if (length < 0) return null;
    if (length <= SCRATCH_BYTES) return String.UTF8.decodeUnsafe(scratch, <usize>length);
    // Longer than any field phoenix sends today: read it again, whole.
    const whole = new ArrayBuffer(length);
    hostFaultGet(keyPtr, keyLen, changetype<usize>(whole), <usize>length);
    return String.UTF8.decode(whole);
  }

  /** The application the fault is about (the program's name for a supervised exit). */
  export function app(): string {
    const value = get("app");
    return value === null ? "" : value;
  }

  /** What went wrong, e.g. `disk_full`, `exited`, an alert's name. */
  export function kind(): string {
    const value = get("kind");
    return value === null ? "" : value;
  }

  /** The reporter's message, or null. */
  export function message(): string | null {
    return get("message");
  }

  /** The value of label `name`, or null when the fault has no such label. */
  export function label(name: string): string | null {
    return get("labels." + name);
  }

  /** The names of the fault's labels, sorted. */
  export function labels(): string[] {
    const list = get("labels");
    if (list === null || list.length == 0) return [];
    return list.split("\n");
  }

  /** The attempt being planned: 1 for the first. */
  export function attempt(): i32 {
    const value = get("attempt");
    return value === null ? 1 : I32.parseInt(value);
  }

  /** How many times the fault was reported. */
  export function occurrences(): u64 {
    const value = get("occurrences");
    return value === null ? 1 : U64.parseInt(value);
  }

  /** The fault's fingerprint (blake3 of app, kind and labels, in hex). */
  export function fingerprint(): string {
    const value = get("fingerprint");
    return value === null ? "" : value;
  }

  /** `info`, `warning`, `error` or `critical`. */
  export function severity(): string {
    const value = get("severity");
    return value === null ? "error" : value;
  }

  /** Where the fault came from: `api`, `alertmanager`, `probe`, `log` or `supervisor`. Only
   *  phoenix sets it. */
  export function source(): string {
    const value = get("source");
    return value === null ? "" : value;
  }
}

/** A JSON string literal of `text` (quotes included), escaped as RFC 8259 says: quotes,
 *  backslashes and control characters; a lone surrogate (not valid Unicode) as U+FFFD. */
export function jsonString(text: string): string {
  let out = "\"";
  let clean = 0; // start of the run of characters that need no escape
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    let escape: string | null = null;
    if (c == 0x22) escape = "\\\"";
    else if (c == 0x5c) escape = "\\\\";
    else if (c == 0x0a) escape = "\\n";
    else if (c == 0x0d) escape = "\\r";
    else if (c == 0x09) escape = "\\t";
    else if (c == 0x08) escape = "\\b";
    else if (c == 0x0c) escape = "\\f";
    else if (c < 0x20) escape = "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    else if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++; // a whole pair: kept as it is
        continue;
      }
      escape = "\\ufffd";
    } else if (c >= 0xdc00 && c <= 0xdfff) escape = "\\ufffd";
    if (escape === null) continue;
    out += text.substring(clean, i) + escape;
    clean = i + 1;
  }
  return out + text.substring(clean) + "\"";
}

function field(name: string, value: string): string {
  return "\"" + name + "\":" + jsonString(value);
}

function append(json: string): void {
  const bytes = String.UTF8.encode(json);
  hostAction(changetype<usize>(bytes), <usize>bytes.byteLength);
}

/** The signals phoenix sends to a supervised program's process group. */
export namespace Signal {
  export const HUP = "HUP";
  export const INT = "INT";
  export const QUIT = "QUIT";
  export const USR1 = "USR1";
  export const USR2 = "USR2";
  export const TERM = "TERM";
  export const KILL = "KILL";
  export const CONT = "CONT";
}

/** An HTTP action being described (see `plan.http`); `plan()` appends it. */
export class Http {
  private names: string[] = [];
  private values: string[] = [];
  private text: string | null = null;

  constructor(private method: string, private url: string) {}

  /** The request's body (sent as UTF-8). */
  body(text: string): Http {
    this.text = text;
    return this;
  }

  /** A request header. phoenix refuses headers that frame or route the request
   *  (`Content-Length`, `Host`, `Transfer-Encoding`, …) and line breaks in names or values. */
  header(name: string, value: string): Http {
    this.names.push(name);
    this.values.push(value);
    return this;
  }

  /** Appends the request to the plan. */
  plan(): void {
    let json = "{\"kind\":\"http\"," + field("method", this.method) + "," + field("url", this.url);
    const body = this.text;
    if (body !== null) json += "," + field("body", body);
    if (this.names.length > 0) {
      json += ",\"headers\":{";
      for (let i = 0; i < this.names.length; i++) {
        if (i > 0) json += ",";
        json += jsonString(this.names[i]) + ":" + jsonString(this.values[i]);
      }
      json += "}";
    }
    append(json + "}");
  }
}

/** The plan: each function appends one action. phoenix checks every action against the
 *  policy before anything runs; an action it cannot parse or one past the plan limits ends
 *  the run. */
export namespace plan {
  /** Runs the policy's command `command`, whose argv the policy fixes. */
  export function exec(command: string): void {
    append("{\"kind\":\"exec\"," + field("command", command) + "}");
  }

  /** Replaces the file at `path` (under one of the policy's `writable_dirs`) with `content`,
   *  atomically; phoenix keeps the old content to roll back. */
  export function writeFile(path: string, content: string): void {
    append("{\"kind\":\"write_file\"," + field("path", path) + "," + field("content", content) + "}");
  }

  /** Restarts the supervised program `program`. */
  export function restart(program: string): void {
    append("{\"kind\":\"restart\"," + field("program", program) + "}");
  }

  /** Sends `signal` (one of `Signal`) to the supervised program `program`. */
  export function signal(program: string, signal: string): void {
    append("{\"kind\":\"signal\"," + field("program", program) + "," + field("signal", signal) + "}");
  }

  /** An HTTP request (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`) to a URL under one of the
   *  policy's `http_prefixes`: `plan.http("POST", url).body("{}").plan()`. */
  export function http(method: string, url: string): Http {
    return new Http(method, url);
  }
}
