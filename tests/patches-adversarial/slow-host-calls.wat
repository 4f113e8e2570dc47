;; Tries to make the host do the work (1 MiB log lines, each a cheap wasm call): host calls cost fuel.
;; expect: sandbox_error out_of_fuel
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 16)
  (func (export "heal") (result i32)
    (loop $l (call $log (i32.const 0) (i32.const 1048576)) (br $l))
    (i32.const 0)))
