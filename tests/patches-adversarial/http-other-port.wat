;; The allowed host on another port.
;; expect: capability_denied not under an allowed prefix
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"http\",\"method\":\"POST\",\"url\":\"http://127.0.0.1:10/allowed/x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 69)))
    (i32.const 0)))
