;; Writes allowed/pipe, a FIFO (the test creates it): refused, without blocking on it.
;; expect: apply_failed not a regular file
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/pipe\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 57)))
    (i32.const 0)))
