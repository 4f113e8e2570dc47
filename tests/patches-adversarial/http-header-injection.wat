;; Smuggles a second header through a header value.
;; expect: capability_denied line break
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"url\":\"http://127.0.0.1:9/allowed/x\",\"headers\":{\"X-A\":\"1\\r\\nX-Evil: 1\"}}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 87))) (i32.const 0)))
