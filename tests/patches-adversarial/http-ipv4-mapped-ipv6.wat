;; The allowed address dressed as an IPv4-mapped IPv6 one.
;; expect: capability_denied not under an allowed prefix
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"method\":\"POST\",\"url\":\"http://[::ffff:127.0.0.1]:9/allowed/x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 77)))
    (i32.const 0)))
