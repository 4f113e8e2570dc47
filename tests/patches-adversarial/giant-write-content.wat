;; A write_file action whose content is just under the action limit, in a loop: still bounded.
;; expect: sandbox_error plan_too_large
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/x\",\"content\":\"")
  (func (export "heal") (result i32)
    (local $i i32)
    ;; Fill 8,000 bytes of 'A' after the prefix, then close the JSON.
    (memory.fill (i32.const 51) (i32.const 65) (i32.const 8000))
    (i32.store8 (i32.const 8051) (i32.const 34))
    (i32.store8 (i32.const 8052) (i32.const 125))
    (loop $l
      (drop (call $action (i32.const 0) (i32.const 8053)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0)))
