;; {{name}}: a phoenix patch in WebAssembly text, the ABI's own form (docs/patch-abi.md).
;; For a `disk_full` fault it plans the policy's `cleanup` command; anything else it declines.
;; Test it with `phoenix patch test {{dir}}`.
(module
  (@custom "phoenix.abi" "1") ;; the ABI version this module speaks
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 4096 (pagesize 1)) ;; 4 KiB: reset by a copy alone

  (data (i32.const 0) "kind")                                        ;; key, 4 bytes
  (data (i32.const 16) "disk_full")                                  ;; expected kind, 9 bytes
  (data (i32.const 32) "{\"kind\":\"exec\",\"command\":\"cleanup\"}") ;; the action, 35 bytes

  (func (export "heal") (result i32)
    ;; The kind is read to 1024; anything but exactly "disk_full" is declined.
    (if (i32.ne (call $fault_get (i32.const 0) (i32.const 4) (i32.const 1024) (i32.const 64))
                (i32.const 9))
      (then (return (i32.const 1))))
    (if (i64.ne (i64.load (i32.const 1024)) (i64.load (i32.const 16)))
      (then (return (i32.const 1))))
    (if (i32.ne (i32.load8_u (i32.const 1032)) (i32.load8_u (i32.const 24)))
      (then (return (i32.const 1))))
    (drop (call $action (i32.const 32) (i32.const 35)))
    (i32.const 0)))
