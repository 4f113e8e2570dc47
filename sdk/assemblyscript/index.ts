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

// Static buffers, so that the common case allocates nothing: a run's memory is thrown away
// after it, but every page it dirties is reset, and every allocation costs instructions.
// Fields are read into `scratch`, large enough for the longest field phoenix sends (the list
// of 32 label names of 128 bytes each); keys and log lines are encoded into `text`; actions
// are written into `action` (phoenix's default max_action_bytes) unless they outgrow it.
const SCRATCH_BYTES: i32 = 4224;
const scratch: usize = memory.data(SCRATCH_BYTES);
const TEXT_BYTES: i32 = 1024;
const text: usize = memory.data(TEXT_BYTES);
const ACTION_BYTES: i32 = 8192;
const action: usize = memory.data(ACTION_BYTES);

/** `value` as UTF-8 in the static `text` buffer when it fits, else in a new one; calls
 *  `use(pointer, length)`. */
function withUtf8(value: string, use: (ptr: usize, len: usize) => void): void {
  const length = String.UTF8.byteLength(value);
  if (length <= TEXT_BYTES) {
    String.UTF8.encodeUnsafe(changetype<usize>(value), value.length, text);
    use(text, <usize>length);
  } else {
    const bytes = String.UTF8.encode(value);
    use(changetype<usize>(bytes), <usize>bytes.byteLength);
  }
}

/** Writes a line to phoenix's log (at `info`, once the run ends; the first 32 lines of a run,
 *  each cut at 1 KiB). */
export function log(line: string): void {
  withUtf8(line, (ptr: usize, len: usize): void => hostLog(ptr, len));
}

export namespace fault {
  /** Field `key` of the fault, or null when it has none. The keys of ABI version 1: `app`,
   *  `kind`, `message`, `severity`, `fingerprint`, `occurrences`, `source`, `attempt`,
   *  `labels`, and `labels.NAME`. */
  export function get(key: string): string | null {
    withUtf8(key, (ptr: usize, len: usize): void => {
      read = hostFaultGet(ptr, len, scratch, <usize>SCRATCH_BYTES);
      if (read > SCRATCH_BYTES) {
        // Longer than any field phoenix sends today: read it again, whole.
        whole = new ArrayBuffer(read);
        hostFaultGet(ptr, len, changetype<usize>(whole), <usize>read);
      }
    });
    if (read < 0) return null;
    if (read <= SCRATCH_BYTES) return String.UTF8.decodeUnsafe(scratch, <usize>read);
    return String.UTF8.decode(whole);
  }

  // What `get`'s reader left (closures here may not capture locals).
  let read: i32 = 0;
  let whole = new ArrayBuffer(0);

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

  /** Where the fault came from: `api`, `alertmanager`, `probe`, `log`, `supervisor` or
   *  `systemd`. Only phoenix sets it. */
  export function source(): string {
    const value = get("source");
    return value === null ? "" : value;
  }
}

/** An action being written: UTF-8 bytes in the static `action` buffer, moved to one twice as
 *  large whenever it is full (so a long text costs memory in proportion to its length: the
 *  stub runtime never frees). */
class Json {
  private start: usize = action;
  private capacity: i32 = ACTION_BYTES;
  private length: i32 = 0;

  private byte(b: i32): void {
    if (this.length == this.capacity) {
      const larger = changetype<usize>(new ArrayBuffer(this.capacity * 2));
      memory.copy(larger, this.start, <usize>this.length);
      this.start = larger;
      this.capacity *= 2;
    }
    store<u8>(this.start + <usize>this.length, <u8>b);
    this.length++;
  }

  /** Appends `text`, which is JSON already and ASCII. */
  raw(text: string): Json {
    for (let i = 0; i < text.length; i++) this.byte(text.charCodeAt(i));
    return this;
  }

