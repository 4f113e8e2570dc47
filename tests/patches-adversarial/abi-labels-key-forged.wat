;; The list of label names is read as any field is: a module asking for `labels` and then for
;; `labels.` plus a forged name (with a NUL, `..`, a newline) gets nothing it was not given.
;; Reading them traps if anything came back; then it plans a command its policy does not
;; declare, which is denied like any other (so the fault ends in the denial, not the trap).
;; expect: capability_denied undeclared
(module
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "labels")
  (data (i32.const 16) "labels.\00..\nx")
  (data (i32.const 64) "{\"kind\":\"exec\",\"command\":\"undeclared\"}")
  (func (export "heal") (result i32)
    ;; The list of names: present (empty when there are none), never longer than asked.
    (if (i32.lt_s (call $fault_get (i32.const 0) (i32.const 6) (i32.const 1024) (i32.const 0)) (i32.const 0))
      (then (unreachable)))
    ;; A forged key: no such field.
    (if (i32.ne (call $fault_get (i32.const 16) (i32.const 12) (i32.const 1024) (i32.const 64)) (i32.const -1))
      (then (unreachable)))
    (drop (call $action (i32.const 64) (i32.const 38)))
    (i32.const 0)))
