;; One allowed action, then a denied one: nothing of the plan runs.
;; expect: capability_denied action 1
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (data (i32.const 64) "{\"kind\":\"write_file\",\"path\":\"/tmp/phoenix-adversarial\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 30)))
    (drop (call $action (i32.const 64) (i32.const 69)))
    (i32.const 0)))
