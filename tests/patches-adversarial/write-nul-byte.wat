;; A path with a NUL byte in it.
;; expect: capability_denied
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/x\\u0000/../../etc/passwd\",\"content\":\"x\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 77))) (i32.const 0)))
