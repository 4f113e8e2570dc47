;; Climbs out through a dot segment in the middle.
;; expect: capability_denied allowed/./../
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/./../pwned\",\"content\":\"x\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 63))) (i32.const 0)))
