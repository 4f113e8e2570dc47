;; A valid action followed by more bytes.
;; expect: sandbox_error trailing characters
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"} {\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 61)))
    (i32.const 0)))
