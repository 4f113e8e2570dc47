;; restart-program: plans {"kind":"restart","program":"<app>"} for the fault's app.
;; App names are validated by phoenix ([A-Za-z0-9._:/-]), so they need no JSON escaping.
;; Kept in WebAssembly text as the ABI's reference: docs/patch-abi.md.
(module
  (@custom "phoenix.abi" "1") ;; the ABI version it speaks
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 4096 (pagesize 1)) ;; 4 KiB: reset by a copy alone

  (data (i32.const 0) "app")                                   ;; key, 3 bytes
  (data (i32.const 16) "{\"kind\":\"restart\",\"program\":\"")  ;; prefix, 29 bytes
  ;; The app name is read right after the prefix, at 45; the suffix `"}` follows it.

  (func (export "heal") (result i32)
    (local $len i32)
    (local.set $len (call $fault_get (i32.const 0) (i32.const 3) (i32.const 45) (i32.const 200)))
    ;; No app, or longer than the buffer: decline.
    (if (i32.or (i32.lt_s (local.get $len) (i32.const 1)) (i32.gt_s (local.get $len) (i32.const 200)))
      (then (return (i32.const 1))))
    (i32.store8 (i32.add (i32.const 45) (local.get $len)) (i32.const 34))             ;; "
    (i32.store8 (i32.add (i32.const 46) (local.get $len)) (i32.const 125))            ;; }
    (drop (call $action (i32.const 16) (i32.add (local.get $len) (i32.const 31))))
    (i32.const 0)))
