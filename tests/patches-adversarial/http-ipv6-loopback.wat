;; The loopback by its IPv6 name, not the allowed host.
;; expect: capability_denied not under an allowed prefix
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"method\":\"POST\",\"url\":\"http://[::1]:9/allowed/x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 64)))
    (i32.const 0)))
