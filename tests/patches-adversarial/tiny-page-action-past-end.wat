;; A 16-byte memory (1-byte pages) and an action whose bytes run past its end into the rest of
;; the host page: refused, not read.
;; expect: sandbox_error bad_pointer
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 16 (pagesize 1))
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 8) (i32.const 64)))
    (i32.const 0)))
