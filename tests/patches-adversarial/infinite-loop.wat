;; An endless loop: stopped by the fuel budget.
;; expect: sandbox_error out_of_fuel
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (loop $l (br $l)) (i32.const 0)))
