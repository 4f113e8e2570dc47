;; Restarts a program named with a path.
;; expect: capability_denied is not covered by the policy
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"restart\",\"program\":\"../ok\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 36)))
    (i32.const 0)))
