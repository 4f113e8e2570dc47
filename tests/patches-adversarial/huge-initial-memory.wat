;; Asks for 4 GiB of memory up front: refused at registration (the declared minimum exceeds the memory cap).
;; expect: patch_rejected memory_limit
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 65536)
  (func (export "heal") (result i32) (i32.const 0)))