  /** Appends `text` as a JSON string, quotes included, escaped as RFC 8259 says: quotes,
   *  backslashes and control characters; a lone surrogate (not Unicode) as U+FFFD. */
  string(text: string): Json {
    this.byte(0x22);
    for (let i = 0; i < text.length; i++) {
      let c = text.charCodeAt(i);
      if (c == 0x22) this.raw("\\\"");
      else if (c == 0x5c) this.raw("\\\\");
      else if (c == 0x0a) this.raw("\\n");
      else if (c == 0x0d) this.raw("\\r");
      else if (c == 0x09) this.raw("\\t");
      else if (c == 0x08) this.raw("\\b");
      else if (c == 0x0c) this.raw("\\f");
      else if (c < 0x20) this.raw("\\u00" + (c < 0x10 ? "0" : "") + c.toString(16));
      else if (c < 0x80) this.byte(c);
      else if (c < 0x800) {
        this.byte(0xc0 | (c >> 6));
        this.byte(0x80 | (c & 0x3f));
      } else if (c >= 0xd800 && c <= 0xdfff) {
        const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
          const point = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
          this.byte(0xf0 | (point >> 18));
          this.byte(0x80 | ((point >> 12) & 0x3f));
          this.byte(0x80 | ((point >> 6) & 0x3f));
          this.byte(0x80 | (point & 0x3f));
          i++;
        } else {
          this.raw("\\ufffd");
        }
      } else {
        this.byte(0xe0 | (c >> 12));
        this.byte(0x80 | ((c >> 6) & 0x3f));
        this.byte(0x80 | (c & 0x3f));
      }
    }
    this.byte(0x22);
    return this;
  }

  /** `"name":` and `value` as a string. */
  field(name: string, value: string): Json {
    return this.raw("\"" + name + "\":").string(value);
  }

  /** Appends the action to the plan. */
  plan(): void {
    hostAction(this.start, <usize>this.length);
  }
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
    const json = new Json()
      .raw("{\"kind\":\"http\",")
      .field("method", this.method)
      .raw(",")
      .field("url", this.url);
    const body = this.text;
    if (body !== null) json.raw(",").field("body", body);
    if (this.names.length > 0) {
      json.raw(",\"headers\":{");
      for (let i = 0; i < this.names.length; i++) {
        if (i > 0) json.raw(",");
        json.string(this.names[i]).raw(":").string(this.values[i]);
      }
      json.raw("}");
    }
    json.raw("}").plan();
  }
}

/** The plan: each function appends one action. phoenix checks every action against the
 *  policy before anything runs; an action it cannot parse or one past the plan limits ends
 *  the run. */
export namespace plan {
  /** Runs the policy's command `command`, whose argv the policy fixes. */
  export function exec(command: string): void {
    new Json().raw("{\"kind\":\"exec\",").field("command", command).raw("}").plan();
  }

  /** Runs the policy's command `command` with `arg` in its argv's `{arg}` element; phoenix
   *  refuses the plan unless `arg` is one of the command's `args` in the policy. */
  export function execWith(command: string, arg: string): void {
    new Json()
      .raw("{\"kind\":\"exec\",")
      .field("command", command)
      .raw(",")
      .field("arg", arg)
      .raw("}")
      .plan();
  }

  /** Replaces the file at `path` (under one of the policy's `writable_dirs`) with `content`,
   *  atomically; phoenix keeps the old content to roll back. */
  export function writeFile(path: string, content: string): void {
    new Json()
      .raw("{\"kind\":\"write_file\",")
      .field("path", path)
      .raw(",")
      .field("content", content)
      .raw("}")
      .plan();
  }

  /** Restarts the supervised program `program`. */
  export function restart(program: string): void {
    new Json().raw("{\"kind\":\"restart\",").field("program", program).raw("}").plan();
  }

  /** Sends `signal` (one of `Signal`) to the supervised program `program`. */
  export function signal(program: string, signal: string): void {
    new Json()
      .raw("{\"kind\":\"signal\",")
      .field("program", program)
      .raw(",")
      .field("signal", signal)
      .raw("}")
      .plan();
  }

  /** An HTTP request (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`) to a URL under one of the
   *  policy's `http_prefixes`: `plan.http("POST", url).body("{}").plan()`. */
  export function http(method: string, url: string): Http {
    return new Http(method, url);
  }
}
