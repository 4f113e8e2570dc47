;; Asks for a million table elements up front: refused at registration (over the table cap).
;; expect: patch_rejected table_limit
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (table 1000000 funcref)
  (func (export "heal") (result i32) (i32.const 0)))
