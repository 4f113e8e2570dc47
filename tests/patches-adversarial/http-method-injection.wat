;; A method with a line break in it (to smuggle a header or a second request).
;; expect: capability_denied HTTP method
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"method\":\"GET / HTTP/1.1\\r\\nX: y\",\"url\":\"http://127.0.0.1:9/allowed/x\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 86))) (i32.const 0)))
