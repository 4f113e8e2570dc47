;; Plans a forbidden write from its start function, before heal runs.
;; expect: capability_denied outside/secret
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"outside/secret\",\"content\":\"x\"}")
  (func $start (drop (call $action (i32.const 0) (i32.const 59))))
  (start $start)
  (func (export "heal") (result i32) (i32.const 0)))
