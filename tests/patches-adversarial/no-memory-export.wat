;; Calls `action` with no exported memory for the host to read the action from.
;; expect: patch_rejected a memory named `memory`
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory 1) (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 30))) (i32.const 0)))
