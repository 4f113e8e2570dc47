;; Restarts a program the policy does not cover.
;; expect: capability_denied not covered
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"restart\",\"program\":\"sshd\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 35)))
    (i32.const 0)))
