;; An action that is a JSON array.
;; expect: sandbox_error expected an action object
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "[\"exec\",\"ok\"]")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 13)))
    (i32.const 0)))
